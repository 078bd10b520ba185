"""Loading checkpoints that other libraries unpickle, without letting a crafted file run code.

DeepSpeed (``engine.load_checkpoint``) and the HF Trainer call ``torch.load(weights_only=False)`` on
files in a run directory: a pickle planted there with a ``__reduce__`` would run on resume. Two
guards, used together around such a load:

- ``check_pickles_are_plain(directory, patterns)`` reads each file's list of globals without
  unpickling anything and refuses, in one line, a file that names a global outside torch's safe
  set and the allowed classes;
- ``weights_only_loading()`` forces every ``torch.load`` inside it to ``weights_only=True``
  (``TORCH_FORCE_WEIGHTS_ONLY_LOAD``), whatever the caller passes, with DeepSpeed's plain state
  classes allowed.

Sound from torch 2.6 (weights_only loading with an allowlist; CVE-2025-32434 affects older torch).
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from .checkpoint import CheckpointError

# Classes found in DeepSpeed's own checkpoint files: an enum, a dataclass, the loss scalers. They
# hold attributes only; no code runs when they are rebuilt.
_DEEPSPEED_STATE_CLASSES = (("deepspeed.runtime.zero.config", "ZeroStageEnum"),
                            ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
                            ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
                            ("deepspeed.utils.tensor_fragment", "fragment_address"))


def deepspeed_state_classes() -> list:
    """DeepSpeed's plain state classes that are importable here (looked up one by one: their module
    paths move between DeepSpeed versions; none without DeepSpeed)."""
    found = []
    for module, name in _DEEPSPEED_STATE_CLASSES:
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return found


def numpy_array_globals() -> list:
    """What rebuilding a numpy array needs (the HF Trainer's RNG file holds numpy arrays)."""
    import numpy as np

    np_core = getattr(np, "_core", None) or np.core
    return [np_core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


@contextlib.contextmanager
def weights_only_loading(extra_globals: Iterable = ()):
    """Every ``torch.load`` inside is ``weights_only=True``, even one that passes False, with DeepSpeed's
    state classes and ``extra_globals`` allowed. Not thread-safe: it sets an environment variable."""
    import torch

    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals([*deepspeed_state_classes(), *extra_globals]):
            yield
    finally:
        if previous is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous


def check_pickles_are_plain(directory, patterns: Sequence[str] = ("**/*.pt",),
                            extra_globals: Iterable = ()) -> None:
    """Raise ``CheckpointError`` (one line) when a file under ``directory`` matching ``patterns`` (globs)
    names a global outside torch's safe set, DeepSpeed's state classes and ``extra_globals``, or cannot
    be read as a torch file. Nothing is unpickled."""
    import torch

    if torch.__version__ < "2.6":
        raise CheckpointError(f"loading {directory} safely needs torch >= 2.6 (this is {torch.__version__})")
    directory = Path(directory)
    extra_globals = list(extra_globals)
    with weights_only_loading(extra_globals):
        for pattern in patterns:
            for f in sorted(directory.glob(pattern)):
                try:
                    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(f)
                except Exception as err:  # a truncated or non-torch file: name it, in one line
                    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                    raise CheckpointError(f"cannot read {f}: {first}") from None
                if unsafe:
                    raise CheckpointError(
                        f"{f} asks to unpickle {', '.join(unsafe[:3])}, which is outside what a checkpoint holds "
                        "(tensors, numbers, DeepSpeed's ZeRO stage, loss scaler, fragment address); it is not "
                        "loaded, as unpickling it could run code. Resume only checkpoints you trust")
