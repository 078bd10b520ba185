"""Optional dependencies, imported when first used, with the extra that installs them.

Core's install stays lean: BLEU/chrF (sacrebleu) and report plots (matplotlib) are extras that the
packages using them ask for (`trainstack-core[metrics]`, `trainstack-core[report]`).
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message is one line naming the pip command."""


def require(module: str, extra: str, needed_for: str) -> ModuleType:
    """Import ``module``, or raise MissingExtra saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name not in (module, module.split(".")[0]):
            raise  # the module is there but one of its own imports is broken: show that error
        top = module.split(".")[0]
        raise MissingExtra(f"{needed_for} needs {top}, which is not installed: "
                           f"pip install 'trainstack-core[{extra}]'") from None
