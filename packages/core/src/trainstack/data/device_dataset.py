"""A tiny dataset held as padded tensors on one device; batches drawn without host syncs."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


class DeviceDataset:
    """``sequences`` maps a field to a list of token lists; each field is padded to its longest."""

    def __init__(self, sequences: dict[str, list[list[int]]], pad_id: int = 0, device="cpu"):
        if not sequences:
            raise ValueError("sequences is empty")
        sizes = {k: len(v) for k, v in sequences.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"fields differ in length: {sizes}")
        self.device = torch.device(device)
        self.n = next(iter(sizes.values()))
        self.tensors: dict[str, Tensor] = {}
        for k, seqs in sequences.items():
            width = max((len(s) for s in seqs), default=0)
            t = torch.full((self.n, width), pad_id, dtype=torch.long)
            for i, s in enumerate(seqs):
                t[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
            self.tensors[k] = t.to(self.device)
            self.tensors[k + "_mask"] = (torch.arange(width)[None, :] <
                                         torch.tensor([len(s) for s in seqs])[:, None]).to(self.device)

    def __len__(self) -> int:
        return self.n

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[dict[str, Tensor]]:
        # randperm on the device and slicing with Python ints: nothing waits for the GPU
        perm = torch.randperm(self.n, generator=generator, device=self.device)
        for start in range(0, self.n, batch_size):
            idx = perm[start:start + batch_size]
            yield {k: t.index_select(0, idx) for k, t in self.tensors.items()}
