"""DataLoader settings from the machine, and a resumable DataLoader wrapper for ``fit``."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from .parquet_stream import ParquetStream


def loader_settings(hw, low_ram: bool | None = None) -> dict:
    """Workers, pinning and prefetch for ``DataLoader(**settings)``.

    Below 8 GiB of RAM (or ``low_ram=True``) each worker's copy of the dataset and pinned buffers
    cost more than they save: 0 workers, no pinning.
    """
    if low_ram is None:
        low_ram = hw.ram_gib < 8
    if low_ram:
        return {"num_workers": 0, "pin_memory": False, "persistent_workers": False, "prefetch_factor": None}
    gpus = max(1, len(hw.gpus))
    workers = max(0, min(8, hw.cpu_count // gpus - 1))
    return {
        "num_workers": workers,
        "pin_memory": hw.has_gpu,
        "persistent_workers": workers > 0,
        "prefetch_factor": 2 if workers > 0 else None,
    }


class ResumableLoader:
    """A DataLoader that ``fit`` can stop and resume mid-epoch (the ``Batches`` protocol).

    Give it a dataset and either a resumable ``batch_sampler`` (e.g. ``TokenBudgetSampler``) or a
    ``ParquetStream`` dataset with ``batch_size``. It counts batches the loop actually consumed, so
    batches prefetched by workers but not trained on are replayed after a resume. A ParquetStream
    resumes exactly with ``num_workers=0`` only (see ParquetStream).
    """

    def __init__(self, dataset, *, batch_sampler=None, batch_size: int | None = None, **loader_kwargs):
        self.dataset = dataset
        self.batch_sampler = batch_sampler
        self.batch_size = batch_size
        self.loader_kwargs = loader_kwargs
        self.epoch = 0
        self.batches_consumed = 0
        self._skip = 0
        if batch_sampler is None and not isinstance(dataset, ParquetStream):
            raise TypeError("ResumableLoader needs a resumable batch_sampler or a ParquetStream dataset")

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.batches_consumed = 0
            self._skip = 0
        self.epoch = epoch

    def _loader(self) -> DataLoader:
        kw = {k: v for k, v in self.loader_kwargs.items() if not (k == "prefetch_factor" and v is None)}
        # DataLoader draws worker base seeds from this generator; without one it draws from the global
        # torch RNG, and a resumed run (which builds its iterator mid-epoch) would drift in dropout masks
        kw.setdefault("generator", torch.Generator().manual_seed(self.epoch))
        if self.batch_sampler is not None:
            self.batch_sampler.set_epoch(self.epoch)
            self.batch_sampler.load_state_dict({"epoch": self.epoch, "batches_consumed": self._skip})
            return DataLoader(self.dataset, batch_sampler=self.batch_sampler, **kw)
        self.dataset.set_epoch(self.epoch)
        self.dataset.load_state_dict({"epoch": self.epoch, "rows_consumed": self._skip * self.batch_size})
        return DataLoader(self.dataset, batch_size=self.batch_size, **kw)

    def __iter__(self):
        loader = self._loader()
        self.batches_consumed = self._skip
        self._skip = 0
        for batch in loader:
            self.batches_consumed += 1
            yield batch

    def __len__(self) -> int:
        if self.batch_sampler is not None:
            return len(self.batch_sampler)
        return -(-self.dataset.num_rows // (self.batch_size * self.dataset.world_size))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_consumed": self.batches_consumed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.batches_consumed = self._skip = int(state["batches_consumed"])
