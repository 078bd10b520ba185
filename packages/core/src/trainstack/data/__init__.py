"""Data parts: parquet streaming, token-budget batching, device-resident sets, loader settings."""

from .batching import TokenBudgetSampler, token_budget_batches
from .device_dataset import DeviceDataset
from .loader import ResumableLoader, loader_settings
from .parquet_stream import ParquetStream, collate_rows

__all__ = ["ParquetStream", "collate_rows", "token_budget_batches", "TokenBudgetSampler", "DeviceDataset",
           "loader_settings", "ResumableLoader"]
