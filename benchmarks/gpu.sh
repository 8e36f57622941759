#!/usr/bin/env bash
# One prepared GPU run (<= 8 minutes on one H200): results land in benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv
timeout 480 python benchmarks/gpu.py --device cuda --out benchmarks/results
python -m udiff bench --device cuda --preset bench --batches 16,64 --out "benchmarks/results/bench-cuda-$(date +%F)" --overwrite
# FSDP through accelerate's own path (a process per GPU); the weights stay out of the results
gpus=$(nvidia-smi -L | wc -l)
python -m udiff train --num-processes "$gpus" --fsdp --device cuda --mixed-precision bf16 \
  --data digits --backbone flux --preset xl --batch-size $((32 * gpus)) --max-steps 200 \
  --autoencoder-steps 200 --out /tmp/fsdp-cuda --overwrite
mkdir -p benchmarks/results/fsdp-cuda && cp /tmp/fsdp-cuda/{run.json,log.jsonl,training.png} benchmarks/results/fsdp-cuda/
python -m pytest -q tests/test_gpu.py
