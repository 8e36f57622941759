#!/usr/bin/env bash
# One prepared GPU run (<= 8 minutes on one H200): results land in benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv
timeout 480 python benchmarks/gpu.py --device cuda --out benchmarks/results
python -m udiff bench --device cuda --preset bench --batches 16,64 --out "benchmarks/results/bench-cuda-$(date +%F)" --overwrite
