"""Weights as tensors, whatever the role: LoRA adapters (peft) and FSDP shards."""
