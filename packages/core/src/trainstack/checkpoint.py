"""Atomic checkpoints with everything needed to resume exactly; keep last N and best K."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

_PREFIX, _TMP = "step-", ".tmp-step-"


def capture_rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unwrap(model):
    # accelerate/DDP wrappers keep the real module in .module; compiled models in ._orig_mod
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


class CheckpointManager:
    """Checkpoints as ``<root>/step-N`` directories.

    The model goes to ``model.pt`` (``torch.save`` of the state dict): safetensors refuses tensors
    that share storage, and tied weights (embeddings = LM head) are common. On load, keys the saved
    file lacks are accepted only if they are tied to a loaded parameter; anything else is an error.
    """

    def __init__(self, root, keep_last: int = 2, keep_best: int = 1, metric: str | None = None, mode: str = "min"):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.root = Path(root)
        self.keep_last, self.keep_best = keep_last, keep_best
        self.metric, self.mode = metric, mode
        self.root.mkdir(parents=True, exist_ok=True)
        self.clean_temp()

    def clean_temp(self) -> None:
        """Remove temp directories left by a save that crashed."""
        for p in self.root.glob(_TMP + "*"):
            shutil.rmtree(p, ignore_errors=True)

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (a directory only gets its final name when complete)."""
        found = []
        for p in self.root.glob(_PREFIX + "*"):
            if p.is_dir() and p.name[len(_PREFIX):].isdigit() and (p / "trainer_state.json").exists():
                found.append((int(p.name[len(_PREFIX):]), p))
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        cps = self.checkpoints()
        return cps[-1] if cps else None

    def _metric_of(self, path: Path) -> float | None:
        if self.metric is None:
            return None
        state = json.loads((path / "trainer_state.json").read_text())
        v = (state.get("metrics") or {}).get(self.metric)
        return None if v is None else float(v)

    def _ranked_best(self) -> list[Path]:
        scored = [(m, p) for p in self.checkpoints() if (m := self._metric_of(p)) is not None]
        scored.sort(key=lambda mp: mp[0], reverse=self.mode == "max")
        return [p for _, p in scored]

    def best(self) -> Path | None:
        ranked = self._ranked_best()
        return ranked[0] if ranked else None

    def save(self, step: int, *, model, optimizer=None, scheduler=None, scaler=None, extra: dict | None = None,
             metrics: dict | None = None, save_model_fn=None) -> Path:
        final = self.root / f"{_PREFIX}{step}"
        tmp = self.root / f"{_TMP}{step}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(_unwrap(model).state_dict(), tmp / "model.pt")
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if scaler is not None:
            torch.save(scaler.state_dict(), tmp / "scaler.pt")
        torch.save(capture_rng_state(), tmp / "rng.pt")
        torch.save(extra or {}, tmp / "extra.pt")  # exact copy; the JSON below is for people and tools
        if save_model_fn is not None:
            save_model_fn(tmp)
        state = {"step": step, "metrics": _jsonable(metrics or {}), "extra": _jsonable(extra or {})}
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync_path(f)
        _fsync_path(tmp)
        if final.exists():  # re-saving a step (e.g. after resume): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_path(self.root)
        self._prune()
        return final

    def _prune(self) -> None:
        cps = self.checkpoints()
        keep = set(cps[-self.keep_last:]) if self.keep_last > 0 else set()
        if self.metric is not None and self.keep_best > 0:
            keep.update(self._ranked_best()[: self.keep_best])
        for p in cps:
            if p not in keep:
                shutil.rmtree(p, ignore_errors=True)

    def load(self, path, *, model, optimizer=None, scheduler=None, scaler=None, map_location="cpu") -> dict:
        """Restore into the given objects and the RNGs; returns ``extra``."""
        path = Path(path)
        if not (path / "trainer_state.json").exists():
            raise FileNotFoundError(f"{path}: not a complete checkpoint (no trainer_state.json)")
        load_model_state(_unwrap(model), torch.load(path / "model.pt", map_location=map_location,
                                                    weights_only=True))
        for obj, name in ((optimizer, "optimizer.pt"), (scheduler, "scheduler.pt"), (scaler, "scaler.pt")):
            if obj is not None and (path / name).exists():
                obj.load_state_dict(torch.load(path / name, map_location=map_location, weights_only=False))
        restore_rng_state(torch.load(path / "rng.pt", weights_only=False))
        return torch.load(path / "extra.pt", weights_only=False)


def load_model_state(model: torch.nn.Module, state: dict) -> None:
    """``load_state_dict`` that accepts a missing key only when it is tied to a loaded one."""
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise KeyError(f"checkpoint has keys the model lacks: {unexpected[:5]}")
    loaded_ptrs = {own[k].data_ptr() for k in state}
    untied_missing = [k for k in own if k not in state and own[k].data_ptr() not in loaded_ptrs]
    if untied_missing:
        raise KeyError(f"checkpoint lacks keys: {untied_missing[:5]}")
    model.load_state_dict(state, strict=False)
