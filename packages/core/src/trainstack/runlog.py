"""A run's metric log: log.jsonl always, TensorBoard and Weights & Biases where ``report_to`` asks.

Every training loop (core's ``fit``, and a package's own loop such as hlbd's) writes its records
through ``RunLog``, so that the JSONL file, the TensorBoard events and the W&B run hold the same
numbers under the same names: step, epoch, loss, lr, grad_norm, tokens_per_s, samples_per_s, mfu,
rss_gib and the gpu_*_gib memory fields for training records; ``eval_*`` for evaluations.

TensorBoard is on by default and only warned about when missing (the JSONL log is complete without
it); W&B is opt-in, so asking for it without wandb installed fails before anything is written.
W&B takes its project, entity and mode from its own environment variables (WANDB_PROJECT,
WANDB_MODE=offline, ...); the run is named after the run directory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import ModuleType

from trainstack.extras import require

log = logging.getLogger(__name__)

REPORT_TO_CHOICES = ("tensorboard", "wandb", "none")
WANDB_EXTRA = "wandb"


def check_report_to(report_to, key: str = "report_to") -> list[str]:
    """``report_to`` as a list of known names ("none" alone means only log.jsonl); raises ValueError
    naming ``key`` and the allowed values."""
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    unknown = [n for n in names if n not in REPORT_TO_CHOICES]
    if unknown:
        raise ValueError(f"{key}: unknown {', '.join(map(repr, unknown))}; allowed: {', '.join(REPORT_TO_CHOICES)}")
    if "none" in names and len(names) > 1:
        raise ValueError(f"{key}: 'none' cannot be combined with {', '.join(n for n in names if n != 'none')}")
    return [n for n in names if n != "none"]


def import_wandb() -> ModuleType:
    """wandb, or MissingExtra with the one-line install hint (imported only when a run asks for it)."""
    return require("wandb", WANDB_EXTRA, "report_to=wandb")


def tensorboard_writer(run_dir):
    """A SummaryWriter on run_dir/tb, or None (with one warning) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed, so no TensorBoard events are written "
                    "(pip install 'trainstack-core[tensorboard]'); the JSONL log is complete")
        return None
    return SummaryWriter(str(Path(run_dir) / "tb"))


def _numbers(record: dict) -> dict:
    return {k: v for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class RunLog:
    """Appends records to run_dir/log.jsonl and mirrors their numbers to the ``report_to`` targets.

    ``run_config`` (plain JSON) is handed to W&B as the run's config. Use as a context manager, or
    call ``close``. Open it on the main process only."""

    def __init__(self, run_dir, report_to=("tensorboard",), *, run_config: dict | None = None):
        targets = check_report_to(report_to)
        self.run_dir = Path(run_dir)
        wandb = import_wandb() if "wandb" in targets else None  # a missing wandb fails before any write
        self.path = self.run_dir / "log.jsonl"
        self._file = self.path.open("a", encoding="utf-8")
        self._tb = tensorboard_writer(self.run_dir) if "tensorboard" in targets else None
        self._wandb = None
        if wandb is not None:
            self._wandb = wandb.init(name=self.run_dir.name, dir=str(self.run_dir), config=run_config or {})

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        numbers = _numbers(record)
        step = record.get("step")
        if self._tb is not None:
            for k, v in numbers.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None and numbers:
            self._wandb.log(numbers, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
