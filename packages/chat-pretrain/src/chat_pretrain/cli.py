"""chat-pretrain: T5 text-to-text pretraining on prompt/response parquet in bounded host RAM.

    chat-pretrain train [--profile auto|large|small|low-ram-12g|cpu-tiny|PATH] [key=value ...] [--resume [auto|PATH]]
    chat-pretrain train --help-config              every config key with its default and doc
    chat-pretrain eval CHECKPOINT --data F.parquet [--max-rows N]     validation loss and BLEU-4
    chat-pretrain generate CHECKPOINT "prompt" ["prompt" ...]
    chat-pretrain bench --tokenizer DIR --data F.parquet [--profile auto] [--arms users-eager,users-sdpa,ours,...]
    chat-pretrain tokenizer check --tokenizer DIR_OR_JSON [--files F ...] [--write-fixed OUT_DIR]
    chat-pretrain tokenizer train --files F ... --vocab-size N [--kind bpe|unigram] --out OUT_DIR
    chat-pretrain make-data OUT.parquet --rows N [--median-chars 60] [--task random|copy]
    chat-pretrain profiles [list] | show NAME | validate [NAME|PATH]
    chat-pretrain --version

Under a launcher: `accelerate launch --multi_gpu --num_processes 3 -m chat_pretrain train --profile large ...`.
Overrides: `epochs=5 optim.lr=2e-4`, or the users' flags `--epochs=5 --learn_rate=0.0002
--batch_size_per_gpu=24 --gradient_accumulation_steps=4 --max_seq_len=128 --use_large_config=True
--is_keep_training=True`. Exit codes: 0 done, 1 the run failed, 2 bad usage, config or data (one line),
130 interrupted (continue with the same command plus --resume).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from trainstack.task_cli import TaskCLI

from chat_pretrain import __version__
from chat_pretrain.config import profile_for_host_ram, users_flags

cli = TaskCLI("chat-pretrain", version=__version__, description=__doc__,
              profile_dir="chat_pretrain.profiles:profile_dir", config_class="chat_pretrain.config:TrainConfig",
              default_profile="auto", usage_errors=("chat_pretrain.data:DataError",), default_command="train",
              # the spellings of earlier releases, still accepted
              command_aliases={"configs": "profiles"}, flag_aliases={"--config": "--profile"})


def cmd_train(args, overrides) -> int:
    from chat_pretrain.train import Job, run

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    profile = args.profile
    if profile == "large":  # (also what --use_large_config=True becomes)
        from trainstack.hardware import detect_hardware

        profile, why = profile_for_host_ram(profile, detect_hardware().ram_gib)
        if why:
            print(why)
    cfg, _ = cli.load_config(profile, overrides)
    resume = {None: False, "auto": True}.get(args.resume, args.resume)
    try:
        result = run(Job(cfg, resume=resume, progress=not args.no_progress))
    except KeyboardInterrupt:
        # A second Ctrl-C means "now": no save. Saves are atomic, so the last complete checkpoint stands.
        print(f"chat-pretrain: interrupted twice: stopped without saving; the last complete checkpoint in "
              f"{Path(cfg.run_dir) / 'checkpoints'} (if any) continues with --resume", file=sys.stderr)
        return 130
    # fit() saved a resumable checkpoint on SIGINT/SIGTERM; 130 is the shell's "stopped by Ctrl-C".
    return 130 if result.interrupted else 0


def cmd_eval(args, overrides) -> None:
    import json

    from chat_pretrain.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, args.data, max_rows=args.max_rows, device=args.device)
    print(json.dumps(result, ensure_ascii=False))


def cmd_generate(args, overrides) -> None:
    from chat_pretrain.evaluate import generate_from_checkpoint

    for prompt, out in zip(args.prompt, generate_from_checkpoint(args.checkpoint, args.prompt, args.max_new_tokens,
                                                                 device=args.device), strict=True):
        print(f"{prompt}\t{out}")


def cmd_bench(args, overrides) -> int:
    from chat_pretrain.bench import run_bench

    return run_bench(args, overrides)


def _tokenizer_main(argv: list[str]) -> int:
    from chat_pretrain import tokenizer as T

    p = argparse.ArgumentParser(prog="chat-pretrain tokenizer")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="[UNK] rate on a sample; flags the Metaspace defect")
    c.add_argument("--tokenizer", required=True)
    c.add_argument("--files", nargs="*", default=[], help="parquet or text files to sample")
    c.add_argument("--columns", nargs="+", default=["prompt", "response"])
    c.add_argument("--sample", type=int, default=10_000)
    c.add_argument("--write-fixed", default=None, help="write a fixed tokenizer.json into this directory")
    t = sub.add_parser("train", help="train a byte-level BPE or unigram tokenizer (RAM bounded by --max-texts)")
    t.add_argument("--files", nargs="+", required=True)
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--kind", choices=["bpe", "unigram"], default="bpe",
                   help="bpe (default) is reproducible from the same files; unigram differs from run to run")
    t.add_argument("--columns", nargs="+", default=["prompt", "response"])
    # The trainer keeps a count per distinct pre-token (for Chinese, about one per clause), so its RAM
    # grows with the texts it sees: 1.5 GB at 50k and 2.5 GB at 200k generated ~60-character texts.
    t.add_argument("--max-texts", type=int, default=300_000,
                   help="train on the first N texts; bounds RAM (~7 KB per distinct 60-character text; "
                        "0: all texts, RAM unbounded)")
    t.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if a.cmd == "check":
        if a.files:
            texts = list(T.iter_texts(a.files, a.columns, max_rows=a.sample))
        else:
            texts = ["在地球上为什么没有感觉到重力的作用？", "今天天气很好，我们去公园散步吧。",
                     "机器学习是人工智能的一个分支，2023年发展很快。"]
        rep = T.check_tokenizer(a.tokenizer, texts)
        print(f"tokenizer: {T.tokenizer_file(a.tokenizer)}")
        print(f"sample: {rep.rows} texts, {rep.tokens} tokens, [UNK] rate {rep.unk_rate:.2%}")
        if rep.defect:
            print(f"DEFECT: {rep.defect}")
            print(f"fix: drop the Metaspace step from pre_tokenizer (Whitespace already removed the spaces); "
                  f"[UNK] rate after the fix: {rep.unk_rate_fixed:.2%}")
            print("      training applies it at load time (tokenizer.fix_metaspace=true); to write a fixed copy: "
                  f"chat-pretrain tokenizer check --tokenizer {a.tokenizer} --write-fixed OUT_DIR")
        else:
            print("no Metaspace defect")
        if a.write_fixed:
            print(f"wrote {T.write_fixed(a.tokenizer, a.write_fixed)}")
        return 1 if rep.defect and not a.write_fixed else 0
    tok = T.train_tokenizer(a.files, a.vocab_size, a.kind, a.columns, a.max_texts, a.out)
    print(f"trained {a.kind} tokenizer, {tok.get_vocab_size()} tokens -> {a.out}/tokenizer.json")
    return 0


def _make_data_main(argv: list[str]) -> int:
    from chat_pretrain.synth import make_parquet

    p = argparse.ArgumentParser(prog="chat-pretrain make-data")
    p.add_argument("out")
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--median-chars", type=float, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--task", choices=["random", "copy"], default="random")
    a = p.parse_args(argv)
    print(make_parquet(a.out, a.rows, median_chars=a.median_chars, seed=a.seed, task=a.task))
    return 0


def _declare() -> None:
    p = cli.add_train(cmd_train, help="pretrain (the profile auto picks fits this machine)", rewrite=users_flags)
    p.add_argument("--no-progress", action="store_true")
    p = cli.add_command("eval", cmd_eval, help="validation loss and BLEU-4 of a checkpoint on parquet files")
    p.add_argument("checkpoint", help="RUN_DIR/checkpoints/step-N (an HF model directory with tokenizer.json)")
    p.add_argument("--data", nargs="+", required=True, metavar="FILE", help="parquet files or directories")
    p.add_argument("--max-rows", type=int, default=0, help="0: every row")
    p.add_argument("--device", default="auto")
    p = cli.add_command("generate", cmd_generate, help="greedy responses to the given prompts")
    p.add_argument("checkpoint")
    p.add_argument("prompt", nargs="+")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--device", default="auto")
    p = cli.add_command("bench", cmd_bench, help="our recipe vs the users' trainer loop", overrides=True,
                        description="our recipe vs the users' trainer loop (see chat_pretrain/bench.py)")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--data", required=True, help="one parquet file with prompt/response")
    p.add_argument("--profile", default="auto", metavar="NAME|PATH",
                   help="the train profile ours runs (default auto: the one train picks on this machine)")
    p.add_argument("--users-profile", default="large", metavar="NAME|PATH",
                   help="the config the users' loop runs (default large: their large config)")
    p.add_argument("--arms", default="users-eager,users-sdpa,ours,ours-eager,fast-vs-eager",
                   help="arms to run, each in its own process, in this order; also ours-graphs-only, "
                        "ours-compile-only, ours-static, ours-eager-attn, ours-one-micro, ours-ddp-graphs (chat_pretrain/bench.py)")
    p.add_argument("--arm", default=None, metavar="ARM",
                   help="run this one arm (of --arms' choices) in this process; under a launcher, one arm on N GPUs")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=5,
                   help="warm-up steps; ours warms up until no new batch shape appeared for this many steps")
    p.add_argument("--max-warmup", type=int, default=100, help="at most this many warm-up steps")
    p.add_argument("--compare-steps", type=int, default=10, help="optimizer steps of fast-vs-eager")
    p.add_argument("--users-pad", choices=["longest", "max_length"], default="longest")
    p.add_argument("--users-attn", choices=["sdpa", "eager"], default=None,
                   help="earlier spelling: --arm users --users-attn eager is --arm users-eager")
    p.add_argument("--json-out", default=None,
                   help="results JSON (with --arms, also one file per arm beside it: NAME-ARM.json)")
    p.add_argument("--torch-profile", action="store_true", help="print a torch.profiler table of 3 steps first")
    p.add_argument("--memory-cap-gib", type=float, default=None, metavar="GIB",
                   help="cap each arm's CUDA memory at GIB (a smaller card on a larger GPU): an arm that does not "
                        "fit fails out of memory; each arm records its peak reserved memory")
    cli.add_command("tokenizer", _tokenizer_main, help="check (the Metaspace defect) or train a tokenizer", raw=True)
    cli.add_command("make-data", _make_data_main, help="synthetic prompt/response parquet", raw=True)


_declare()


def main(argv=None) -> int:
    return cli.main(argv)
