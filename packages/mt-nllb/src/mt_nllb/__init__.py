"""mt-nllb: NLLB-200 fine-tuning (zh -> en by default) on trainstack-core, sized for a 16 GB GPU."""

__version__ = "0.1.0"
