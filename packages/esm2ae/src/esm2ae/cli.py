"""esm2ae command line.

    esm2ae train --profile h100-80g data.train=uniref50.fasta.gz          # 1 GPU
    torchrun --nproc_per_node 2 -m esm2ae train --profile 2x-rtx2080s-8g data.train=u50.parquet
    esm2ae train --profile cpu-debug                                       # CPU, shipped sample
    esm2ae train --profile ./my-profile.yaml task=ae model.name=runs/x/final model.pretrained=true
    esm2ae train --resume [auto|CHECKPOINT] ...                           # continue an interrupted run
    esm2ae train --help-config                                             # every config key, default, doc
    esm2ae embed runs/esm2ae/final proteins.fasta -o latents.parquet
    esm2ae eval runs/esm2ae/final --data held_out.fasta
    esm2ae profiles [list] | show NAME | validate [NAME|PATH ...] | pick [--simulate MACHINE]
    esm2ae bench --sizes esm2_t33_650M,esm2_t30_150M,esm2_t12_35M
    esm2ae bench --sizes esm2_t33_650M --skip-baseline --profile           # + kernel time by category
    esm2ae bench --sizes esm2_t33_650M --compare-steps 5 model.residual_dtype=fp32   # ours with a config key
    esm2ae --version

Config overrides are dotted key=value pairs (`optim.lr=3e-4 batch.max_tokens_per_batch=8192`).
Without --profile (or with --profile auto) the most demanding profile this machine fits is used; on a
GPU that no GPU profile fits, the run stops and names the closest one (ask for the CPU with
--profile cpu-debug). Exit codes: 0 done, 1 the run failed, 2 bad usage, config or data (one line),
130 interrupted (continue with --resume).
"""

from __future__ import annotations

from trainstack.task_cli import TaskCLI

from esm2ae import __version__


def validate(profile) -> tuple[list[str], list[str]]:
    """`profiles validate`: keys and types, precision on the profile's GPU class, the DeepSpeed JSON,
    tokens-per-step arithmetic and a memory estimate (esm2ae.profiles.validate_profile)."""
    from esm2ae.profiles import validate_profile

    v = validate_profile(str(profile.path))
    return v.errors, v.notes


cli = TaskCLI("esm2ae", version=__version__, description=__doc__, profile_dir="esm2ae.profiles:profile_dir",
              config_class="esm2ae.config:Config", default_profile="auto", validate_profile=validate,
              usage_errors=("esm2ae.data:DataError", ValueError, FileNotFoundError),
              flag_aliases={"--hardware": "--simulate"})  # `profiles pick --hardware`, the earlier spelling


def cmd_train(args, overrides) -> int:
    from esm2ae.train import train_from_cli

    profile = None if args.profile in (None, "auto") else args.profile  # None: pick for this machine
    result = train_from_cli(profile, overrides, resume=args.resume)
    # SIGINT/SIGTERM: a resumable checkpoint was saved; 130 is the shell's "stopped by Ctrl-C"
    return 130 if result.get("interrupted") else 0


def cmd_embed(args, overrides) -> None:
    from esm2ae.embed import embed

    embed(args.checkpoint, args.fasta, args.output, batch_tokens=args.batch_tokens, device=args.device)


def cmd_eval(args, overrides) -> None:
    from trainstack.config import ConfigError

    from esm2ae.train import evaluate_checkpoint

    if bool(args.data) == bool(args.data_file):
        raise ConfigError("esm2ae eval: give the data once: --data FILE (FASTA or parquet)")
    evaluate_checkpoint(args.checkpoint, args.data or args.data_file, device=args.device)


def cmd_bench(args, overrides) -> None:
    from esm2ae.bench import run_bench

    run_bench(args.sizes.split(","), steps=args.steps, warmup=args.warmup, max_tokens=args.max_tokens,
              baseline_batch=args.baseline_batch, attention=args.attention,
              compile=not args.no_compile, skip_baseline=args.skip_baseline, out=args.out, profile=args.profile,
              accum=args.accum, compare_steps=args.compare_steps, overrides=overrides)


def _declare() -> None:
    import argparse

    cli.add_train(cmd_train, help="train (MLM, AE or joint) with a profile + key=value overrides")
    e = cli.add_command("embed", cmd_embed, help="write per-protein latents (and pooled embeddings) to parquet")
    e.add_argument("checkpoint")
    e.add_argument("fasta")
    e.add_argument("-o", "--output", required=True)
    e.add_argument("--batch-tokens", type=int, default=16384)
    e.add_argument("--device", default="auto")
    v = cli.add_command("eval", cmd_eval, help="perplexity, masked-token accuracy and AE loss on a file")
    v.add_argument("checkpoint")
    v.add_argument("data_file", nargs="?", help=argparse.SUPPRESS)  # `eval CKPT DATA`, the earlier spelling
    v.add_argument("--data", metavar="FILE", help="FASTA or parquet of held-out sequences")
    v.add_argument("--device", default="auto")
    b = cli.add_command("bench", cmd_bench, help="HF Trainer (SDPA, padded) vs packed, one GPU; key=value "
                        "overrides set ours' config keys (model.residual_dtype=fp32)", overrides=True)
    b.add_argument("--sizes", default="esm2_t33_650M,esm2_t30_150M,esm2_t12_35M")
    b.add_argument("--steps", type=int, default=20)
    b.add_argument("--warmup", type=int, default=5)
    b.add_argument("--max-tokens", type=int, default=16384)
    b.add_argument("--baseline-batch", type=int, default=20)
    b.add_argument("--accum", type=int, default=1,
                   help="micro-batches per optimizer step, both arms (training accumulates to ~2M tokens)")
    b.add_argument("--attention", default="auto")
    b.add_argument("--compare-steps", type=int, default=0,
                   help="also train ours and the eager path N steps from the same weights and compare the losses")
    b.add_argument("--no-compile", action="store_true")
    b.add_argument("--skip-baseline", action="store_true")
    b.add_argument("--profile", action="store_true",
                   help="also run ours under torch.profiler: kernel time by category and the top kernels")
    b.add_argument("--out", default=None)


_declare()


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
