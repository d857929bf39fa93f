"""LoRA fine-tuning on chat data, with optional preventative steering during training."""

from personaspace.finetuning.train import FinetuneConfig, FinetuneResult, finetune, load_finetuned

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "load_finetuned"]
