"""Time the LM head's chunk math alone on one CUDA GPU: the compiled torch ops (speed.compile_loss, as
run 8 shipped them) against ce_kernel's Triton kernel (speed.triton_ce) at several block sizes and
warp counts, on random bf16 logits of NLLB's aligned vocabulary (256,256 columns, 256,206 real).

    PYTHONPATH=packages/core/src:packages/mt-nllb/src python packages/mt-nllb/scripts/ce_kernel_timing.py \
        --rows 4608 8192 --out ce-kernel-timing.json

Prints, per setting and row count, ms per call and the rate over the ~3 passes over the logits
(read, read, write: 6 bytes an element), and each kernel setting's largest differences from the
compiled ops. The compiled ops are compiled as in training (one row count as it is, then the rows
symbolic), so the timed kernels are the ones a run replays.
"""

from __future__ import annotations

import argparse
import json
from functools import partial

import torch
from mt_nllb import ce_kernel
from mt_nllb import loss as L
from triton.testing import do_bench

VOCAB, COLUMNS, EPSILON = 256206, L.aligned_rows(256206), 0.1
SETTINGS = [(1024, 4), (2048, 4), (4096, 4), (4096, 8), (8192, 8), (8192, 16), (16384, 16)]


def random_chunk(rows: int, seed: int):
    g = torch.Generator(device="cuda").manual_seed(seed)
    logits = (torch.randn(rows, COLUMNS, device="cuda", generator=g) * 2).to(torch.bfloat16)
    labels = torch.randint(0, VOCAB, (rows, 1), device="cuda", generator=g)
    labels[::50] = L.IGNORE_INDEX  # a few padded rows, as the gathered head has
    return logits, labels


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[4608, 8192])
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("ce_kernel_timing: needs a CUDA GPU")
    L.configure(compile_loss=True, dynamic=False)
    compiled = L._chunk_fn(True)
    for rows in (args.rows[0], args.rows[0] + 256):  # compile as a run does: static, then rows symbolic
        compiled(*random_chunk(rows, 0), EPSILON, True, VOCAB)
    results = []
    for rows in args.rows:
        logits, labels = random_chunk(rows, 1)
        want_loss, want_grad = compiled(logits, labels, EPSILON, True, VOCAB)
        gigabytes = 6 * rows * COLUMNS / 1e9
        ms = do_bench(partial(compiled, logits, labels, EPSILON, True, VOCAB), warmup=5, rep=40)
        results.append({"rows": rows, "path": "compiled torch ops", "ms": ms, "tb_per_s": gigabytes / ms})
        for block, warps in SETTINGS:
            call = partial(ce_kernel.chunk_loss_and_grad_, logits.clone(), labels, EPSILON, True, VOCAB,
                           block=block, num_warps=warps)
            got_loss, got_grad = call()
            diffs = {"loss_rel_diff": float((got_loss - want_loss).abs() / want_loss.abs()),
                     "grad_max_abs_diff": float((got_grad.float() - want_grad.float()).abs().max())}
            # Timed over its own output from here on: the kernel's work does not depend on the values.
            ms = do_bench(call, warmup=5, rep=40)
            results.append({"rows": rows, "path": f"triton {block} columns, {warps} warps", "ms": ms,
                            "tb_per_s": gigabytes / ms, **diffs})
    for r in results:
        extra = "" if "loss_rel_diff" not in r else f"  loss rel {r['loss_rel_diff']:.1e}, grad {r['grad_max_abs_diff']:.1e}"
        print(f"{r['rows']:>6} rows  {r['path']:<32} {r['ms']:7.3f} ms  {r['tb_per_s']:5.2f} TB/s{extra}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
