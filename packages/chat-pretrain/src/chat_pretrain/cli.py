"""chat-pretrain: T5 text-to-text pretraining on prompt/response parquet in bounded host RAM.

    chat-pretrain [train] --config large KEY=VALUE ... [--resume | --is_keep_training[=True]]
    chat-pretrain tokenizer check --tokenizer DIR_OR_JSON [--files F ...] [--write-fixed OUT_DIR]
    chat-pretrain tokenizer train --files F ... --vocab-size N [--kind bpe|unigram] --out OUT_DIR
    chat-pretrain bench --tokenizer DIR --data F.parquet [--arm both|ours|users] [--steps 20]
    chat-pretrain make-data OUT.parquet --rows N [--median-chars 60] [--task random|copy]
    chat-pretrain configs

Under a launcher: `accelerate launch --multi_gpu --num_processes 3 -m chat_pretrain train --config large ...`.
Overrides: `epochs=5 optim.lr=2e-4`, or the users' flags `--epochs=5 --learn_rate=0.0002
--batch_size_per_gpu=24 --gradient_accumulation_steps=4 --max_seq_len=128 --use_large_config=True`.
"""

from __future__ import annotations

import argparse
import sys

from chat_pretrain.config import ALIASES, TrainConfig

_TRUE = {"true", "1", "yes", "on"}


def _flag_value(token: str) -> tuple[str, str | None]:
    key, sep, value = token[2:].partition("=")
    return key.replace("-", "_"), (value if sep else None)


def parse_train_args(argv: list[str]) -> tuple[TrainConfig, bool]:
    """(config, resume) from `--config NAME`, `--resume`, `--is_keep_training[=True]`,
    `--use_large_config=True`, `--key=value` (users' flags) and `key=value` overrides. Bad usage or
    config raises ConfigError (one line; the CLI exits 2)."""
    from trainstack.config import ConfigError, load_config, parse_cli_overrides
    from trainstack.hardware import load_profiles, resolve_profile

    from chat_pretrain.profiles import profile_dir

    overrides, rest = parse_cli_overrides(argv)
    config_name = None
    resume = False
    i = 0
    while i < len(rest):
        token = rest[i]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument {token!r} (overrides look like key=value)")
        key, value = _flag_value(token)
        takes_value = key not in ("resume", "is_keep_training", "use_large_config")
        if value is None and takes_value:
            if i + 1 >= len(rest):
                raise ConfigError(f"{token} needs a value")
            value = rest[i + 1]
            i += 1
        i += 1
        if key == "config":
            config_name = value
        elif key in ("resume", "is_keep_training"):
            resume = value is None or value.strip().lower() in _TRUE
        elif key == "use_large_config":
            if value is None or value.strip().lower() in _TRUE:
                config_name = "large"
        elif key in ("help", "h"):
            print(__doc__)
            raise SystemExit(0)
        else:
            overrides.append(f"{ALIASES.get(key, key)}={value}")
    profiles = load_profiles(profile_dir())
    try:
        profile = resolve_profile(config_name or "small", profiles)
        cfg = load_config(TrainConfig, profile.settings, overrides)
    except ConfigError:
        raise
    except (ValueError, FileNotFoundError) as e:  # an unknown --config name or a missing YAML file
        raise ConfigError(str(e)) from None
    return cfg, resume


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
    t.add_argument("--kind", choices=["bpe", "unigram"], default="bpe")
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


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command = argv[0] if argv and not argv[0].startswith("-") and "=" not in argv[0] else "train"
    rest = argv[1:] if argv and argv[0] == command else argv
    if command == "train":
        from chat_pretrain.train import main as train_main

        return train_main(rest)
    if command == "tokenizer":
        return _tokenizer_main(rest)
    if command == "bench":
        from chat_pretrain.bench import main as bench_main

        return bench_main(rest)
    if command == "make-data":
        return _make_data_main(rest)
    if command == "configs":
        from trainstack.hardware import load_profiles

        from chat_pretrain.profiles import profile_dir

        for prof in load_profiles(profile_dir()):
            print(f"{prof.name:<14} {prof.description}")
        return 0
    print(f"chat-pretrain: error: unknown command {command!r}; commands: train, tokenizer, bench, make-data, configs",
          file=sys.stderr)
    return 2
