"""FlashAttention-4's Hopper (SM90) tile configurations for ESM-2's packed attention, timed on a GPU: the
forward and the backward kernels apart, each feasible tile against FA4's own choice, on the bench's length
distribution (proteins of ~350 tokens packed into 32,768-token rows) and ESM-2 650M's heads (20 of 64).
FA4's tiles were chosen on long sequences; ESM-2's are short, so a few tiles per sequence, and the
per-tile set-up weighs more. Which configurations are feasible comes from FA4's own search
(flash_attn.cute.sm90_config_search); a configuration FA4 refuses or cannot compile is reported, not fatal,
but one whose kernel aborts the process ends the sweep (flash-attn-4 4.0.0b40's backward at 112x128 did; the
lines before it stand). On an H200 none beat FA4's own choice (BENCHMARKS.md, 2026-12-03 night).

    PYTHONPATH=packages/core/src:packages/esm2ae/src python3 packages/esm2ae/scripts/fa4_tiles.py [TOKENS] [BUDGET_S]

TOKENS: packed tokens per micro-batch (default 32768, as attention_kernels.py); BUDGET_S (default 240):
seconds for the whole sweep, about half each for forward and backward (each new configuration compiles
first, seconds each). One JSON line per configuration: its fields, ms per call
(mean over the packed batches), the speed-up over FA4's choice and the largest difference from its outputs
(forward: out; backward: dq, dk, dv); the last line names the fastest of each."""
import json
import sys
import time
from dataclasses import asdict, replace

import flash_attn.cute.interface as fa4
import torch
from attention_kernels import HEAD_DIM, HEADS, TOKENS, packed_batches
from flash_attn.cute.config import select_sm90_registers
from flash_attn.cute.sm90_config_search import find_feasible_bwd_configs, find_feasible_fwd_configs

BUDGET_S = float(sys.argv[2]) if len(sys.argv) > 2 else 240.0
REPEATS = 5

# FA4's own choices and what it chose them from, recorded at the first call without a config (the
# starting point every candidate changes)
chosen = {}
_select_fwd, _select_bwd = fa4.select_fwd_config, fa4.select_bwd_config
fa4.select_fwd_config = lambda inputs: chosen.setdefault("fwd", _select_fwd(chosen.setdefault("fwd_inputs", inputs)))
fa4.select_bwd_config = lambda inputs: chosen.setdefault("bwd", _select_bwd(inputs))


def forward(batch, q, k, v, config=None):
    cu = batch.cu_seqlens
    return fa4._flash_attn_fwd(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=batch.max_seqlen,
                               max_seqlen_k=batch.max_seqlen, softmax_scale=1.0, return_lse=True, config=config)[:2]


def backward(batch, q, k, v, out, dout, lse, config=None):
    cu = batch.cu_seqlens
    return fa4._flash_attn_bwd(q, k, v, out, dout, lse, 1.0, False, cu_seqlens_q=cu, cu_seqlens_k=cu,
                               max_seqlen_q=batch.max_seqlen, max_seqlen_k=batch.max_seqlen, config=config)


def time_calls(call, batches) -> float:
    """ms per call, over every batch REPEATS times (each shape seen once before)."""
    for b in batches:
        call(b)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(REPEATS):
        for b in batches:
            call(b)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / (REPEATS * len(batches))


def max_diff(got, want) -> float:
    return max((g.float() - w.float()).abs().max().item() for g, w in zip(got, want, strict=True))


def forward_candidates(default):
    """FA4's feasible SM90 forward tiles: tile_m 128 (two MMA warp groups) or 192 (three), every tile_n,
    P in registers or not, warp-group overlap or not; the register split the kernel needs for tile_m. FA4's
    preferred kind (P in registers, overlap) first, larger tile_n first."""
    seen = {(default.tile_m, default.tile_n, default.mma_pv_is_rs, default.intra_wg_overlap)}
    feasible = find_feasible_fwd_configs(HEAD_DIM, HEAD_DIM, (64, 96, 112, 128, 144, 160, 176, 192))
    for c in sorted(feasible, key=lambda c: (not (c["pv_is_rs"] and c["overlap_wg"]), -c["tile_n"], c["tile_m"])):
        key = (c["tile_m"], c["tile_n"], c["pv_is_rs"], c["overlap_wg"])
        if key not in seen:
            seen.add(key)
            registers = select_sm90_registers(chosen["fwd_inputs"], tile_m=key[0], tile_n=key[1])
            yield replace(default, tile_m=key[0], tile_n=key[1], mma_pv_is_rs=key[2], intra_wg_overlap=key[3],
                          registers=registers)


def backward_candidates(default):
    """FA4's feasible SM90 backward tiles with two MMA warp groups (the default's thread count and
    register split), the search's best MMA layout for each (tile_m, tile_n); tiles of whole 64-row MMA
    atoms first."""
    seen = {(default.tile_m, default.tile_n)}
    feasible = find_feasible_bwd_configs(HEAD_DIM, HEAD_DIM)   # best layout first within each tile
    for c in sorted(feasible, key=lambda c: (c["tile_m"] % 64 != 0 or c["tile_n"] % 64 != 0, -c["tile_n"])):
        if c["num_wg"] != 2 or (c["tile_m"], c["tile_n"]) in seen:
            continue
        seen.add((c["tile_m"], c["tile_n"]))
        yield replace(default, tile_m=c["tile_m"], tile_n=c["tile_n"], num_stages_Q=c["Q_stage"],
                      num_stages_dO=c["dO_stage"], num_stages_PdS=c["PdS_stage"], SdP_swapAB=c["SdP_swapAB"],
                      dKV_swapAB=c["dKV_swapAB"], dQ_swapAB=c["dQ_swapAB"], AtomLayoutMSdP=c["AtomLayoutMSdP"],
                      AtomLayoutNdKV=c["AtomLayoutNdKV"], AtomLayoutMdQ=c["AtomLayoutMdQ"], dQ_single_wg=False)


def fields(config) -> dict:
    keep = ("tile_m", "tile_n", "mma_pv_is_rs", "intra_wg_overlap", "num_stages_Q", "num_stages_dO",
            "num_stages_PdS", "SdP_swapAB", "dKV_swapAB", "dQ_swapAB", "AtomLayoutMSdP", "AtomLayoutNdKV",
            "AtomLayoutMdQ")
    return {k: v for k, v in asdict(config).items() if k in keep}


def sweep(kind, batches, default, candidates, call, reference, deadline):
    """Time FA4's choice, then each candidate until ``deadline``; print a line each; return the fastest."""
    base = time_calls(lambda b: call(b, default), batches)
    print(json.dumps({"kind": kind, "config": "fa4 default", **fields(default), "ms": round(base, 4)}), flush=True)
    best = (base, "fa4 default", fields(default))
    skipped = 0
    for config in candidates:
        if time.perf_counter() > deadline:
            skipped += 1
            continue
        record = {"kind": kind, "config": "candidate", **fields(config)}
        try:
            started = time.perf_counter()
            got = call(batches[0], config)
            record["first_call_s"] = round(time.perf_counter() - started, 2)
            record["max_abs_diff"] = max_diff(got, reference)
            ms = time_calls(lambda b, c=config: call(b, c), batches)
            record.update(ms=round(ms, 4), speedup=round(base / ms, 3))
            if ms < best[0] and record["max_abs_diff"] < 0.05:
                best = (ms, "candidate", fields(config))
        except Exception as e:  # a configuration FA4 refuses or cannot build is a result too
            record["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        print(json.dumps(record), flush=True)
    return {"kind": kind, "fastest": best[1], **best[2], "ms": round(best[0], 4), "speedup": round(base / best[0], 3),
            "not_tried_for_time": skipped}


def main():
    torch.manual_seed(0)
    batches = packed_batches()
    shape = (TOKENS, HEADS, HEAD_DIM)
    q, k, v, dout = (torch.randn(shape, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    q = q * HEAD_DIM ** -0.5
    started = time.perf_counter()

    out0, _ = forward(batches[0], q, k, v)
    fastest = [sweep("forward", batches, chosen["fwd"], forward_candidates(chosen["fwd"]),
                     lambda b, c: forward(b, q, k, v, c)[:1], (out0,), started + BUDGET_S / 2)]

    saved = {id(b): forward(b, q, k, v) for b in batches}   # FA4's forward (out, lse) of each batch
    grads0 = backward(batches[0], q, k, v, saved[id(batches[0])][0], dout, saved[id(batches[0])][1])
    fastest.append(sweep("backward", batches, chosen["bwd"], backward_candidates(chosen["bwd"]),
                         lambda b, c: backward(b, q, k, v, saved[id(b)][0], dout, saved[id(b)][1], c),
                         grads0, started + BUDGET_S))
    for line in fastest:
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
