"""Which checkpoint to resume, and only complete ones; loading them without unsafe unpickling.

The Trainer writes `checkpoint-N/` file by file (model, DeepSpeed's `global_stepN/` shards, RNG,
scheduler, trainer state) with no sign of when it is done, so a crash mid-save leaves a directory
that looks like a checkpoint. Our save (trainer.py) writes COMPLETE_MARKER last, after every rank has
written and every file is fsynced: a checkpoint is complete when the marker is there and every file it
lists has the listed size. Only complete checkpoints are resumed.

Resume happens only when asked: `--resume_from_checkpoint PATH`, or `--resume_from_checkpoint latest`
for the newest complete `checkpoint-N` in --output_dir (an incomplete newer one is skipped, and said).

DeepSpeed loads its shards with `torch.load(weights_only=False)`. We force `weights_only=True` for the
whole resume with only DeepSpeed's own plain state classes allowed, and before that scan every pickle the
resume will read, so a crafted file is refused before it is opened (core's trainstack.safe_loading).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from trainstack.checkpoint import CheckpointError
from trainstack.safe_loading import check_pickles_are_plain, numpy_array_globals
from trainstack.safe_loading import weights_only_loading as core_weights_only_loading

log = logging.getLogger("t5_deepspeed")

COMPLETE_MARKER = "t5-deepspeed-complete.json"
LATEST = "latest"  # --resume_from_checkpoint latest
# A complete checkpoint-N about to be saved again (the same step after a resume) is first renamed to
# checkpoint-N.previous and removed once the new one is complete: one copy is complete at every moment.
PREVIOUS_SUFFIX = ".previous"
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)(\.previous)?")
# The files a Trainer/DeepSpeed resume unpickles; training_args.bin is never loaded on resume.
_PICKLES_READ_ON_RESUME = ("global_step*/*.pt", "rng_state*.pth", "scheduler.pt", "optimizer.pt", "scaler.pt")
# Config keys that are bookkeeping, not model size.
_NOT_SIZE_KEYS = {"transformers_version", "_name_or_path", "dtype", "torch_dtype", "use_cache", "architectures"}


def checkpoint_step(path: Path) -> int | None:
    m = _CHECKPOINT_NAME.fullmatch(path.name)
    return int(m.group(1)) if m else None


def checkpoints_in(output_dir: Path) -> list[Path]:
    """`checkpoint-N` (and `checkpoint-N.previous`) directories in output_dir, newest (highest N) first,
    each checkpoint-N before its .previous copy."""
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=lambda p: (checkpoint_step(p), not p.name.endswith(PREVIOUS_SUFFIX)), reverse=True)


def why_incomplete(path: Path) -> str | None:
    """None when `path` is a complete checkpoint, else the reason in a few words."""
    marker = path / COMPLETE_MARKER
    if not marker.is_file():
        return "no completion marker (its save was interrupted, or another program wrote it)"
    try:
        files = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        files = None
    if not isinstance(files, dict):
        return f"unreadable {COMPLETE_MARKER}"
    for rel, size in files.items():
        f = path / rel
        if not f.is_file():
            return f"{rel} is missing"
        if f.stat().st_size != size:
            return f"{rel} has {f.stat().st_size} bytes, the save wrote {size}"
    return None


def latest_complete(output_dir: Path) -> tuple[Path | None, list[str]]:
    """(newest complete checkpoint or None, one note per newer checkpoint skipped as incomplete)."""
    skipped = []
    for ckpt in checkpoints_in(output_dir):
        reason = why_incomplete(ckpt)
        if reason is None:
            return ckpt, skipped
        skipped.append(f"{ckpt.name} is incomplete: {reason}")
    return None, skipped


def parameter_shapes(model) -> dict[str, list[int]]:
    """{name: shape} of the model's parameters (ZeRO-3 partitions keep the full shape in ds_shape)."""
    return {name: list(getattr(p, "ds_shape", p.shape)) for name, p in model.named_parameters()}


def shapes_of_config(model_config) -> dict[str, list[int]]:
    """The parameter shapes a model built from model_config will have, built on the meta device (no memory)."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    with torch.device("meta"):
        model = AutoModelForSeq2SeqLM.from_config(model_config)
    return parameter_shapes(model)


def _size_differences(ckpt: Path, model_config) -> list[str]:
    try:
        saved = json.loads((ckpt / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    now = model_config.to_dict()
    return [f"{k} {saved[k]} there, {now[k]} now" for k in sorted(saved)
            if k in now and k not in _NOT_SIZE_KEYS and isinstance(saved[k], (int, str)) and saved[k] != now[k]]


def check_same_model(ckpt: Path, model_config) -> None:
    """A checkpoint of another model size fails in DeepSpeed's loader with a long traceback after the
    engine is built; check the shapes first and name the field."""
    saved = json.loads((ckpt / COMPLETE_MARKER).read_text(encoding="utf-8")).get("parameters")
    if saved is None:
        return
    now = shapes_of_config(model_config)
    if saved == now:
        return
    differing = next((n for n in now if saved.get(n) != now[n]), None) or next(n for n in saved if n not in now)
    fields = _size_differences(ckpt, model_config)
    what = "; ".join(fields[:3]) + "; " if fields else ""
    raise CheckpointError(
        f"cannot resume from {ckpt}: it holds a different model ({what}parameter {differing} is "
        f"{saved.get(differing, 'absent')} there, {now.get(differing, 'absent')} now); resume with the model "
        "arguments it was trained with, or train this model in a new --output_dir")


def weights_only_loading():
    """core's weights_only_loading with the numpy classes of the Trainer's RNG file allowed: every torch.load
    inside is weights_only=True, whatever the caller passes (DeepSpeed passes False)."""
    return core_weights_only_loading(numpy_array_globals())


def _torch_loads_safely() -> bool:
    import torch

    # weights_only loading with an allowlist is sound from torch 2.6 (CVE-2025-32434); transformers 5
    # refuses to load the RNG and scheduler files on older torch anyway
    return torch.__version__ >= "2.6"


def check_same_run(ckpt: Path, fingerprint: dict | None, ignore_mismatch: bool = False) -> None:
    """The data and lengths the checkpoint's position refers to (saved in its marker) against this run's:
    the first field that differs is a one-line error, or a warning with --ignore_resume_mismatch."""
    saved = json.loads((ckpt / COMPLETE_MARKER).read_text(encoding="utf-8")).get("run")
    if not fingerprint or saved is None:  # a checkpoint from before fingerprints: nothing to compare
        return
    for key, now in fingerprint.items():
        if key in saved and saved[key] != now:
            message = (f"cannot resume from {ckpt}: {key} is {saved[key]!r} there, {now!r} now; resume with the "
                       "run's own data and lengths, or pass --ignore_resume_mismatch to resume anyway")
            if not ignore_mismatch:
                raise CheckpointError(message)
            log.warning("%s (--ignore_resume_mismatch: resuming anyway)", message.split("; resume with")[0])
            return


def resolve_resume(request: str | None, output_dir: Path, model_config, fingerprint: dict | None = None,
                   ignore_mismatch: bool = False) -> Path | None:
    """The complete checkpoint to resume, checked (safe pickles, same model, same data and lengths), or
    None for a fresh start.

    `request` is --resume_from_checkpoint: None, "latest", or a path.
    """
    if request is None:
        return None
    if not _torch_loads_safely():
        import torch

        raise CheckpointError(f"resuming needs torch >= 2.6 to load checkpoints safely (this is {torch.__version__})")
    if request == LATEST:
        ckpt, skipped = latest_complete(output_dir)
        if ckpt is None:
            why = f" ({'; '.join(skipped)})" if skipped else ""
            raise CheckpointError(f"--resume_from_checkpoint latest: no complete checkpoint-N in {output_dir}{why}; "
                                  "drop the flag to start a new run")
        for note in skipped:
            log.warning("%s: resuming from the previous complete one, %s", note, ckpt.name)
        log.info("resuming from %s (--resume_from_checkpoint latest: the newest complete checkpoint in %s)",
                 ckpt, output_dir)
    else:
        ckpt = Path(request).expanduser()
        if not ckpt.is_dir():
            raise CheckpointError(f"--resume_from_checkpoint {request}: no such checkpoint directory")
        reason = why_incomplete(ckpt)
        if reason is not None:
            previous, _ = latest_complete(ckpt.parent)
            hint = f"; the newest complete one there is {previous}" if previous is not None else ""
            raise CheckpointError(f"{ckpt} is not a complete t5-deepspeed checkpoint: {reason}; t5-deepspeed "
                                  f"resumes only checkpoints its own save completed{hint}")
        log.info("resuming from %s (--resume_from_checkpoint)", ckpt)
        newer = [c.name for c in checkpoints_in(ckpt.parent) if checkpoint_step(c) > checkpoint_step(ckpt)
                 and why_incomplete(c) is None] if checkpoint_step(ckpt) is not None else []
        if newer:
            log.warning("%s holds newer checkpoints (%s) of the run before this resume: this run replaces each "
                        "when it saves that step; --resume_from_checkpoint latest picks the highest step",
                        ckpt.parent, ", ".join(newer))
    check_pickles_are_plain(ckpt, _PICKLES_READ_ON_RESUME, numpy_array_globals())
    check_same_model(ckpt, model_config)
    check_same_run(ckpt, fingerprint, ignore_mismatch)
    return ckpt


def write_manifest(ckpt: Path, step: int, shapes: dict, version: str, run: dict | None = None) -> None:
    """Mark `ckpt` complete: fsync every file, then write the marker (temp name, fsync, rename, fsync dir).

    Called on the saving process after every rank has written its shards."""
    files = {}
    for f in sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != COMPLETE_MARKER):
        _fsync(f)
        files[f.relative_to(ckpt).as_posix()] = f.stat().st_size
    for d in sorted({f.parent for f in ckpt.rglob("*")} | {ckpt}):
        _fsync(d)
    manifest = {"format": 1, "step": step, "written_by": f"t5-deepspeed {version}", "files": files,
                "parameters": shapes, "run": run or {}}
    tmp = ckpt / (COMPLETE_MARKER + ".tmp")
    tmp.write_text(json.dumps(manifest), encoding="utf-8")
    _fsync(tmp)
    os.replace(tmp, ckpt / COMPLETE_MARKER)
    _fsync(ckpt)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
