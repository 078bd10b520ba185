"""Packed attention kernels alone, on a GPU: numerics against torch's flash varlen kernel (what esm2ae
runs) and time per layer call (forward + backward), at the bench's length distribution and ESM-2 650M's
heads. A candidate kernel is tried here before it goes near the model: "cudnn" (cuDNN's fused attention
over the packed rows through ``torch.ops.aten._cudnn_attention_forward`` with sequence offsets, as
PyTorch's nested-tensor SDPA calls it) failed here on torch 2.11 (BENCHMARKS.md); "fa4" (FlashAttention-4's
varlen kernels, model.attention=fa4, needs flash-attn-4 installed) compiles its kernels at the first call.

    PYTHONPATH=packages/core/src:packages/esm2ae/src python3 packages/esm2ae/scripts/attention_kernels.py [TOKENS] [BACKENDS]

TOKENS: packed tokens per micro-batch (default 32768); BACKENDS: comma-separated (default varlen,cudnn;
any of esm2ae's model.attention values that take sequence boundaries: flash, fa4, varlen).
Each batch packs other proteins (other sequence counts and longest lengths), as training does, so a
backend that builds a plan per shape pays for it in "first_call_ms". One JSON line per backend."""
import json
import sys

import torch
from esm2ae.bench import lognormal_lengths
from esm2ae.model import attend, pack_sequences, prepare_attention

TOKENS = int(sys.argv[1]) if len(sys.argv) > 1 else 32768
BACKENDS = sys.argv[2].split(",") if len(sys.argv) > 2 else ["varlen", "cudnn"]
HEADS, HEAD_DIM, BATCHES, REPEATS = 20, 64, 8, 3


def cudnn_attention(batch, q, k, v):
    """Candidate: cuDNN over the packed rows. Sequence count and longest length rounded up (empty
    sequences at the end) so cuDNN builds a few execution plans, not one per batch."""
    cu = batch.cu_seqlens
    pad = -(cu.numel() - 1) % 64
    cu = torch.cat((cu, cu[-1:].expand(pad))) if pad else cu
    longest = -(-batch.max_seqlen // 128) * 128
    return torch.ops.aten._cudnn_attention_forward(q, k, v, None, cu, cu, longest, longest, True, 0.0, False, False,
                                                   scale=1.0)[0]


def attention(backend, batch, q, k, v):
    if backend == "cudnn":
        return cudnn_attention(batch, q, k, v)
    return attend(backend, prepare_attention(backend, batch), q, k, v)


def packed_batches():
    lengths = lognormal_lengths(BATCHES * TOKENS // 300, seed=7)
    batches, row = [], []
    for n in lengths:
        if sum(row) + n > TOKENS:
            batches.append(pack_sequences([[0] * k for k in row], total_len=TOKENS).to("cuda"))
            row = []
            if len(batches) == BATCHES:
                break
        row.append(n)
    return batches


def run(backend, batch, q, k, v, grad_out):
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    out = attention(backend, batch, q, k, v)
    out.backward(grad_out)
    return out.detach(), q.grad, k.grad, v.grad


def main():
    torch.manual_seed(0)
    batches = packed_batches()
    shape = (TOKENS, HEADS, HEAD_DIM)
    q, k, v, grad_out = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    q = q * HEAD_DIM ** -0.5   # pre-scaled, as the layer passes it
    reference = [run("varlen", b, q, k, v, grad_out) for b in batches[:2]]
    for backend in BACKENDS:
        record = {"backend": backend, "tokens": TOKENS, "heads": HEADS, "head_dim": HEAD_DIM,
                  "seqs_per_batch": [b.num_seqs for b in batches]}
        try:
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            got = [run(backend, b, q, k, v, grad_out) for b in batches[:2]]
            end.record()
            torch.cuda.synchronize()
            record["first_call_ms"] = start.elapsed_time(end) / 2
            record["max_abs_diff_vs_varlen"] = {
                name: max((g[i].float() - r[i].float()).abs().max().item() for g, r in zip(got, reference, strict=True))
                for i, name in enumerate(("out", "dq", "dk", "dv"))}
            for b in batches:   # every shape seen once before timing
                run(backend, b, q, k, v, grad_out)
            torch.cuda.synchronize()
            start.record()
            for _ in range(REPEATS):
                for b in batches:
                    run(backend, b, q, k, v, grad_out)
            end.record()
            torch.cuda.synchronize()
            record["fwd_bwd_ms"] = start.elapsed_time(end) / (REPEATS * len(batches))
        except Exception as e:  # a kernel that cannot run here is a result too
            record["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
