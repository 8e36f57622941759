"""The names of everything in a run directory, in one place.

    RUN/config.toml                  the resolved run config (written first)
    RUN/run.json                     written last: its presence marks a complete run
    RUN/log.jsonl, training.png      training log and its curves
    RUN/latents.safetensors          stage 2's latent cache (latents, labels)
    RUN/pairs.safetensors            a distilled student's teacher samples (x0, labels, noise)
    RUN/<role>/config.json           component, plugin, version, validated config
    RUN/<role>/model.safetensors     its weights (a LoRA denoiser: adapter.safetensors)
    RUN/checkpoints/<i>-<stage>-<step>/  resumable checkpoints (COMPLETE written last)
    RUN/best.safetensors             --early-stop: the best validated weights so far
    RUN/validation/step-N.png, RUN/tensorboard/, RUN/.lock
"""

CONFIG = "config.toml"
RUN_FILE = "run.json"
LOG = "log.jsonl"
CURVES = "training.png"
LATENTS = "latents.safetensors"
PAIRS = "pairs.safetensors"  # kept for --resume, removed by --overwrite
COMPONENT_CONFIG = "config.json"
WEIGHTS = "model.safetensors"
ADAPTER = "adapter.safetensors"
CHECKPOINTS = "checkpoints"
MARKER = "COMPLETE"
CHECKPOINT_STATE = "state.json"  # stage, step, LR schedule (beside the tensors of each file)
LOCK = ".lock"
VALIDATION = "validation"
BEST = "best.safetensors"
TENSORBOARD = "tensorboard"
