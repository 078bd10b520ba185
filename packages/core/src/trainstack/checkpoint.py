"""Checkpoints that never lose the last good state; keep last N and best K of the current run.

Layout under a checkpoint root:

    step-N/               a checkpoint; complete only when its manifest.json lists every file with
                          its size (the manifest is written last and fsynced)
    .tmp-step-N/          a save in progress
    .old-step-N/          the previous copy of step N while a re-save of the same step replaces it
    .trash-*/             a checkpoint being deleted (moved aside first so no half-deleted step-N exists)

A save writes the new copy beside the old one and removes the old one only after the new one is
complete and renamed into place; a crash at any moment leaves a complete copy of the newest
committed state, which ``recover`` (run by the constructor and by every save) puts back under its
final name. Directories without a valid manifest (a save that crashed, or written by trainstack-core
before manifests existed, which cannot be told apart from a half-deleted one) are never "latest" and
are never loaded.

Everything is loaded with ``torch.load(weights_only=True)``: a file that holds anything but tensors and
plain data (dict, list, tuple, str, numbers, None) is refused, so a crafted file in a run directory
cannot run code on resume. ``extra`` is checked when saving, so a value that could not be loaded back
fails at the first save rather than at resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import random
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch

_PREFIX, _TMP, _OLD, _TRASH = "step-", ".tmp-step-", ".old-step-", ".trash-"
MANIFEST = "manifest.json"
_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint or run directory that cannot be used as asked; the message is one line."""


class ResumeMismatch(CheckpointError):
    """The run being resumed differs from the checkpoint's (data, vocabulary, max length, ...)."""


class ModelMismatch(ResumeMismatch):
    """The model's parameters (names or shapes) differ from the checkpoint's."""


def _reached(phase: str) -> None:
    """A named moment of a save; does nothing. Crash tests replace it to kill the process there."""


# ---------------------------------------------------------------------------------------- RNG

def capture_rng_state() -> dict:
    """Python, numpy, torch CPU and CUDA generator states, as tensors and plain data only (loadable
    with ``weights_only=True``)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {"python": [version, list(internal), gauss],
             "numpy": {"bit_generator": np_state["bit_generator"],
                       "state": {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"])},
                       "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Restore what ``capture_rng_state`` returned (also the older form with numpy's tuple)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    if isinstance(np_state, dict):
        np_state = {**np_state, "state": {"key": np.asarray(np_state["state"]["key"], dtype=np.uint32),
                                          "pos": np_state["state"]["pos"]}}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------- fingerprints

def model_fingerprint(model: torch.nn.Module) -> str:
    """Parameter and buffer names with their shapes, hashed: equal iff the checkpoint fits the model."""
    h = hashlib.sha256()
    for name, t in bare_model(model).state_dict().items():
        h.update(f"{name}:{tuple(t.shape)};".encode())
    return h.hexdigest()[:16]


def files_fingerprint(paths) -> str:
    """Names, sizes and modification times of data files (directories are walked), hashed.

    A name that is not a local path (a hub dataset) counts by its name. Copying the data elsewhere
    without keeping mtimes changes the fingerprint: resume then needs the explicit override."""
    h = hashlib.sha256()
    for spec in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        p = Path(spec)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file())
            entries = [(f.relative_to(p).as_posix(), f) for f in files]
        elif p.is_file():
            entries = [(p.name, p)]
        else:
            h.update(f"name:{spec};".encode())
            continue
        for rel, f in entries:
            st = f.stat()
            h.update(f"{rel}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def check_fingerprint(checkpoint, current: dict, *, ignore_mismatch: bool = False, say=print,
                      override_hint: str = "ignore_resume_mismatch=true") -> None:
    """Compare the fingerprint saved in ``checkpoint`` with ``current`` field by field.

    The first differing field raises ``ResumeMismatch`` naming it and both values; with
    ``ignore_mismatch`` each difference is said aloud and accepted. Only fields both sides have are
    compared (a caller may add fields in a later version); a checkpoint saved without a fingerprint is
    not checked. "model" is left to ``load_model_state``, which names the differing key and shapes."""
    saved = _read_state(Path(checkpoint)).get("fingerprint") or {}
    keys = [k for k in current or {} if k in saved and k != "model"]
    for key in keys:
        have, had = current[key], saved[key]
        if have == had:
            continue
        msg = (f"{checkpoint}: cannot resume: {key} is {have!r} now but {had!r} in the checkpoint; "
               f"resume with the run's own settings and data, or pass {override_hint} if you mean it")
        if not ignore_mismatch:
            raise ResumeMismatch(msg)
        say(f"warning: {key} differs from the checkpoint ({had!r} -> {have!r}); resuming anyway as asked")


# ------------------------------------------------------------------------------------ helpers

def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def bare_model(model):
    """The module inside DDP, FSDP, DeepSpeed and torch.compile wrappers (they keep it in ``.module`` and
    ``._orig_mod``). What a checkpoint saves and loads. Unlike ``accelerator.unwrap_model`` it imports
    nothing: accelerate imports DeepSpeed there whenever it is installed, to test for its engine, and a
    run without DeepSpeed paid for that at its first checkpoint (seconds on rank 0 while the other ranks
    waited, and DeepSpeed's accelerator line in the run's output)."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def _jsonable(obj):
    try:
        json.dumps(obj)
        return obj
    except TypeError:
        if isinstance(obj, dict):
            return {k: _jsonable(v) for k, v in obj.items()}
        return repr(obj)


_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.Size, torch.dtype)


def _check_plain(obj, where: str) -> None:
    """Raise TypeError naming the first value ``torch.load(weights_only=True)`` would refuse."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}; checkpoint keys must be str or int")
            _check_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(obj, _PLAIN) or isinstance(obj, np.generic):
        raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__name__}: a checkpoint keeps only "
                        f"tensors, numbers, strings, lists and dicts (it is loaded with weights_only=True); "
                        f"convert it (e.g. .tolist() or int())")


def _safe_load(path: Path, map_location="cpu"):
    """``torch.load(weights_only=True)`` with a one-line error for a refused or damaged file."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: refused: it holds Python objects other than tensors and plain data "
                              f"(loading it could run code); this trainer never writes such a file") from None
    except (RuntimeError, EOFError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path}: cannot be read ({first})") from None


def _read_state(path: Path) -> dict:
    try:
        return json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return {}


def read_manifest(path) -> dict | None:
    """The manifest of a complete checkpoint; None when it is missing, unreadable or any file it lists
    is missing or has another size (a save that crashed, or a half-deleted directory)."""
    path = Path(path)
    try:
        m = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(m, dict) or m.get("format") != _FORMAT or not isinstance(m.get("files"), dict):
        return None
    for name, size in m["files"].items():
        try:
            if (path / name).stat().st_size != size:
                return None
        except OSError:
            return None
    return m


def _step_of(name: str, prefix: str) -> int | None:
    rest = name[len(prefix):]
    return int(rest) if name.startswith(prefix) and rest.isdigit() else None


def checkpoint_dirs(root) -> list[Path]:
    """Every ``step-N`` directory under ``root``, complete or not (sorted by step)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(s, p) for p in root.iterdir() if p.is_dir() and (s := _step_of(p.name, _PREFIX)) is not None]
    return [p for _, p in sorted(found)]


def complete_checkpoints(root) -> list[Path]:
    """Complete checkpoints under ``root``, in the order they were saved (oldest first). Read-only."""
    scored = [(m["seq"], m["step"], p) for p in checkpoint_dirs(root) if (m := read_manifest(p)) is not None]
    return [p for _, _, p in sorted(scored)]


def latest_checkpoint(root) -> Path | None:
    """The most recently saved complete checkpoint under ``root``, or None. Read-only."""
    cps = complete_checkpoints(root)
    return cps[-1] if cps else None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(root: Path):
    """One writer or recoverer at a time per root (several ranks, or a reader's manager beside a
    training run): an advisory lock on the directory itself, so no lock file sits among the
    checkpoints. Where it is unavailable (no fcntl, some network filesystems) there is no lock."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    fd = os.open(root, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # closing releases the lock


class CheckpointManager:
    """Checkpoints as ``<root>/step-N`` directories; see the module docstring for crash safety.

    The model goes to ``model.pt`` (``torch.save`` of the state dict): safetensors refuses tensors
    that share storage, and tied weights (embeddings = LM head) are common. On load, keys the saved
    file lacks are accepted only if they are tied to a loaded parameter; anything else is an error.

    Each manager has a ``run_id`` (new, or the one of the checkpoint it loads, so a resumed run keeps
    its id). Pruning considers only this run's checkpoints, in the order they were saved, so another
    run's checkpoints in the same root are never deleted to make room, nor kept in place of this run's.
    """

    def __init__(self, root, keep_last: int = 2, keep_best: int = 1, metric: str | None = None, mode: str = "min",
                 run_id: str | None = None):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.root = Path(root)
        self.keep_last, self.keep_best = keep_last, keep_best
        self.metric, self.mode = metric, mode
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.root.mkdir(parents=True, exist_ok=True)
        self.recover()

    # ---------------------------------------------------------------------------- recovery
    def recover(self) -> None:
        """Finish or undo what a crashed save or prune left behind.

        Per step: a complete ``step-N`` wins and its temp/old copies go; otherwise a complete temp
        copy (the newer state) is renamed into place, else a complete old copy is put back. Incomplete
        copies are removed; an incomplete ``step-N`` is left alone (it is never loaded, and it may be
        someone's older checkpoint)."""
        with _locked(self.root):
            self._recover()

    clean_temp = recover  # the earlier name

    def _recover(self) -> None:
        for p in self.root.glob(_TRASH + "*"):
            _remove(p)
        steps = set()
        for p in self.root.iterdir():
            for prefix in (_PREFIX, _TMP, _OLD):
                if (s := _step_of(p.name, prefix)) is not None:
                    steps.add(s)
        changed = False
        for s in sorted(steps):
            final, tmp, old = (self.root / f"{prefix}{s}" for prefix in (_PREFIX, _TMP, _OLD))
            if not (tmp.exists() or old.exists()):
                continue
            if read_manifest(final) is None:
                source = tmp if read_manifest(tmp) is not None else old if read_manifest(old) is not None else None
                if source is not None:
                    if final.exists():
                        self._discard(final)
                    os.rename(source, final)
                    changed = True
            for leftover in (tmp, old):
                if leftover.exists():
                    self._discard(leftover)
                    changed = True
        if changed:
            _fsync_path(self.root)

    def _discard(self, path: Path) -> None:
        # Moved aside first: a directory is either whole under its name or gone from it.
        trash = self.root / f"{_TRASH}{path.name.lstrip('.')}-{uuid.uuid4().hex[:6]}"
        os.rename(path, trash)
        _reached("trashed")
        _remove(trash)

    # ----------------------------------------------------------------------------- queries
    def checkpoints(self) -> list[Path]:
        """Complete checkpoints (any run), oldest save first."""
        return complete_checkpoints(self.root)

    def latest(self) -> Path | None:
        return latest_checkpoint(self.root)

    def run_id_of(self, path) -> str | None:
        m = read_manifest(path)
        return None if m is None else m.get("run_id")

    def _metric_of(self, path: Path) -> float | None:
        if self.metric is None:
            return None
        v = (_read_state(path).get("metrics") or {}).get(self.metric)
        return None if v is None else float(v)

    def _ranked_best(self, paths: list[Path]) -> list[Path]:
        scored = [(m, p) for p in paths if (m := self._metric_of(p)) is not None]
        scored.sort(key=lambda mp: mp[0], reverse=self.mode == "max")
        return [p for _, p in scored]

    def best(self) -> Path | None:
        ranked = self._ranked_best(self.checkpoints())
        return ranked[0] if ranked else None

    # -------------------------------------------------------------------------------- save
    def staging_dir(self, step: int) -> Path:
        """Where ``save(step)`` writes before the rename: for the other processes of a ``shared_save_fn``."""
        return self.root / f"{_TMP}{step}"

    def save(self, step: int, *, model, optimizer=None, scheduler=None, scaler=None, extra: dict | None = None,
             metrics: dict | None = None, save_model_fn=None, fingerprint: dict | None = None,
             shared_save_fn=None) -> Path:
        """Write ``step-N`` beside the existing checkpoints; a re-save of the same step keeps the old copy
        until the new one is complete. ``fingerprint`` (plain JSON) is what ``check_fingerprint``
        compares on resume. ``shared_save_fn(dir)`` is called first, with the new empty temporary
        directory, for files every process writes together (DeepSpeed's partitions): the other processes
        call it at the same time with ``staging_dir(step)`` and wait inside it until this one arrives."""
        extra = extra or {}
        _check_plain(extra, "extra")
        with _locked(self.root):
            self._recover()
            final, tmp, old = (self.root / f"{prefix}{step}" for prefix in (_PREFIX, _TMP, _OLD))
            tmp.mkdir()
            if shared_save_fn is not None:
                shared_save_fn(tmp)
            torch.save(bare_model(model).state_dict(), tmp / "model.pt")
            _reached("tmp_files")
            if optimizer is not None:
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            if scheduler is not None:
                torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            if scaler is not None:
                torch.save(scaler.state_dict(), tmp / "scaler.pt")
            torch.save(capture_rng_state(), tmp / "rng.pt")
            torch.save(extra, tmp / "extra.pt")  # exact copy; the JSON below is for people and tools
            if save_model_fn is not None:
                save_model_fn(tmp)
            state = {"step": step, "run_id": self.run_id, "metrics": _jsonable(metrics or {}),
                     "fingerprint": fingerprint or {}, "extra": _jsonable(extra)}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
            files = {}
            for f in sorted(tmp.rglob("*")):
                if f.is_file():
                    _fsync_path(f)
                    files[f.relative_to(tmp).as_posix()] = f.stat().st_size
                elif f.is_dir():  # a subdirectory's entries (DeepSpeed's files) are durable only with it
                    _fsync_path(f)
            manifest = {"format": _FORMAT, "step": step, "run_id": self.run_id, "seq": self._next_seq(),
                        "files": files}
            with open(tmp / MANIFEST, "w") as f:  # last: its presence and sizes mark the copy complete
                json.dump(manifest, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            _fsync_path(tmp)
            _reached("tmp_complete")
            if final.exists():  # a re-save of this step: the old copy stays whole until the new one is in place
                os.rename(final, old)
                _fsync_path(self.root)
                _reached("old_moved")
            os.rename(tmp, final)
            _fsync_path(self.root)
            _reached("renamed")
            if old.exists():
                self._discard(old)
            self._prune(final)
        return final

    def _next_seq(self) -> int:
        seqs = [m["seq"] for p in checkpoint_dirs(self.root) if (m := read_manifest(p)) is not None]
        return max(seqs, default=0) + 1

    def _prune(self, newest: Path) -> None:
        mine = [p for p in self.checkpoints() if self.run_id_of(p) == self.run_id]
        keep = {newest} | (set(mine[-self.keep_last:]) if self.keep_last > 0 else set())
        if self.metric is not None and self.keep_best > 0:
            keep.update(self._ranked_best(mine)[: self.keep_best])
        for p in mine:
            if p not in keep:
                self._discard(p)

    def remove_all(self) -> list[str]:
        """Delete every checkpoint directory this class writes (``step-N``, temp, old, trash) under the
        root, of any run; other files stay. Returns the names removed."""
        removed = []
        with _locked(self.root):
            for p in sorted(self.root.iterdir()):
                ours = (_step_of(p.name, _PREFIX) is not None or _step_of(p.name, _TMP) is not None
                        or _step_of(p.name, _OLD) is not None or p.name.startswith(_TRASH))
                if ours and p.is_dir():
                    shutil.rmtree(p)
                    removed.append(p.name)
        return removed

    # -------------------------------------------------------------------------------- load
    def load(self, path, *, model, optimizer=None, scheduler=None, scaler=None, map_location="cpu") -> dict:
        """Restore into the given objects and the RNGs; returns ``extra``. Continues the checkpoint's run
        (its run id), so later saves prune that run's checkpoints."""
        path = Path(path)
        manifest = read_manifest(path)
        if manifest is None:
            raise CheckpointError(f"{path}: not a complete checkpoint (no valid {MANIFEST}: a save that crashed, "
                                  f"or written by an older trainstack-core); resume from a complete one")
        load_model_state(bare_model(model), _safe_load(path / "model.pt", map_location), where=path / "model.pt")
        for obj, name in ((optimizer, "optimizer.pt"), (scheduler, "scheduler.pt"), (scaler, "scaler.pt")):
            if obj is not None and (path / name).exists():
                try:
                    obj.load_state_dict(_safe_load(path / name, map_location))
                except (ValueError, KeyError) as e:
                    raise ResumeMismatch(f"{path / name}: does not fit this {type(obj).__name__} "
                                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        restore_rng_state(_safe_load(path / "rng.pt"))
        extra = _safe_load(path / "extra.pt")
        self.run_id = manifest.get("run_id") or self.run_id
        return extra


def load_model_state(model: torch.nn.Module, state: dict, where="checkpoint") -> None:
    """``load_state_dict`` that accepts a missing key only when it is tied to a loaded one; any other
    difference raises ``ModelMismatch`` in one line naming the first key (and shapes)."""
    own = model.state_dict()
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise ModelMismatch(f"{where}: has {len(unexpected)} key(s) the model lacks, first {unexpected[0]!r}: "
                            f"build the model the checkpoint was trained with")
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape):
            raise ModelMismatch(f"{where}: {k} has shape {list(v.shape)} in the checkpoint but "
                                f"{list(own[k].shape)} in the model: build the model the checkpoint was trained with")
    loaded_ptrs = {own[k].data_ptr() for k in state}
    untied_missing = [k for k in own if k not in state and own[k].data_ptr() not in loaded_ptrs]
    if untied_missing:
        raise ModelMismatch(f"{where}: lacks {len(untied_missing)} key(s) the model has, first "
                            f"{untied_missing[0]!r}: build the model the checkpoint was trained with")
    model.load_state_dict(state, strict=False)
