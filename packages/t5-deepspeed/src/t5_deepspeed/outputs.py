"""--output_dir: usable or not, what this program wrote there, and what --overwrite_output_dir removes.

A run records the name of every top-level entry it writes in OUTPUT_DIR/t5-deepspeed-outputs.json,
before writing it. --overwrite_output_dir removes exactly the recorded entries: never an input file
(the training file in use, a model or config read from the dir) and never a file the record does not
name (another program's, the user's). A kept file that a new run would write over is refused instead.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("t5_deepspeed")

LEDGER = "t5-deepspeed-outputs.json"
FINAL_MODEL_STAGING = "final-model.partial"  # the final save lands here, then moves into place
# Top-level names a training run writes besides its fixed result files: checkpoints and what
# save_model writes (model, config, tokenizer, training arguments), in every form transformers uses.
_TRAINING_WRITES = re.compile(
    r"checkpoint-\d+(\.previous)?|config\.json|generation_config\.json|model(-\d+-of-\d+)?\.safetensors(\.index\.json)?"
    r"|pytorch_model.*\.bin|tokenizer.*\.json|special_tokens_map\.json|added_tokens\.json|spiece\.model"
    r"|chat_template\.jinja|training_args\.bin|global_step\d+|latest|zero_to_fp32\.py|zero_to_torch\.py"
    rf"|{re.escape(FINAL_MODEL_STAGING)}")


class OutputDirError(RuntimeError):
    """--output_dir cannot be used as asked; one line."""


def _short_list(names, limit: int = 6) -> str:
    names = sorted(names)
    more = f", ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


class OutputLedger:
    """The record of what t5-deepspeed wrote in one output dir (only the main process writes it)."""

    def __init__(self, out_dir: Path, writer: bool = True):
        self.out_dir, self.path, self.writer = out_dir, out_dir / LEDGER, writer

    def names(self) -> set[str]:
        try:
            return set(json.loads(self.path.read_text(encoding="utf-8"))["written"])
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, KeyError, TypeError):
            # unreadable: treat every file as foreign, which keeps them all
            log.warning("%s is unreadable: treating every file in %s as not written by t5-deepspeed",
                        self.path, self.out_dir)
            return set()

    def _write(self, names: set[str]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(LEDGER + ".tmp")
        tmp.write_text(json.dumps({"written": sorted(names)}, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)

    def record(self, *names: str) -> None:
        """Call before writing the entries `names` (so a crash mid-write still leaves them recorded)."""
        if self.writer:
            current = self.names()
            if not set(names) <= current:
                self._write(current | set(names))

    def forget(self, names) -> None:
        names = set(names)
        if self.writer and self.names() & names:
            self._write(self.names() - names)


TENSORBOARD_DIR = "tb"  # as core's fit: OUTPUT_DIR/tb (unless TENSORBOARD_LOGGING_DIR says otherwise)


def report_targets(report_to) -> list[str]:
    """The Trainer's report_to as a list of names ("none" -> [])."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    return [n for n in names if n != "none"]


def default_report_to() -> str:
    """TensorBoard when it is installed (else a warning, as core's loop gives): never every integration
    installed, which is what the Trainer's own "all" would mean."""
    from transformers.integrations import is_tensorboard_available

    if is_tensorboard_available():
        return "tensorboard"
    log.warning("tensorboard is not installed, so no TensorBoard events are written "
                "(pip install 'trainstack-core[tensorboard]'); log.jsonl is complete")
    return "none"


def point_tensorboard_at(trainer, directory: Path) -> None:
    """The Trainer's TensorBoard callback writes to ``directory`` instead of OUTPUT_DIR/runs/DATE_HOST,
    unless the user set TENSORBOARD_LOGGING_DIR (transformers 5's way to choose it)."""
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and not os.environ.get("TENSORBOARD_LOGGING_DIR"):
            callback.logging_dir = str(directory)


def result_files(training: dict, extra) -> set[str]:
    """The fixed-name files a run with these arguments writes at the top of its output dir."""
    names = {"all_results.json"}
    if extra.log_jsonl:
        names.add("log.jsonl")
    if "tensorboard" in report_targets(training.get("report_to")):
        names.add(TENSORBOARD_DIR)
    if training.get("do_train"):
        names |= {"train_results.json", "trainer_state.json"}
        if training.get("deepspeed") is not None:
            names.add("ds_config.resolved.json")
    if training.get("do_eval"):
        names.add("eval_results.json")
    if training.get("do_predict"):
        names |= {"predict_results.json", "generated_predictions.txt", "predictions.jsonl"}
    return names


@dataclass
class OutputPlan:
    """What to remove from the output dir before the run writes (computed first, done after validation)."""

    out: Path
    remove: list[Path] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    overwriting: bool = False
    note: str | None = None


def _entry_holding(path: Path, out: Path) -> str | None:
    """The top-level entry of `out` that holds `path` (None when path is outside out)."""
    try:
        rel = path.resolve().relative_to(out.resolve())
    except ValueError:
        return None
    return rel.parts[0] if rel.parts else ""


def plan_output_dir(out: Path, *, overwrite: bool, do_train: bool, resume: bool, inputs: list[Path],
                    this_run_writes: set[str], ledger: OutputLedger) -> OutputPlan:
    """Decide, without touching anything, what happens to a non-empty output dir.

    Fresh training into a non-empty dir is refused unless --overwrite_output_dir (remove what we wrote)
    or a resume (continue writing). Eval/predict-only runs write their result files into any dir.
    """
    from trainstack.config import check_writable_dir

    check_writable_dir(out, "--output_dir")  # a file in the way or a read-only place: one line, nothing written
    plan = OutputPlan(out)
    if not out.is_dir() or not any(out.iterdir()) or not do_train:
        return plan
    ours = ledger.names()
    entries = [e for e in out.iterdir() if e.name != LEDGER]
    foreign = [e.name for e in entries if e.name not in ours]

    def refuse_clashes(kept: list[str]) -> None:
        clash = [n for n in kept if n in this_run_writes or _TRAINING_WRITES.fullmatch(n)]
        if clash:
            raise OutputDirError(
                f"--output_dir {out} holds {_short_list(clash)}, not written by this program (not in {LEDGER}), "
                "and this run writes files of those names; move them away or choose another --output_dir")

    if resume:
        refuse_clashes(foreign)
        if overwrite:
            plan.note = f"--overwrite_output_dir with --resume_from_checkpoint: removing nothing, the run continues in {out}"
        return plan
    if not overwrite:
        raise OutputDirError(
            f"output dir {out} is not empty ({_short_list(e.name for e in entries)}); pass --resume_from_checkpoint "
            "latest to continue its run, --overwrite_output_dir to remove what t5-deepspeed wrote there "
            "(other files are kept), or choose another dir")
    resolved = out.resolve()
    if resolved in (Path("/"), Path.home().resolve()):
        raise OutputDirError(f"--overwrite_output_dir refuses to work on {out} (it is / or your home)")
    protected = {}
    for path in inputs:
        entry = _entry_holding(path, out)
        if entry == "":
            raise OutputDirError(f"--overwrite_output_dir: {path} (an input of this run) is the output dir itself; "
                                 "choose another --output_dir")
        if entry is not None:
            protected[entry] = path
    cwd_entry = _entry_holding(Path.cwd(), out)
    if cwd_entry:  # removing the directory a user works in pulls it from under them
        protected[cwd_entry] = Path.cwd()
    plan.overwriting = True
    plan.remove = [e for e in entries if e.name in ours and e.name not in protected]
    plan.kept = [e.name for e in entries if e not in plan.remove]
    refuse_clashes([n for n in plan.kept if n not in protected])
    for name, path in protected.items():
        if name in this_run_writes or _TRAINING_WRITES.fullmatch(name):
            raise OutputDirError(f"--output_dir {out}: this run would write over {name}, which holds its input "
                                 f"{path}; choose another --output_dir")
    return plan


def apply_plan(plan: OutputPlan, ledger: OutputLedger) -> None:
    """Remove what the plan says (main process only) and say it in one line."""
    if plan.note:
        log.warning(plan.note)
    if not plan.overwriting or not ledger.writer:
        return
    for entry in plan.remove:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    if plan.remove:
        ledger.forget(e.name for e in plan.remove)
    removed = (f"removed {len(plan.remove)} entries t5-deepspeed wrote in {plan.out} "
               f"({_short_list(e.name for e in plan.remove)})" if plan.remove
               else f"removed nothing from {plan.out} (t5-deepspeed wrote none of it)")
    kept = f"; kept {len(plan.kept)} it did not write or reads as input ({_short_list(plan.kept)})" if plan.kept else ""
    log.warning("--overwrite_output_dir: %s%s", removed, kept)


def save_final_model(trainer, out: Path, ledger: OutputLedger) -> None:
    """trainer.save_model into a staging dir, record the names it wrote, then move them into place, so
    the record names every file before it appears in the output dir (a crash leaves nothing unrecorded)."""
    staging = out / FINAL_MODEL_STAGING
    if ledger.writer:
        ledger.record(staging.name)
        if staging.exists():
            shutil.rmtree(staging)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))  # every rank: ZeRO-3 gathers the 16-bit weights
    trainer.accelerator.wait_for_everyone()
    if not ledger.writer:
        return
    written = sorted(p.name for p in staging.iterdir())
    ledger.record(*written)
    for name in written:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(staging / name, target)
    staging.rmdir()
