"""chat-pretrain bench: our recipe vs a faithful reimplementation of the users' trainer loop.

    # 1 GPU: both arms, each in its own process (so peak host RSS is per arm), same model/data/GPU
    chat-pretrain make-data /tmp/bench.parquet --rows 1000000
    chat-pretrain bench --tokenizer path/to/chatlm-tokenizer --data bench.parquet --profile large
    # N GPUs: one arm per launch; packages/chat-pretrain/scripts/bench_multi_gpu.sh does 1 vs 2 GPUs
    accelerate launch --multi_gpu --num_processes 2 -m chat_pretrain bench --arm ours --json-out ours2.json ...
    # CPU: the harness runs (figures say they are CPU figures)
    chat-pretrain bench --tokenizer path/to/chatlm-tokenizer --data d.parquet --profile cpu-tiny --steps 3 --warmup 1

The users' loop (ChatLM-mini-Chinese trainer, as described in SEEDS.md and issue 5): the whole
parquet table loaded into RAM, random batches of `batch_size` rows padded to their longest row (or
to max_seq_len with --users-pad max_length), no length bucketing, `loss.item()` every micro-step,
gradients all-reduced on every micro-step (no no_sync), transformers' Adafactor with relative steps
(its lr is ignored). Ours: what `chat-pretrain train --profile NAME data.train_files=[DATA]
tokenizer.path=TOK` runs, built by the same train.py functions (streamed token-budget batches
bucketed by length, AdamW built on the GPU so fused, the config's warmup + cosine over the run's
estimated length) and stepped by core's FitStep (fit's no_sync on non-final micro-steps, no host
sync per micro-step).

Both arms use the same T5 (same seed, same attention implementation unless --users-attn eager), the
same fixed tokenizer, the same token-level truncation, and the same precision. Tokens are real
(non-pad) prompt + response tokens; MFU counts the model FLOPs of those tokens only.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch


def _dist_sum(x: float, accelerator) -> float:
    if accelerator.num_processes == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=accelerator.device)
    torch.distributed.all_reduce(t)
    return float(t.item())


def _dist_max(x: float, accelerator) -> float:
    if accelerator.num_processes == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=accelerator.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t.item())


def run_arm(arm: str, args, cfg) -> dict:
    """One arm on ``cfg`` (the train config, with data.train_files = [--data] and tokenizer.path =
    --tokenizer). Ours is `chat-pretrain train`'s setup, built by the same train.py functions and
    stepped by core's FitStep (fit's micro-steps, no_sync, clipping, schedule)."""
    import numpy as np
    import pyarrow.parquet as pq
    from accelerate import Accelerator
    from trainstack.bench import FitStep, time_steps
    from trainstack.hardware import detect_hardware
    from trainstack.optim import describe_optimizer
    from trainstack.precision import apply_precision, resolve_precision

    from chat_pretrain import train as T
    from chat_pretrain.data import collate, tokenize_pairs
    from chat_pretrain.model import build_model, count_params, flops_per_token

    precision = resolve_precision(cfg.precision, detect_hardware())
    apply_precision(precision)
    # cpu=True on a CPU host: accelerate only sets up gloo for several CPU processes when told so.
    accelerator = Accelerator(mixed_precision=precision.accelerate_mixed_precision, cpu=not torch.cuda.is_available())
    tok = T.build_tokenizer(cfg)
    accum = cfg.grad_accum_steps
    real_tokens: list[int] = []
    samples: list[int] = []
    optimizer_impl = None

    if arm == "ours":
        model, how = T.build_training_model(cfg, tok, accelerator.device)
        batches = T.build_train_batches(cfg, tok, rank=accelerator.process_index, world_size=accelerator.num_processes)
        _, total_steps = T.schedule_steps(cfg, batches)
        optimizer, scheduler = T.build_optimizer_and_scheduler(cfg, model, total_steps)
        optimizer_impl = describe_optimizer(optimizer)

        def count_batch(b):
            # Real rows and tokens, counted on the CPU copy (no device sync); a rank's filler batch in
            # a bucket's last round trains nothing and counts nothing.
            if b.get("is_padding", False):
                return 0, 0
            return int(b["attention_mask"].sum()) + int((b["labels"] != -100).sum()), b["input_ids"].shape[0]

        fit_step = FitStep(model=model, optimizer=optimizer, scheduler=scheduler, train_batches=batches,
                           loss_fn=T.make_loss_fn(), config=T.build_loop_config(cfg), precision=precision,
                           accelerator=accelerator, count_batch=count_batch)
        model = fit_step.model
        real_tokens, samples = fit_step.real_tokens, fit_step.samples
        step = fit_step
    else:
        from transformers.optimization import Adafactor

        torch.manual_seed(cfg.seed)
        attn = args.users_attn or cfg.model.attn_implementation
        model, how = build_model(cfg.model.name, tok.vocab_size, tok.pad_id, tok.eos_id, attn, cfg.model.dropout_rate)
        # The users' dataset: the whole table in RAM, rows indexed at random.
        table = pq.read_table(args.data, columns=[cfg.data.prompt_column, cfg.data.response_column])
        prompts = table.column(0).to_pylist()
        responses = table.column(1).to_pylist()
        del table
        rng = np.random.default_rng(cfg.seed + accelerator.process_index)
        bs = cfg.data.batch_size
        optimizer = Adafactor(model.parameters(), scale_parameter=True, relative_step=True, warmup_init=False, lr=None)
        model, optimizer = accelerator.prepare(model.to(accelerator.device), optimizer)
        pad_to = cfg.data.max_seq_len if args.users_pad == "max_length" else None

        def step():
            n_tok = n_rows = 0
            for _ in range(accum):
                idx = rng.integers(0, len(prompts), size=bs)
                src, tgt = tokenize_pairs(tok.tokenizer, [prompts[i] for i in idx], [responses[i] for i in idx],
                                          cfg.data.max_seq_len, tok.eos_id)
                b = collate(src, tgt, tok.pad_id, pad_to=pad_to)
                n_tok += int(b["attention_mask"].sum()) + int((b["labels"] != -100).sum())
                n_rows += bs
                b = {key: v.to(accelerator.device) for key, v in b.items()}
                with precision.autocast(accelerator.device.type):
                    loss = model(**b).loss.mean() / accum
                accelerator.backward(loss)  # DDP all-reduces here on every micro-step
                loss.detach().item()  # their per-step logging: a host sync every micro-step
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            real_tokens.append(n_tok)
            samples.append(n_rows)

    fpt = flops_per_token(accelerator.unwrap_model(model), cfg.data.max_seq_len) / 2
    warmup = args.warmup
    if args.torch_profile and accelerator.is_main_process:
        from torch.profiler import ProfilerActivity, profile

        for _ in range(warmup):
            step()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                step()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
        del real_tokens[warmup:], samples[warmup:]  # the profiled steps are not timed
        warmup = len(real_tokens)
        warmup_left = 0
    else:
        warmup_left = warmup
    res = time_steps(step, warmup_steps=warmup_left, timed_steps=args.steps,
                     real_tokens_per_step=lambda i: real_tokens[warmup + i],
                     samples_per_step=lambda i: samples[warmup + i], flops_per_token=fpt, name=arm)
    # Whole-job figures across ranks: tokens summed, time = the slowest rank.
    world = accelerator.num_processes
    seconds = _dist_max(res.seconds, accelerator)
    tokens = _dist_sum(res.real_tokens, accelerator)
    rows = _dist_sum(res.samples, accelerator)
    peak_rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    out = dict(res.__dict__)
    out.update(seconds=seconds, real_tokens=int(tokens), samples=int(rows), tokens_per_s=tokens / seconds,
               samples_per_s=rows / seconds, mfu=(res.mfu * (tokens / seconds) / res.tokens_per_s / world)
               if res.mfu and res.tokens_per_s else res.mfu)
    out["extra"] = dict(res.extra, world_size=world, optimizer=optimizer_impl, peak_host_rss_gib=round(_dist_max(peak_rss_gib, accelerator), 3),
                        model=how, params=count_params(accelerator.unwrap_model(model)),
                        precision=precision.name, attn=accelerator.unwrap_model(model).config._attn_implementation, grad_accum=accum, batch_size=cfg.data.batch_size,
                        max_seq_len=cfg.data.max_seq_len, users_pad=args.users_pad if arm == "users" else None)
    return out if accelerator.is_main_process else {}


def run_bench(args, overrides) -> int:
    """`chat-pretrain bench` (options declared in cli.py): both arms, each in its own process, or one."""
    from chat_pretrain.config import load_train_config

    cfg = load_train_config(args.profile, overrides)  # a bad profile or key: ConfigError, exit 2
    # Ours trains on exactly what `chat-pretrain train ... data.train_files=[DATA] tokenizer.path=TOK` would.
    cfg.data.train_files, cfg.tokenizer.path = [args.data], args.tokenizer
    if args.arm != "both":
        result = run_arm(args.arm, args, cfg)
        if result:
            text = json.dumps(result)
            print(text)
            if args.json_out:
                Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json_out).write_text(text, encoding="utf-8")
        return 0

    from trainstack.bench import BenchResult, compare, device_banner

    results = []
    for arm in ("users", "ours"):
        out = Path(args.json_out or ".").with_suffix("") if args.json_out else Path(f".bench-{arm}.json")
        target = Path(f"{out}-{arm}.json") if args.json_out else out
        cmd = [sys.executable, "-m", "chat_pretrain", "bench", "--arm", arm, "--json-out", str(target),
               "--tokenizer", args.tokenizer, "--data", args.data, "--profile", args.profile,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--users-pad", args.users_pad,
               *(["--users-attn", args.users_attn] if args.users_attn else []), *overrides]
        subprocess.run(cmd, check=True, env=dict(os.environ))
        results.append(BenchResult(**json.loads(target.read_text(encoding="utf-8"))))
    print(device_banner())
    for r in results:
        print(f"{r.name}: peak host RSS {r.extra['peak_host_rss_gib']:.2f} GiB, {r.extra['ms_per_step']:.1f} ms/step, "
              f"attn {r.extra['attn']}")
    print(compare(results, baseline="users"))
    return 0
