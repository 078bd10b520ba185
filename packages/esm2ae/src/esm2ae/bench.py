"""esm2ae bench: HF Trainer + SDPA at padded batches (the users' way) vs our packed path, one GPU.

    PYTHONPATH=packages/core/src:packages/esm2ae/src python3 -m esm2ae bench --sizes esm2_t33_650M
    esm2ae bench --sizes esm2_t12_35M,esm2_t30_150M,esm2_t33_650M --out bench.json
    esm2ae bench --sizes esm2_t33_650M --skip-baseline --max-tokens 32768     # a larger micro-batch
    esm2ae bench --sizes esm2_t33_650M --skip-baseline --attention varlen     # torch's varlen kernel
    esm2ae bench --sizes esm2_t33_650M --skip-baseline --profile              # + kernel time by category
    esm2ae bench --sizes esm2_t33_650M --accum 8    # 8 micro-batches per optimizer step, both arms

Each "ours" result carries ``first_step_seconds`` (from the start of the arm, model building,
compilation and the first step included) and whether the compile cache was cold or warm.
``--profile`` adds the "ours-profile" arm: the same step, warmed up, then 3 steps under
torch.profiler, printed as kernel time per category (matmul, attention forward/backward, norms,
elementwise, optimizer, ...) and the top kernels (trainstack.profiling); the table goes into --out too.

``--compare-steps N`` adds "fast-vs-eager" (not timed): ours and the eager path (SDPA, nothing compiled) from
the same weights over the same batches for N optimizer steps, and the largest loss difference.

``--accum N`` gives both arms N micro-batches per optimizer step (HF Trainer's
gradient_accumulation_steps; our tokens_per_step = N x --max-tokens), as training does: the paper's ~2M
tokens per step are many micro-batches (the h100-80g profile: 64 of 32,768 tokens; the users' 3080
recipe: 195 of 20 sequences), so the optimizer's share of a step is small there; at --accum 1 both arms
pay one optimizer step per micro-batch. Steps and warm-up steps count optimizer steps.

Lengths (tokens, with <cls>/<eos>) are drawn from a lognormal with median 350 and sigma 0.7,
clipped to [16, 512]; residues are random. Ours is `esm2ae train` on those proteins (bench_config:
the paper's defaults, random init, --accum micro-batches of --max-tokens per optimizer step), built by
train.py's functions and stepped by core's FitStep, so masking and packing run inside the timed steps
as they do in training. Real tokens exclude padding; MFU counts
6N + attention FLOPs per real token (N = non-embedding weights plus the LM head).
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import time

import numpy as np
import torch

from esm2ae.model import ESM2_VOCAB, count_params, esm2_config


def lognormal_lengths(n: int, seed: int = 0, median: float = 350, sigma: float = 0.7,
                      low: int = 16, high: int = 512) -> list[int]:
    rng = np.random.default_rng(seed)
    x = rng.lognormal(math.log(median), sigma, n)
    return np.clip(np.round(x), low, high).astype(int).tolist()


def random_proteins(lengths, seed: int = 0) -> list[str]:
    """Random standard-residue strings, ``n - 2`` residues for a length of ``n`` tokens (with <cls>/<eos>)."""
    rng = random.Random(seed)
    return ["".join(ESM2_VOCAB[rng.randrange(4, 24)] for _ in range(n - 2)) for n in lengths]


def random_sequences(lengths, seed: int = 0) -> list[list[int]]:
    """The token ids of random_proteins (the same draws), <cls> and <eos> included."""
    from esm2ae.data import encode

    return [encode(p) for p in random_proteins(lengths, seed)]


def attended_length(lengths) -> float:
    """Token-weighted mean sequence length: what each token attends over, on average."""
    a = np.asarray(lengths, dtype=float)
    return float((a * a).sum() / a.sum())


def flops_per_token(config, lengths) -> float:
    from trainstack.metrics import transformer_flops_per_token

    d, L = config.hidden_size, config.num_hidden_layers
    n = L * (4 * d * d + 2 * d * config.intermediate_size) + d * d + d * config.vocab_size
    return transformer_flops_per_token(n, L, d, attended_length(lengths))


def bench_config(size: str, max_tokens: int = 16384, attention: str = "auto", compile: bool = True,
                 precision: str = "auto", checkpointing: bool = False, overrides=(), accum: int = 1):
    """The esm2ae train config the "ours" arm runs: the paper's defaults (Config), ESM-2 ``size`` from
    random init, MLM, ``accum`` packed micro-batches of ``max_tokens`` per optimizer step (the timed unit),
    no checkpoints. ``overrides``: more dotted keys, as on the `esm2ae train` command line."""
    from trainstack.config import load_config

    from esm2ae.config import Config

    return load_config(Config, {}, [f"model.name={size}", "model.pretrained=false", "task=mlm",
                                    f"batch.max_tokens_per_batch={max_tokens}", f"batch.tokens_per_step={max_tokens * accum}",
                                    f"model.attention={attention}", f"model.compile={str(compile).lower()}",
                                    f"precision={precision}", f"model.gradient_checkpointing={str(checkpointing).lower()}",
                                    "save_checkpoints=false", *overrides])


def _ours_step(cfg, proteins: list[str]):
    """(FitStep, model, optimizer, precision, device, accumulation) of `esm2ae train` for ``cfg``, built by
    train.py's builders; the FitStep's clock (time to the first step) starts before the model is built."""
    from trainstack.bench import FitStep
    from trainstack.hardware import detect_hardware
    from trainstack.precision import apply_precision, resolve_precision

    from esm2ae import train as T

    if cfg.deepspeed.enabled:
        raise ValueError("esm2ae bench times fit's step on one device without DeepSpeed: set deepspeed.enabled=false")
    clock_start = time.perf_counter()
    device = T._device(cfg, 0)
    prec = resolve_precision(cfg.precision, detect_hardware() if device.type == "cuda" else None)
    apply_precision(prec)
    model, trainable, _ = T.build_training_model(cfg, device)
    max_steps, accum = T.schedule_steps(cfg)
    opt, sched = T.build_optimizer_and_scheduler(cfg, trainable, max_steps)
    batches = T.build_train_batches(cfg, proteins, device)
    step = FitStep(model=model, optimizer=opt, scheduler=sched, train_batches=batches,
                   loss_fn=T.make_loss_fn(cfg, device), config=T.build_loop_config(cfg, max_steps, accum),
                   precision=prec, clock_start=clock_start)
    return step, model, opt, prec, device, accum


def bench_ours(cfg, proteins: list[str], steps: int, warmup: int):
    """`esm2ae train`'s step for ``cfg`` on the residue strings ``proteins``: model, batches (cropped,
    masked, packed each step as in training), optimizer, scheduler, loss and loop settings come from
    train.py's builders, and core's FitStep takes fit's optimizer step. DeepSpeed runs are not benched."""
    from trainstack.bench import time_steps
    from trainstack.optim import describe_optimizer

    t0 = time.time()
    step, model, opt, prec, device, accum = _ours_step(cfg, proteins)
    res = time_steps(step, warmup_steps=warmup, timed_steps=steps,
                     real_tokens_per_step=lambda i: step.real_tokens_of(warmup + i),
                     samples_per_step=lambda i: step.samples[warmup + i],
                     flops_per_token=flops_per_token(model.backbone.config, [len(p) + 2 for p in proteins]),
                     name=f"ours-{cfg.model.attention}{'-compiled' if cfg.model.compile else ''}")
    tokens_per_micro_batch = res.real_tokens / (steps * accum)
    micro_batch_tokens = cfg.batch.max_tokens_per_batch
    res.extra.update(micro_batch_tokens=micro_batch_tokens, grad_accum=accum,
                     padding_fraction=1 - tokens_per_micro_batch / micro_batch_tokens,
                     wall_incl_compile_s=time.time() - t0, precision=prec.name,
                     params=count_params(model.backbone.hf), backend=model.backbone.backend(device.type),
                     compiled=model.backbone.compile, optimizer=describe_optimizer(opt), **step.stats)
    return res   # the model and optimizer are freed with this frame


def profile_ours(cfg, proteins: list[str], warmup: int, steps: int = 3):
    """The "ours-profile" arm: ``bench_ours``'s step, ``warmup`` steps, then ``steps`` under torch.profiler;
    a trainstack.profiling.KernelProfile (kernel time by category, the top kernels)."""
    from trainstack.profiling import profile_steps

    step, *_ = _ours_step(cfg, proteins)
    for _ in range(warmup):
        step()
    return profile_steps(step, steps=steps)


# The eager reference attends through SDPA with a dense (tokens x tokens) document mask: at 65,536-token
# micro-batches 650M ran out of an H200's memory there; the fast path's arithmetic is the same at either length.
COMPARE_MAX_TOKENS = 32768


def fast_vs_eager(cfg, proteins: list[str], steps: int = 10) -> dict:
    """Learning stays correct on the fast path: ``cfg``'s step (the "ours" arm) and the eager path
    (SDPA with a dense document mask, nothing compiled) from the same initial weights over the same
    batches, ``steps`` optimizer steps each; every step's mean micro-batch loss and the largest differences."""
    from dataclasses import replace

    # the reference is the eager path with HF's numerics: a bf16 residual stream on the fast path is
    # part of what is compared
    eager_cfg = replace(cfg, model=replace(cfg.model, attention="sdpa", compile=False, residual_dtype="fp32"))
    runs, backends = {}, {}
    for name, arm_cfg in (("fast", cfg), ("eager", eager_cfg)):
        step, model, _, _, device, _ = _ours_step(arm_cfg, proteins)
        for _ in range(steps):
            step()
        runs[name] = [float(x) for x in step.losses]
        backends[name] = f"{model.backbone.backend(device.type)}{', compiled' if model.backbone.compile else ''}"
        del step, model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    fast, eager = runs["fast"], runs["eager"]
    abs_diff = max(abs(a - b) for a, b in zip(fast, eager, strict=True))
    rel_diff = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(fast, eager, strict=True))
    return {"name": "fast-vs-eager", "steps": steps, "fast": backends["fast"], "eager": backends["eager"],
            "micro_batch_tokens": cfg.batch.max_tokens_per_batch, "fast_losses": fast, "eager_losses": eager,
            "max_abs_loss_diff": abs_diff, "max_rel_loss_diff": rel_diff}


def bench_hf_trainer(size: str, seqs, steps: int, warmup: int, batch_size: int = 20,
                     precision: str = "auto", accum: int = 1):
    """The users' way: HF Trainer, SDPA, DataCollatorForLanguageModeling padding to the batch max,
    ``accum`` batches per optimizer step."""
    from trainstack.bench import BenchResult
    from trainstack.hardware import detect_hardware
    from trainstack.metrics import peak_bf16_flops
    from trainstack.precision import resolve_precision
    from transformers import (
        DataCollatorForLanguageModeling,
        EsmForMaskedLM,
        EsmTokenizer,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    prec = resolve_precision(precision)
    tmp = tempfile.mkdtemp()
    with open(f"{tmp}/vocab.txt", "w") as f:
        f.write("\n".join(ESM2_VOCAB) + "\n")
    tok = EsmTokenizer(f"{tmp}/vocab.txt")
    cfg = esm2_config(size)
    cfg._attn_implementation = "sdpa"
    model = EsmForMaskedLM(cfg)
    data = [{"input_ids": s} for s in seqs]  # token ids
    base = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
    seen: list[tuple[int, int]] = []

    def collate(rows):
        seen.append((sum(len(r["input_ids"]) for r in rows), len(rows)))
        return base(rows)

    marks: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == warmup:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                marks["t0"] = time.perf_counter()
            elif state.global_step == warmup + steps:
                torch.cuda.synchronize()
                marks["t1"] = time.perf_counter()

    args = TrainingArguments(
        output_dir=f"{tmp}/out", per_device_train_batch_size=batch_size, max_steps=warmup + steps,
        gradient_accumulation_steps=accum,
        learning_rate=4e-4, weight_decay=0.01, adam_beta2=0.98, warmup_steps=2, bf16=prec.name == "bf16",
        fp16=prec.name == "fp16", logging_steps=10_000, save_strategy="no", report_to="none",
        dataloader_num_workers=0, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collate, callbacks=[Clock()])
    trainer.train()
    seconds = marks["t1"] - marks["t0"]
    timed = seen[warmup * accum: (warmup + steps) * accum]   # the timed optimizer steps' batches, in order
    real_tokens = sum(t for t, _ in timed)
    samples = sum(s for _, s in timed)
    fpt = flops_per_token(cfg, [len(s) for s in seqs])
    peak = peak_bf16_flops(detect_hardware().gpu)
    tps = real_tokens / seconds
    res = BenchResult(name="hf-trainer-sdpa-padded", steps=steps, seconds=seconds, real_tokens=real_tokens,
                      samples=samples, tokens_per_s=tps, samples_per_s=samples / seconds,
                      mfu=(tps * fpt / peak) if peak else None,
                      peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30,
                      extra={"batch_size": batch_size, "grad_accum": accum, "precision": prec.name,
                             "params": count_params(model)})
    del trainer, model
    torch.cuda.empty_cache()
    return res


def run_bench(sizes: list[str], steps: int = 20, warmup: int = 5, max_tokens: int = 16384,
              baseline_batch: int = 20, attention: str = "auto", compile: bool = True,
              skip_baseline: bool = False, out: str | None = None, profile: bool = False,
              accum: int = 1, compare_steps: int = 0, overrides=()) -> list[dict]:
    from dataclasses import asdict

    from trainstack.bench import compare, device_banner
    from trainstack.config import format_config

    from esm2ae.data import encode

    bench_config(sizes[0], max_tokens, attention, compile, accum=accum, overrides=overrides)  # a bad key: one line now
    if not torch.cuda.is_available():
        raise SystemExit("esm2ae bench needs a CUDA GPU (it compares GPU throughput)")
    print(device_banner(), flush=True)
    proteins = random_proteins(lognormal_lengths(40_000, seed=0), seed=0)
    seqs = [encode(p) for p in proteins]
    records = []
    for size in sizes:
        results = []
        if not skip_baseline:
            results.append(bench_hf_trainer(size, seqs, steps, warmup, baseline_batch, accum=accum))
            print(json.dumps({"size": size, **asdict(results[-1])}), flush=True)
        cfg = bench_config(size, max_tokens, attention, compile, accum=accum, overrides=overrides)
        print(format_config(cfg), flush=True)
        results.append(bench_ours(cfg, proteins, steps, warmup))
        print(json.dumps({"size": size, **asdict(results[-1])}), flush=True)
        extra = results[-1].extra
        print(f"{size}: first optimizer step after {extra['first_step_seconds']:.1f} s (model build and "
              f"compilation included; compile cache {extra['compile_cache']})", flush=True)
        if not skip_baseline:
            print(f"## {size}\n" + compare(results, baseline="hf-trainer-sdpa-padded"), flush=True)
        records.extend({"size": size, **asdict(r)} for r in results)
        if compare_steps:
            # at --accum 1: the comparison is about the step's arithmetic, not the accumulation; and at most
            # COMPARE_MAX_TOKENS per micro-batch: the eager reference's dense mask grows with the square
            comparison = fast_vs_eager(bench_config(size, min(max_tokens, COMPARE_MAX_TOKENS), attention, compile,
                                                    overrides=overrides), proteins, compare_steps)
            print(f"{size} fast-vs-eager ({comparison['fast']} vs {comparison['eager']}): {compare_steps} steps, largest "
                  f"loss difference {comparison['max_abs_loss_diff']:.2e} ({comparison['max_rel_loss_diff']:.2%})",
                  flush=True)
            records.append({"size": size, **comparison})
        if profile:
            table = profile_ours(cfg, proteins, warmup)
            print(f"## {size} ours-profile\n{table.format()}", flush=True)
            records.append({"size": size, "name": "ours-profile", "micro_batch_tokens": max_tokens,
                            "profile": table.as_dict()})
        if out:
            with open(out, "w") as f:
                json.dump(records, f, indent=1)
    return records
