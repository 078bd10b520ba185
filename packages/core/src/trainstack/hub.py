"""Models and datasets named on the Hugging Face hub: when one cannot be had, one line that names it
and says what to do, instead of a traceback from deep inside transformers or datasets.

    from trainstack.hub import loading

    with loading(name, what="model", key="model.name_or_path"):
        model = AutoModelForSeq2SeqLM.from_pretrained(name)
    with loading("wmt19", what="dataset", key="data.train", install="mt-nllb[hub]"):
        from datasets import load_dataset      # inside: a missing `datasets` is reported too
        ds = load_dataset("wmt/wmt19", "zh-en", split="train")

``HubUnavailable`` is a ``ConfigError``: the task CLIs exit 2 with its message. Hub names stay valid
inputs online; a local directory or file works offline.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from trainstack.config import ConfigError

_TRUE = ("1", "true", "yes", "on")


class HubUnavailable(ConfigError):
    """A hub model or dataset that could not be loaded (offline, not cached, no such name, or the
    package that reads it is missing)."""


def hub_offline() -> bool:
    """True when the environment forbids network access to the hub."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"))


def _is_hub_error(err: BaseException) -> bool:
    # transformers and datasets report a missing connection or cache entry as OSError subclasses
    # (ConnectionError, LocalEntryNotFoundError, "We couldn't connect..."); huggingface_hub and
    # datasets also raise their own ValueError/HTTP types (HFValidationError, DatasetNotFoundError).
    if isinstance(err, (OSError, ConnectionError)):
        return True
    module = type(err).__module__ or ""
    return module.split(".")[0] in ("huggingface_hub", "datasets", "requests", "httpx")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def describe(name: str, what: str, key: str | None, err: BaseException, instead: str | None = None) -> str:
    """The one line for ``err`` raised while loading the hub ``what`` (model, tokenizer, dataset) ``name``."""
    local_hint = instead or (f"pass a local {'file' if what == 'dataset' else 'directory'}"
                             + (f" ({key}=PATH)" if key else ""))
    if Path(str(name)).expanduser().exists():
        return f"{what} {name}: cannot load it from this local path ({_first_line(err)})"
    repo_type = " --repo-type dataset" if what == "dataset" else ""
    if hub_offline():
        return (f"{what} '{name}' is not in the local Hugging Face cache and the hub is offline (HF_HUB_OFFLINE=1): "
                f"{local_hint}, or fill the cache once with network access (hf download {name}{repo_type})")
    return (f"{what} '{name}': the Hugging Face hub did not provide it ({_first_line(err)}); check the name and "
            f"the network, or {local_hint}")


@contextmanager
def loading(name: str, *, what: str = "model", key: str | None = None, install: str | None = None,
            instead: str | None = None):
    """Turn the failure of a hub load inside the block into a one-line ``HubUnavailable``.

    ``what``: model, tokenizer, config or dataset (for the message); ``key``: the config key or flag
    that named it; ``install``: the pip requirement that brings the package reading it (``mt-nllb[hub]``);
    ``instead``: the local alternative, when it is not ``key=PATH`` ("pass --train_file FILE.jsonl")."""
    try:
        yield
    except ImportError as err:
        missing = err.name or _first_line(err)
        how = f"pip install '{install}'" if install else f"pip install {missing}"
        alternative = f", or {instead}" if instead else f", or pass local files instead ({key}=...)" if key else ""
        raise HubUnavailable(f"{what} '{name}' is read from the Hugging Face hub through the {missing} package, "
                             f"which is not installed: {how}{alternative}") from None
    except HubUnavailable:
        raise
    except Exception as err:
        if not _is_hub_error(err):
            raise
        raise HubUnavailable(describe(name, what, key, err, instead)) from None
