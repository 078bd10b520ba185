"""Length buckets: a few fixed padded lengths, so a compiled or captured step sees a few shapes.

    buckets = LengthBuckets.parse("pow2", max_len=256)    # 16, 32, 64, 128, 256
    buckets = LengthBuckets.parse("multiple:64", 200)     # 64, 128, 192, 200
    buckets = LengthBuckets.parse("48,96,128", 128)       # as written (max_len appended if missing)
    width = buckets.bucket(37)                            # 64 with pow2
    ids = buckets.pad(ids, pad_id=0)                      # [B, L] -> [B, bucket(L)]

Every new shape costs a compilation (tens of seconds for a large model) and a CUDA graph (its own
memory), so the set stays small; padding to the next bucket costs at most 2x the tokens with pow2
and less than one multiple with ``multiple:N``.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_MIN_POW2 = 16  # below this a bucket saves no measurable time and adds a shape


@dataclass(frozen=True)
class LengthBuckets:
    sizes: tuple[int, ...]
    """Padded lengths, ascending; the last is the longest length a batch may have."""

    def __post_init__(self):
        if not self.sizes or any(s < 1 for s in self.sizes) or list(self.sizes) != sorted(set(self.sizes)):
            raise ValueError(f"length buckets must be distinct positive lengths in ascending order, got {self.sizes}")

    @classmethod
    def parse(cls, spec: str, max_len: int) -> LengthBuckets | None:
        """``"pow2"``, ``"multiple:N"``, ``"a,b,c"``, or ``"off"`` (None: keep each batch's own length)."""
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        text = str(spec).strip().lower()
        if text in ("off", "none", ""):
            return None
        if text == "pow2":
            sizes, s = [], _MIN_POW2
            while s < max_len:
                sizes.append(s)
                s *= 2
            return cls(tuple(sorted({*sizes, max_len})))
        if text.startswith("multiple:"):
            step = _positive_int(text.split(":", 1)[1], spec)
            return cls(tuple(sorted({*range(step, max_len, step), max_len})))
        sizes = {_positive_int(part, spec) for part in text.split(",") if part.strip()}
        too_long = [s for s in sizes if s > max_len]
        if too_long:
            raise ValueError(f"length buckets {sorted(too_long)} exceed the maximum length {max_len}")
        return cls(tuple(sorted({*sizes, max_len})))

    def bucket(self, length: int) -> int:
        """The smallest bucket >= length."""
        i = bisect.bisect_left(self.sizes, length)
        if i == len(self.sizes):
            raise ValueError(f"length {length} exceeds the longest bucket {self.sizes[-1]}")
        return self.sizes[i]

    def pad(self, ids: torch.Tensor, pad_id: int, dim: int = -1) -> torch.Tensor:
        """Right-pad ``ids`` along ``dim`` to its bucket with ``pad_id``."""
        length = ids.shape[dim]
        extra = self.bucket(length) - length
        if extra == 0:
            return ids
        dim = dim % ids.dim()
        widths = [0, 0] * (ids.dim() - 1 - dim) + [0, extra]
        return F.pad(ids, widths, value=pad_id)

    def describe(self) -> str:
        return ",".join(map(str, self.sizes))


def _positive_int(text: str, spec) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"length buckets {spec!r}: {text.strip()!r} is not a positive integer "
                         "(use pow2, multiple:N, a comma list of lengths, or off)")
    return value
