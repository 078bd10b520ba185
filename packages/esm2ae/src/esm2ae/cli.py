"""esm2ae command line.

    esm2ae train --profile h100-80g data.train=uniref50.fasta.gz          # 1 GPU
    torchrun --nproc_per_node 2 -m esm2ae train --profile 2x-rtx2080s-8g data.train=u50.parquet
    esm2ae train --profile cpu-debug                                       # CPU, shipped sample
    esm2ae train --profile ./my-profile.yaml task=ae model.name=runs/x/final model.pretrained=true
    esm2ae embed runs/esm2ae/final proteins.fasta -o latents.parquet
    esm2ae eval runs/esm2ae/final held_out.fasta
    esm2ae profiles list | show NAME | validate [NAME|PATH ...] | pick
    esm2ae bench --sizes esm2_t33_650M,esm2_t30_150M,esm2_t12_35M

Config overrides are dotted key=value pairs (`optim.lr=3e-4 batch.max_tokens_per_batch=8192`).
"""

from __future__ import annotations

import argparse
import sys


def _profiles(args) -> int:
    from esm2ae.profiles import get_profile, shipped_profiles, validate_profile

    if args.action == "list":
        for p in shipped_profiles():
            r = p.requires
            gpus = f"{r.gpu_count} GPU(s) >= {r.min_gpu_memory_gib:g} GiB" if r.gpu_count else "CPU"
            print(f"{p.name:16s} {gpus:24s} {p.description}")
        return 0
    if args.action == "show":
        if not args.names:
            print("esm2ae profiles show: give a profile name or path", file=sys.stderr)
            return 2
        for name in args.names:
            p = get_profile(name)
            print(f"# {p.path}")
            print(p.path.read_text() if hasattr(p.path, "read_text") else open(p.path).read())
        return 0
    if args.action == "validate":
        names = args.names or [p.name for p in shipped_profiles()]
        failed = 0
        for name in names:
            v = validate_profile(name)
            print(f"{'OK  ' if v.ok else 'FAIL'} {v.source}")
            for n in v.notes:
                print(f"     {n}")
            for e in v.errors:
                print(f"     error: {e}")
            failed += not v.ok
        return 1 if failed else 0
    if args.action == "pick":
        from trainstack.hardware import NoProfileFits, detect_hardware, pick_profile, simulated_hardware

        hw = simulated_hardware(args.hardware) if args.hardware else detect_hardware()
        try:
            p = pick_profile(shipped_profiles(), hw)
        except NoProfileFits as e:
            print(f"esm2ae: {e}", file=sys.stderr)
            return 1
        print(p.name)
        return 0
    raise AssertionError(args.action)


def main(argv: list[str] | None = None) -> int:
    from trainstack.config import parse_cli_overrides

    argv = list(sys.argv[1:] if argv is None else argv)
    overrides, rest = parse_cli_overrides(argv)
    ap = argparse.ArgumentParser(prog="esm2ae", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train (MLM, AE or joint) with a profile + key=value overrides")
    t.add_argument("--profile", default=None, help="shipped profile name or YAML path (default: pick for this machine)")
    t.add_argument("--resume", default=None, help="'auto' (latest in run_dir) or a checkpoint directory")
    e = sub.add_parser("embed", help="write per-protein latents (and pooled embeddings) to parquet")
    e.add_argument("checkpoint")
    e.add_argument("fasta")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--batch-tokens", type=int, default=16384)
    e.add_argument("--device", default="auto")
    v = sub.add_parser("eval", help="perplexity, masked-token accuracy and AE loss on a file")
    v.add_argument("checkpoint")
    v.add_argument("data")
    v.add_argument("--device", default="auto")
    p = sub.add_parser("profiles", help="list | show NAME | validate [NAME|PATH ...] | pick")
    p.add_argument("action", choices=["list", "show", "validate", "pick"])
    p.add_argument("names", nargs="*")
    p.add_argument("--hardware", default=None, help="pick for a simulated machine (e.g. rtx3080-10g)")
    b = sub.add_parser("bench", help="HF Trainer (SDPA, padded) vs packed, one GPU")
    b.add_argument("--sizes", default="esm2_t33_650M,esm2_t30_150M,esm2_t12_35M")
    b.add_argument("--steps", type=int, default=20)
    b.add_argument("--warmup", type=int, default=5)
    b.add_argument("--max-tokens", type=int, default=16384)
    b.add_argument("--baseline-batch", type=int, default=20)
    b.add_argument("--attention", default="auto")
    b.add_argument("--no-compile", action="store_true")
    b.add_argument("--skip-baseline", action="store_true")
    b.add_argument("--out", default=None)
    args = ap.parse_args(rest)
    if overrides and args.command != "train":
        ap.error(f"key=value overrides only apply to 'train': {' '.join(overrides)}")

    from trainstack.config import ConfigError

    from esm2ae.data import DataError

    try:
        if args.command == "profiles":
            return _profiles(args)
        if args.command == "train":
            from esm2ae.train import train_from_cli
            result = train_from_cli(args.profile, overrides, resume=args.resume)
            # SIGINT/SIGTERM: a resumable checkpoint was saved; 130 is the shell's "stopped by Ctrl-C"
            return 130 if result.get("interrupted") else 0
        if args.command == "embed":
            from esm2ae.embed import embed
            embed(args.checkpoint, args.fasta, args.output, batch_tokens=args.batch_tokens, device=args.device)
            return 0
        if args.command == "eval":
            from esm2ae.train import evaluate_checkpoint
            evaluate_checkpoint(args.checkpoint, args.data, device=args.device)
            return 0
        if args.command == "bench":
            from esm2ae.bench import run_bench
            run_bench(args.sizes.split(","), steps=args.steps, warmup=args.warmup, max_tokens=args.max_tokens,
                      baseline_batch=args.baseline_batch, attention=args.attention,
                      compile=not args.no_compile, skip_baseline=args.skip_baseline, out=args.out)
            return 0
    except (ConfigError, DataError, ValueError, FileNotFoundError) as e:
        print(f"esm2ae: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:   # a second Ctrl-C, or one outside the training loop
        print("esm2ae: interrupted", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
