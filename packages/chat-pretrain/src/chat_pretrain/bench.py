"""chat-pretrain bench: our recipe vs a faithful reimplementation of the users' trainer loop.

    # 1 GPU: every arm, one after the other on the same GPU, one table (packages/chat-pretrain/scripts/gpu_bench.sh)
    chat-pretrain make-data /tmp/bench.parquet --rows 1000000
    chat-pretrain bench --tokenizer path/to/chatlm-tokenizer --data /tmp/bench.parquet --json-out results/bench.json
    # N GPUs: one arm per launch; packages/chat-pretrain/scripts/bench_multi_gpu.sh does 1 vs 2 GPUs
    accelerate launch --multi_gpu --num_processes 2 -m chat_pretrain bench --arm ours --json-out ours2.json ...
    # CPU: the harness runs (figures say they are CPU figures)
    chat-pretrain bench --tokenizer path/to/chatlm-tokenizer --data d.parquet --profile cpu-tiny \
        --users-profile cpu-tiny --steps 3 --warmup 1

Arms (`--arms`, by default the five below; each runs in a child process of its own, so its peak
GPU memory and host RSS are its own, one after the other on the same GPU, and one table compares them):
- users-eager, users-sdpa: the users' loop (ChatLM-mini-Chinese trainer, as described in SEEDS.md and
  issue 5) on `--users-profile` (default `large`: 32 rows x 192 tokens, accum 2), with eager
  attention (what their transformers 4.x ran for T5) or SDPA: the whole parquet table loaded into RAM,
  random batches of `batch_size` rows padded to their longest row (or to max_seq_len with --users-pad
  max_length), no length bucketing, `loss.item()` every micro-step, gradients all-reduced on every
  micro-step (no no_sync), transformers' Adafactor with relative steps (its lr is ignored).
- ours: what `chat-pretrain train --profile PROFILE data.train_files=[DATA] tokenizer.path=TOK` runs
  (default profile auto: the one train picks on this machine), built by the same train.py functions
  (the fast path's speed, streamed token-budget batches on a few fixed shapes, AdamW built on the GPU so
  fused, the config's warmup + cosine) and stepped by core's FitStep (fit's TrainStep: compiled,
  replayed as CUDA graphs; no host sync per micro-step).
- ours-eager: ours with speed.compile=false speed.cuda_graphs=false: the same batches, the eager step.
- fast-vs-eager: not timed. ours and ours-eager from the same weights over the same batches, dropout
  off in both (a replayed graph draws its dropout masks elsewhere), `--compare-steps` optimizer steps:
  each step's loss side by side and the largest difference.
- not run by default, one part of ours changed each: ours-graphs-only (speed.compile=false: the eager
  step captured), ours-compile-only (speed.cuda_graphs=false), ours-static (speed.compile_dynamic=false:
  one compilation per shape), ours-eager-attn (model.attn_implementation=eager), ours-one-micro (the
  profile's batch_size x grad_accum_steps as one micro-batch: the same tokens per optimizer step),
  ours-ddp-graphs (speed.cuda_graphs=true: under a launcher with several GPUs the captured steps, the
  gradients all-reduced between backward and update, instead of DDP's compiled step; on one GPU, ours).

All arms use the same T5 (same seed), tokenizer, token-level truncation and precision. Tokens are real
(non-pad, non-filler) prompt + response tokens; MFU counts the model FLOPs of those tokens only.
Ours warms up until no new batch shape has been compiled or captured for `--warmup` steps (at most
`--max-warmup`); shapes first seen inside the timed steps are reported.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from trainstack.memory import cap_cuda_memory, gpu_peak_reserved_gib

USERS_ARMS = {"users-eager": "eager", "users-sdpa": "sdpa"}
OURS_ARMS = {
    "ours": (),
    "ours-eager": ("speed.compile=false", "speed.cuda_graphs=false"),
    # one part of the fast path changed at a time, for attribution or when a part fails on a GPU
    "ours-graphs-only": ("speed.compile=false",),
    "ours-compile-only": ("speed.cuda_graphs=false",),
    "ours-static": ("speed.compile_dynamic=false",),
    "ours-eager-attn": ("model.attn_implementation=eager",),
    "ours-ddp-graphs": ("speed.cuda_graphs=true",),
    "ours-one-micro": (),  # the profile's whole optimizer step in one micro-batch (arm_config)
}
ARMS = (*USERS_ARMS, *OURS_ARMS)
COMPARE = "fast-vs-eager"
NO_DROPOUT = ("model.dropout_rate=0",)


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


def arm_config(args, overrides, arm: str):
    """The TrainConfig an arm runs: ours' on --profile, the users' on --users-profile, with the command
    line's overrides (then the arm's own), data.train_files = [--data], tokenizer.path = --tokenizer."""
    from chat_pretrain.config import load_train_config

    if arm in USERS_ARMS:
        cfg = load_train_config(args.users_profile, overrides)
    else:
        cfg = load_train_config(args.profile, [*overrides, *OURS_ARMS.get(arm, ())])
        if arm == "ours-one-micro":
            # The same tokens per optimizer step as one micro-batch: larger kernels, one replay per step.
            cfg.data.batch_size, cfg.grad_accum_steps = cfg.data.batch_size * cfg.grad_accum_steps, 1
    cfg.data.train_files, cfg.tokenizer.path = [args.data], args.tokenizer
    return cfg


def _setup(cfg):
    from accelerate import Accelerator
    from trainstack.hardware import detect_hardware
    from trainstack.precision import apply_precision, resolve_precision

    precision = resolve_precision(cfg.precision, detect_hardware())
    apply_precision(precision)
    # cpu=True on a CPU host: accelerate only sets up gloo for several CPU processes when told so.
    return precision, Accelerator(mixed_precision=precision.accelerate_mixed_precision,
                                  cpu=not torch.cuda.is_available())


def ours_step(cfg, precision, accelerator):
    """`chat-pretrain train`'s setup for ``cfg``, built by the same train.py functions, as a core FitStep
    (one optimizer step per call, fit's fast path included). Returns (step, speed, model description)."""
    from trainstack.bench import FitStep

    from chat_pretrain import train as T
    from chat_pretrain.data import real_tokens

    tok = T.build_tokenizer(cfg)
    speed = T.resolve_train_speed(cfg, accelerator.device, precision, world_size=accelerator.num_processes)
    model, how = T.build_training_model(cfg, tok, accelerator.device)
    batches = T.build_train_batches(cfg, tok, rank=accelerator.process_index, world_size=accelerator.num_processes,
                                    speed=speed)
    _, total_steps = T.schedule_steps(cfg, batches)
    optimizer, scheduler = T.build_optimizer_and_scheduler(cfg, model, total_steps)

    def count_batch(b):
        # Counted on the CPU copy (no device sync); a rank's padding batch in a bucket's last round and
        # the fast path's filler rows train nothing and count nothing.
        if b.get("is_padding", False):
            return 0, 0
        return int(real_tokens(b)), int((b["labels"] != -100).any(dim=1).sum())

    step = FitStep(model=model, optimizer=optimizer, scheduler=scheduler, train_batches=batches,
                   loss_fn=T.make_loss_fn(), config=T.build_loop_config(cfg), precision=precision,
                   accelerator=accelerator, count_batch=count_batch, speed=speed)
    return step, speed, how


def users_step(args, cfg, precision, accelerator, attn: str):
    """The users' loop (module docstring) as a callable optimizer step, with its per-step counts."""
    import numpy as np
    import pyarrow.parquet as pq
    from transformers.optimization import Adafactor

    from chat_pretrain import train as T
    from chat_pretrain.data import collate, tokenize_pairs
    from chat_pretrain.model import build_model

    tok = T.build_tokenizer(cfg)
    torch.manual_seed(cfg.seed)
    model, how = build_model(cfg.model.name, tok.vocab_size, tok.pad_id, tok.eos_id, attn, cfg.model.dropout_rate)
    # The users' dataset: the whole table in RAM, rows indexed at random.
    table = pq.read_table(args.data, columns=[cfg.data.prompt_column, cfg.data.response_column])
    prompts, responses = table.column(0).to_pylist(), table.column(1).to_pylist()
    del table
    rng = np.random.default_rng(cfg.seed + accelerator.process_index)
    bs, accum = cfg.data.batch_size, cfg.grad_accum_steps
    optimizer = Adafactor(model.parameters(), scale_parameter=True, relative_step=True, warmup_init=False, lr=None)
    model, optimizer = accelerator.prepare(model.to(accelerator.device), optimizer)
    pad_to = cfg.data.max_seq_len if args.users_pad == "max_length" else None
    real_tokens: list[int] = []
    samples: list[int] = []

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

    step.real_tokens, step.samples, step.model = real_tokens, samples, model
    return step, how


def _fast_path_events(fast_step) -> tuple:
    """Shapes seen, graphs compiled and captured so far: what warm-up waits to stop changing."""
    if fast_step is None:
        return ()
    stats = fast_step.stats
    return len(stats.shapes), stats.compiled_graphs, stats.captured_graphs


def _warm_up(step, fast_step, min_steps: int, max_steps: int) -> int:
    """Steps until ``min_steps`` have passed and, on the fast path, no shape has been new, compiled or
    captured for ``min_steps`` steps in a row, or ``max_steps``. Returns the steps run."""
    done, quiet, events, start = 0, 0, None, time.perf_counter()
    while done < max_steps:
        step()
        done += 1
        now = _fast_path_events(fast_step)
        quiet = quiet + 1 if now == events else 0
        if now != events:  # progress in the log, so that a run cut short still says how far it got
            print(f"warm-up step {done}, {time.perf_counter() - start:.0f} s: shapes, compiled graphs, "
                  f"captured graphs {now}", flush=True)
        events = now
        if done >= min_steps and (fast_step is None or quiet >= min_steps):
            break
    return done


def run_arm(arm: str, args, cfg) -> dict:
    """One timed arm on ``cfg`` in this process (several under a launcher); the JSON-able result."""
    from trainstack.bench import time_steps
    from trainstack.optim import describe_optimizer

    from chat_pretrain.model import count_params, flops_per_token

    if args.memory_cap_gib:
        cap_cuda_memory(args.memory_cap_gib)
    precision, accelerator = _setup(cfg)
    fast_step = None
    if arm in USERS_ARMS:
        step, how = users_step(args, cfg, precision, accelerator, USERS_ARMS[arm])
        model, optimizer_impl, speed_line = step.model, None, None
        real_tokens, samples = step.real_tokens, step.samples
    else:
        step, speed, how = ours_step(cfg, precision, accelerator)
        model, optimizer_impl, speed_line = step.model, describe_optimizer(step.optimizer), speed.reason
        real_tokens, samples, fast_step = step.real_tokens, step.samples, step.train_step

    fpt = flops_per_token(accelerator.unwrap_model(model), cfg.data.max_seq_len) / 2
    if args.torch_profile and accelerator.is_main_process:
        _print_profile(step, args.warmup)
    warmup = _warm_up(step, fast_step, args.warmup, max(args.warmup, args.max_warmup))
    before = len(real_tokens)  # the steps so far (profiled ones included) are not timed
    events_before = _fast_path_events(fast_step)
    res = time_steps(step, warmup_steps=0, timed_steps=args.steps, real_tokens_per_step=lambda i: real_tokens[before + i],
                     samples_per_step=lambda i: samples[before + i], flops_per_token=fpt, name=arm)
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
    unwrapped = accelerator.unwrap_model(model)
    out["extra"] = dict(res.extra, warmup_steps=warmup, world_size=world, optimizer=optimizer_impl, speed=speed_line,
                        peak_host_rss_gib=round(_dist_max(peak_rss_gib, accelerator), 3), model=how,
                        params=count_params(unwrapped), precision=precision.name,
                        attn=getattr(unwrapped, "_orig_mod", unwrapped).config._attn_implementation,
                        grad_accum=cfg.grad_accum_steps, batch_size=cfg.data.batch_size, max_seq_len=cfg.data.max_seq_len,
                        users_pad=args.users_pad if arm in USERS_ARMS else None, memory_cap_gib=args.memory_cap_gib,
                        peak_reserved_gib=gpu_peak_reserved_gib())
    if fast_step is not None:
        # shapes first seen, compiled or captured while timed: each slowed the timed steps
        late = [b - a for a, b in zip(events_before, _fast_path_events(fast_step), strict=True)]
        out["extra"].update(fast_step.stats.as_dict(), shapes=len(fast_step.stats.shapes),
                            new_shapes_in_timed_steps=late[0], compilations_in_timed_steps=late[1],
                            captures_in_timed_steps=late[2])
    return out if accelerator.is_main_process else {}


def _print_profile(step, warmup: int) -> None:
    """A torch.profiler table of 3 steps after ``warmup``; the counts of these steps stay in the step's
    lists, and the timed steps come after them."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=12))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def fast_vs_eager(args, overrides) -> dict:
    """ours and ours-eager, dropout off, from the same initial weights over the same batches: each
    optimizer step's mean micro-batch loss, and the largest differences. On CPU ours is eager too
    unless the overrides force compilation (speed.compile=true speed.compile_backend=aot_eager)."""
    runs, lines = {}, {}
    if args.memory_cap_gib:
        cap_cuda_memory(args.memory_cap_gib)
    for arm in ("ours", "ours-eager"):
        cfg = arm_config(args, [*overrides, *NO_DROPOUT], arm)
        precision, accelerator = _setup(cfg)
        step, speed, _ = ours_step(cfg, precision, accelerator)
        for _ in range(args.compare_steps):
            step()
        runs[arm], lines[arm] = [float(x) for x in step.losses], speed.reason
        del step
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    fast, eager = runs["ours"], runs["ours-eager"]
    abs_diff = max(abs(a - b) for a, b in zip(fast, eager, strict=True))
    rel_diff = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(fast, eager, strict=True))
    print(f"fast-vs-eager: {args.compare_steps} steps, largest loss difference {abs_diff:.2e} ({rel_diff:.2%}); "
          f"last step fast {fast[-1]:.4f}, eager {eager[-1]:.4f}", flush=True)
    return {"steps": args.compare_steps, "fast": lines["ours"], "eager": lines["ours-eager"], "fast_losses": fast,
            "eager_losses": eager, "max_abs_loss_diff": abs_diff, "max_rel_loss_diff": rel_diff}


def _write_json(path, obj) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(obj, indent=1), encoding="utf-8")


def ratios(results: dict) -> dict:
    """ours against each other arm, by real tokens/s."""
    ours = results.get("ours")
    if not ours:
        return {}
    return {f"ours_vs_{name.replace('-', '_')}": ours["tokens_per_s"] / r["tokens_per_s"]
            for name, r in results.items() if name != "ours" and r.get("tokens_per_s")}


def run_bench(args, overrides) -> int:
    """`chat-pretrain bench` (options declared in cli.py): one arm in this process (--arm), or each arm
    of --arms in a child process, then one table and one JSON file."""
    from trainstack.bench import BenchResult, compare, device_banner

    earlier = {"users": f"users-{args.users_attn or 'sdpa'}", "both": f"users-{args.users_attn or 'sdpa'},ours"}
    if args.arm in earlier:  # the spellings of earlier releases: --arm users|both [--users-attn eager]
        args.arm, args.arms = (None, earlier["both"]) if args.arm == "both" else (earlier["users"], args.arms)
    arms = [args.arm] if args.arm else [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in (*ARMS, COMPARE)]
    if unknown:
        from trainstack.config import ConfigError

        raise ConfigError(f"bench --arms: unknown arm(s) {', '.join(unknown)}; choose from {', '.join((*ARMS, COMPARE))}")
    if args.memory_cap_gib is not None and not (args.memory_cap_gib > 0 and torch.cuda.is_available()):
        from trainstack.config import ConfigError

        raise ConfigError(f"bench --memory-cap-gib {args.memory_cap_gib}: caps CUDA memory, so it needs a CUDA GPU "
                          "and a size above 0 (drop it on a CPU)")
    for arm in arms:  # a bad profile or key: ConfigError, exit 2, before anything runs
        arm_config(args, overrides, arm)
    if args.arm:
        result = fast_vs_eager(args, overrides) if args.arm == COMPARE else run_arm(args.arm, args, arm_config(
            args, overrides, args.arm))
        if result:
            print(json.dumps(result))
            _write_json(args.json_out, result)
        return 0

    out_dir = Path(args.json_out).parent if args.json_out else Path(".")
    stem = Path(args.json_out).stem if args.json_out else "bench"
    results, comparison, errors = {}, None, {}
    summary = {"device": device_banner(), "results": [], "ratios": {}, "fast_vs_eager": None, "errors": errors}
    for arm in arms:
        target = out_dir / f"{stem}-{arm}.json"
        cmd = [sys.executable, "-m", "chat_pretrain", "bench", "--arm", arm, "--json-out", str(target),
               "--tokenizer", args.tokenizer, "--data", args.data, "--profile", args.profile,
               "--users-profile", args.users_profile, "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--max-warmup", str(args.max_warmup), "--compare-steps", str(args.compare_steps),
               "--users-pad", args.users_pad, *overrides]
        if args.memory_cap_gib:
            cmd += ["--memory-cap-gib", str(args.memory_cap_gib)]
        # One arm failing (out of memory, say) must not lose the others' figures.
        code = subprocess.run(cmd, env=dict(os.environ)).returncode
        if code != 0 or not target.is_file():
            errors[arm] = f"exit status {code}; its output is above"
            print(f"bench {arm}: failed (exit status {code})", flush=True)
            continue
        data = json.loads(target.read_text(encoding="utf-8"))
        if arm == COMPARE:
            comparison = summary["fast_vs_eager"] = data
        else:
            results[arm] = data
        summary.update(results=list(results.values()), ratios=ratios(results))
        _write_json(args.json_out, summary)
    print(device_banner())
    for name, r in results.items():
        print(f"{name}: {r['extra']['ms_per_step']:.1f} ms/step, attn {r['extra']['attn']}, peak host RSS "
              f"{r['extra']['peak_host_rss_gib']:.2f} GiB, {r['extra'].get('speed') or 'the users loop'}")
    if results:
        baseline = next((a for a in ("users-eager", "users-sdpa") if a in results), next(iter(results)))
        print(compare([BenchResult(**r) for r in results.values()], baseline=baseline))
    for name, value in summary["ratios"].items():
        print(f"{name}: {value:.2f}x")
    if comparison:
        print(f"fast-vs-eager: largest loss difference {comparison['max_abs_loss_diff']:.2e} over "
              f"{comparison['steps']} steps")
    return 1 if errors else 0
