"""T5 translation fine-tuning with DeepSpeed ZeRO-2/3 on transformers 5 (run_translation-compatible)."""

__version__ = "0.1.0"
