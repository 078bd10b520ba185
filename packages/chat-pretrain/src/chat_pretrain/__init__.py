"""chat-pretrain: T5 text-to-text pretraining on prompt/response parquet files in bounded host RAM."""

__version__ = "0.1.0"
