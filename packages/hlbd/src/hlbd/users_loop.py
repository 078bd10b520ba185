"""The users' HLBD quick-learning loop, reproduced for timing in `hlbd bench` (not for training).

Written from the public APT-Transformer repository (tests/test_hlbd_quick_learning.py and
apt_model/modeling/apt_model.py): batch 4 from a DataLoader (4 workers, pinned memory) that
tokenizes each item and pads it to 64, gradient accumulation 8, Adam lr 5e-5 (L2 0.01), clip 1.0,
fp32, `loss.item()` twice per micro-batch and a tqdm update, the autopoietic attention computed per
batch element and head with `.item()` statistics appended to a debug file on every call, and a
gradient hook on every parameter that checks for NaN/Inf (the DBC-DAC hook). What differs: the
vocabulary is sized to the data (theirs reserves 5000 rows; it changes no timing that matters), and
the hook's low-rank "stabilization" branch for gradients with norm > 1 is only checked, not applied
(in the referenced version it raises AttributeError on a missing `res_scale`).
"""

from __future__ import annotations

import os
import tempfile
import time

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from hlbd.model import APTConfig, APTModel
from hlbd.tokenizer import PAD


class _PaddedPairs(Dataset):
    def __init__(self, pairs, tokenizer, max_length=64):
        self.pairs, self.tok, self.max_length = pairs, tokenizer, max_length

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        p = self.pairs[i]
        src = self.tok.encode(p.source)[: self.max_length]
        tgt = self.tok.encode_target(p.target)[: self.max_length]
        src += [PAD] * (self.max_length - len(src))
        tgt += [PAD] * (self.max_length - len(tgt))
        return torch.tensor(src), torch.tensor(tgt)


def _nan_check_hook(grad):
    # Their hook: two host syncs for the NaN/Inf test, then the same test again and a norm test.
    if torch.isnan(grad).any() or torch.isinf(grad).any():
        return torch.zeros_like(grad)
    if torch.isnan(grad).any() or torch.isinf(grad).any():
        return torch.zeros_like(grad)
    if grad.dim() >= 2 and torch.norm(grad) > 1.0:
        return grad
    return grad


class UsersLoop:
    def __init__(self, pairs, tokenizer, device, seed=0, num_workers=4, debug_dir=None, model_sizes=None):
        torch.manual_seed(seed)
        self.device = device
        self._tmp = None
        if debug_dir is None:
            self._tmp = tempfile.TemporaryDirectory()
            debug_dir = self._tmp.name
        self.debug_log = os.path.join(debug_dir, "autopoietic_debug.log")
        # model_sizes (tests only) shrinks d_model/layers on both sides of a comparison
        cfg = APTConfig(vocab_size=len(tokenizer), attention="users-loop", padding_masks=False, **(model_sizes or {}))
        self.model = APTModel(cfg, debug_log=self.debug_log).to(device)
        for p in self.model.parameters():
            if p.requires_grad:
                p.register_hook(_nan_check_hook)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=5e-5, weight_decay=0.01)
        self.criterion = torch.nn.CrossEntropyLoss(ignore_index=PAD)
        self.loader = DataLoader(_PaddedPairs(pairs, tokenizer), batch_size=4, shuffle=True, num_workers=num_workers,
                                 pin_memory=device.type == "cuda", persistent_workers=num_workers > 0)
        self.accumulation = 8
        self._null = open(os.devnull, "w")  # the progress bar is drawn, to nowhere

    def train_epoch(self, max_seconds: float | None = None) -> dict:
        """One epoch of their loop. With ``max_seconds`` it stops after the first micro-batch past the
        budget (their loop syncs on every micro-batch, so stopping costs nothing extra) and reports
        how far it got: ``micro_batches`` of ``micro_per_epoch`` in ``seconds``, and each loss."""
        model, acc = self.model, self.accumulation
        model.train()
        total, steps, losses = 0.0, 0, []
        t0 = time.perf_counter()
        stamps = []
        bar = tqdm(self.loader, desc="Training", leave=False, mininterval=0.1, ascii=True, file=self._null)
        i = -1
        for i, (src, tgt) in enumerate(bar):
            src, tgt = src.to(self.device), tgt.to(self.device)
            out = model(src, tgt[:, :-1])
            loss = self.criterion(out.reshape(-1, out.size(-1)), tgt[:, 1:].reshape(-1)) / acc
            loss.backward()
            if (i + 1) % acc == 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                self.optimizer.step()
                self.optimizer.zero_grad()
            total += loss.item() * acc
            steps += 1
            losses.append(loss.item() * acc)
            bar.set_postfix({"loss": f"{loss.item() * acc:.4f}"})
            stamps.append(time.perf_counter() - t0)
            if max_seconds is not None and stamps[-1] > max_seconds and i + 1 < len(self.loader):
                bar.close()  # stops the loader's iterator; persistent workers stay for the next epoch
                break
        else:
            if (i + 1) % acc != 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                self.optimizer.step()
                self.optimizer.zero_grad()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return {"loss": total / max(steps, 1), "micro_losses": losses, "micro_batches": steps,
                "micro_per_epoch": len(self.loader), "seconds": time.perf_counter() - t0, "stamps": stamps,
                "complete": steps == len(self.loader)}

    def close(self):
        self._null.close()
        if self._tmp is not None:
            self._tmp.cleanup()
