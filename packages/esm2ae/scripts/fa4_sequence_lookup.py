"""FlashAttention-4's varlen calls with ESM-2's sequence counts, and with empty sequences appended, timed on a GPU.

FA4's varlen tile scheduler finds the sequence of each tile by scanning the sequence list, and gets a lookup
table only for more than 256 sequences (flash_attn.cute.interface.BIN_BATCH_SEARCH_THRESH). A packed micro-batch
of ESM-2's short proteins holds ~95 sequences at 32,768 tokens and ~190 at 65,536, where FA4's calls were 8-12%
slower per token (BENCHMARKS.md, 2026-12-03 night, run N). Empty sequences appended to the list (cu_seqlens
repeating its last offset) take a call past 256 without changing a token: this times both, forward and
backward apart, with FA4's own tiles, and checks the outputs are the same.

    PYTHONPATH=packages/core/src:packages/esm2ae/src python3 packages/esm2ae/scripts/fa4_sequence_lookup.py [TOKENS]

TOKENS: packed tokens per micro-batch (default 32768; 65536 for the h200-141g profile). One JSON line per
kernel and sequence list: ms per call (mean over the packed batches), speed-up over the list as packed, the
largest difference from its outputs (forward: out; backward: dq, dk, dv)."""
import json
from dataclasses import replace

import torch
from attention_kernels import HEAD_DIM, HEADS, TOKENS, packed_batches
from fa4_tiles import backward, forward, max_diff, time_calls

APPENDED_TO = 257   # sequences: one past FA4's threshold


def with_empty_sequences(batch, count: int):
    """``batch`` with its sequence list padded to ``count`` sequences by empty ones at the end."""
    cu = batch.cu_seqlens
    short = count + 1 - cu.numel()
    return replace(batch, cu_seqlens=torch.cat((cu, cu[-1:].expand(short)))) if short > 0 else batch


def main():
    torch.manual_seed(0)
    batches = packed_batches()
    padded = {id(b): with_empty_sequences(b, APPENDED_TO) for b in batches}
    q, k, v, dout = (torch.randn((TOKENS, HEADS, HEAD_DIM), device="cuda", dtype=torch.bfloat16) for _ in range(4))
    q = q * HEAD_DIM ** -0.5
    saved = {id(b): forward(b, q, k, v) for b in batches}   # out and lse of each batch, as packed

    def call(kind, batch, appended):
        listed = padded[id(batch)] if appended else batch
        if kind == "forward":
            return forward(listed, q, k, v)[:1]
        out, lse = saved[id(batch)]
        return backward(listed, q, k, v, out, dout, lse)

    for kind in ("forward", "backward"):
        reference = call(kind, batches[0], False)   # the sequence list changes the schedule, not the numbers
        base = None
        for appended in (False, True):
            ms = time_calls(lambda b, kind=kind, appended=appended: call(kind, b, appended), batches)
            base = base or ms
            counts = [(padded[id(b)] if appended else b).cu_seqlens.numel() - 1 for b in batches]
            print(json.dumps({"kind": kind, "sequences": "empty ones appended" if appended else "as packed",
                              "tokens": TOKENS, "sequences_per_batch": counts, "ms": round(ms, 4),
                              "speedup": round(base / ms, 3),
                              "max_abs_diff": max_diff(call(kind, batches[0], appended), reference)}), flush=True)


if __name__ == "__main__":
    main()
