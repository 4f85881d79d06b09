"""ttlora-moe: tensor-train LoRA experts and a task router on one frozen language model."""

__version__ = "0.1.0"
