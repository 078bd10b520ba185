"""Seq2SeqTrainer with checkpoints that are complete or ignored, and a save on SIGINT/SIGTERM.

The Trainer's own save writes `checkpoint-N/` file by file and prunes old checkpoints (save_total_limit)
before the new one is known to be whole. Here: leftovers of an interrupted save of the same step are
removed first, the Trainer writes, every rank finishes, the marker goes in last (checkpoints.py), and
only then are older checkpoints pruned.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from transformers import Seq2SeqTrainer, TrainerCallback

from . import __version__
from .checkpoints import (
    PREVIOUS_SUFFIX,
    checkpoint_step,
    checkpoints_in,
    parameter_shapes,
    why_incomplete,
    write_manifest,
)

log = logging.getLogger("t5_deepspeed")


class CompleteCheckpointsTrainer(Seq2SeqTrainer):
    """`output_ledger` (outputs.OutputLedger), when set, records each checkpoint before it is written."""

    output_ledger = None
    run_fingerprint: dict | None = None
    """The data and lengths this run trains on, saved in each checkpoint's marker (checked on resume)."""

    def _save_checkpoint(self, model, trial):
        run_dir = Path(self._get_output_dir(trial=trial))
        ckpt = run_dir / f"checkpoint-{self.state.global_step}"
        previous = ckpt.with_name(ckpt.name + PREVIOUS_SUFFIX)
        if self.args.should_save:
            if self.output_ledger is not None:
                self.output_ledger.record(ckpt.name, previous.name)
            if why_incomplete(ckpt) is None:
                # the same step saved again (after a resume): keep the complete copy aside until the
                # new one is complete
                if previous.exists():
                    shutil.rmtree(previous)
                os.replace(ckpt, previous)
            elif ckpt.exists():  # an interrupted save of this step: never complete, so start it over
                shutil.rmtree(ckpt)
        self.accelerator.wait_for_everyone()
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # pruned below, once the new checkpoint is complete
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # every rank's DeepSpeed shards are on disk
        if self.args.should_save:
            write_manifest(ckpt, self.state.global_step, parameter_shapes(self.model), __version__,
                           run=self.run_fingerprint)
            if previous.exists():
                shutil.rmtree(previous)
            if self.output_ledger is not None:
                self.output_ledger.forget([previous.name])
            self._prune(run_dir, ckpt)

    def _prune(self, run_dir: Path, newest: Path) -> None:
        """Drop crash leftovers (incomplete checkpoints older than the new one, .previous copies whose
        checkpoint is complete), then complete ones beyond save_total_limit, keeping the best one."""
        keep = self.args.save_total_limit
        best = self.state.best_model_checkpoint
        complete, removed = [], []
        for ckpt in checkpoints_in(run_dir):
            if ckpt.name.endswith(PREVIOUS_SUFFIX) and why_incomplete(ckpt.with_name(ckpt.name[:-len(PREVIOUS_SUFFIX)])) is None:
                removed.append(ckpt)
            elif why_incomplete(ckpt) is None:
                complete.append(ckpt)
            elif checkpoint_step(ckpt) < checkpoint_step(newest):
                removed.append(ckpt)
        if keep:
            removed += [c for c in complete[keep:] if best is None or Path(best).resolve() != c.resolve()]
        for ckpt in removed:
            shutil.rmtree(ckpt, ignore_errors=True)
        if removed and self.output_ledger is not None:
            self.output_ledger.forget(c.name for c in removed)


def agreed_signal(signum: int | None, device) -> int:
    """The signal any rank received (0 for none): ranks must take the same branch, since saving and
    evaluating are collective under DeepSpeed."""
    import torch.distributed as dist

    signum = signum or 0
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        import torch

        flag = torch.tensor([signum], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        signum = int(flag.item())
    return signum


class SaveOnSignalCallback(TrainerCallback):
    """SIGINT/SIGTERM (caught by core's StopFlag) end training after the current optimizer step, with a
    checkpoint. Checked at every step end, on every rank."""

    def __init__(self, stop_flag):
        self.stop_flag = stop_flag
        self.stopped_by: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        signum = agreed_signal(self.stop_flag.signum, args.device)
        if signum:
            self.stopped_by = signum
            control.should_save = True
            control.should_training_stop = True
        return control
