"""esm2ae bench: HF Trainer + SDPA at padded batches (the users' way) vs our packed path, one GPU.

    PYTHONPATH=packages/core/src:packages/esm2ae/src python3 -m esm2ae bench --sizes esm2_t33_650M
    esm2ae bench --sizes esm2_t12_35M,esm2_t30_150M,esm2_t33_650M --out bench.json

Lengths (tokens, with <cls>/<eos>) are drawn from a lognormal with median 350 and sigma 0.7,
clipped to [16, 512]; residues are random. Real tokens exclude padding; MFU counts
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

from esm2ae.model import (
    CLS_ID,
    EOS_ID,
    ESM2_VOCAB,
    PackedEsm,
    count_params,
    esm2_config,
    pack_sequences,
)


def lognormal_lengths(n: int, seed: int = 0, median: float = 350, sigma: float = 0.7,
                      low: int = 16, high: int = 512) -> list[int]:
    rng = np.random.default_rng(seed)
    x = rng.lognormal(math.log(median), sigma, n)
    return np.clip(np.round(x), low, high).astype(int).tolist()


def random_sequences(lengths, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[CLS_ID] + [rng.randrange(4, 24) for _ in range(n - 2)] + [EOS_ID] for n in lengths]


def attended_length(lengths) -> float:
    """Token-weighted mean sequence length: what each token attends over, on average."""
    a = np.asarray(lengths, dtype=float)
    return float((a * a).sum() / a.sum())


def flops_per_token(config, lengths) -> float:
    from trainstack.metrics import transformer_flops_per_token

    d, L = config.hidden_size, config.num_hidden_layers
    n = L * (4 * d * d + 2 * d * config.intermediate_size) + d * d + d * config.vocab_size
    return transformer_flops_per_token(n, L, d, attended_length(lengths))


def mlm_mask(tokens: list[int], rng: random.Random, prob: float = 0.15):
    """15% of residues; of those 80% <mask>, 10% random residue, 10% unchanged."""
    from esm2ae.model import MASK_ID, RESIDUE_IDS

    inp, lab = list(tokens), [-100] * len(tokens)
    for i in range(1, len(tokens) - 1):
        if rng.random() < prob:
            lab[i] = tokens[i]
            r = rng.random()
            if r < 0.8:
                inp[i] = MASK_ID
            elif r < 0.9:
                inp[i] = rng.choice(RESIDUE_IDS[:20])
    return inp, lab


def greedy_pack(seqs, max_tokens: int) -> list[list[int]]:
    """Indices into micro-batches of at most max_tokens real tokens (in order, no sorting)."""
    out, cur, used = [], [], 0
    for i, s in enumerate(seqs):
        if used + len(s) > max_tokens and cur:
            out.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += len(s)
    if cur:
        out.append(cur)
    return out


def bench_ours(size: str, seqs, steps: int, warmup: int, max_tokens: int, attention: str = "auto",
               compile: bool = True, precision: str = "auto", checkpointing: bool = False):
    from trainstack.bench import time_steps
    from trainstack.optim import build_optimizer
    from trainstack.precision import apply_precision, resolve_precision
    from transformers import EsmForMaskedLM

    prec = resolve_precision(precision)
    apply_precision(prec)
    cfg = esm2_config(size)
    hf = EsmForMaskedLM(cfg).cuda()
    model = PackedEsm(hf, attention=attention, compile=compile).train()
    model.gradient_checkpointing = checkpointing
    opt = build_optimizer(model, "adamw", lr=4e-4, weight_decay=0.01, betas=(0.9, 0.98), eps=1e-8)
    rng = random.Random(0)
    masked = [mlm_mask(s, rng) for s in seqs]
    groups = greedy_pack(seqs, max_tokens)
    batches = []
    for g in groups[: warmup + steps]:
        b = pack_sequences([masked[i][0] for i in g], [masked[i][1] for i in g], total_len=max_tokens)
        batches.append(b)
    real = [b.real_tokens for b in batches]
    samples = [b.num_seqs for b in batches]
    batches = [b.to("cuda") for b in batches]
    it = iter(range(len(batches)))
    scaler = torch.amp.GradScaler("cuda", enabled=prec.use_grad_scaler)

    def step():
        b = batches[next(it)]
        with prec.autocast("cuda"):
            loss_sum, n, _ = model(b)
            loss = loss_sum / n.clamp(min=1)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    tokens_per_step = sum(real[warmup:]) / steps
    t0 = time.time()
    res = time_steps(step, warmup_steps=warmup, timed_steps=steps,
                     real_tokens_per_step=lambda i: real[warmup + i],
                     samples_per_step=lambda i: samples[warmup + i],
                     flops_per_token=flops_per_token(cfg, [len(s) for s in seqs]),
                     name=f"ours-{attention}{'-compiled' if compile else ''}")
    res.extra.update(micro_batch_tokens=max_tokens, padding_fraction=1 - tokens_per_step / max_tokens,
                     wall_incl_compile_s=time.time() - t0, precision=prec.name,
                     params=count_params(hf), backend=model.backend("cuda"))
    return res   # the model and optimizer are freed with this frame


def bench_hf_trainer(size: str, seqs, steps: int, warmup: int, batch_size: int = 20,
                     precision: str = "auto"):
    """The users' way: HF Trainer, SDPA, DataCollatorForLanguageModeling padding to the batch max."""
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
    data = [{"input_ids": s} for s in seqs]
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
        learning_rate=4e-4, weight_decay=0.01, adam_beta2=0.98, warmup_steps=2, bf16=prec.name == "bf16",
        fp16=prec.name == "fp16", logging_steps=10_000, save_strategy="no", report_to="none",
        dataloader_num_workers=0, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=collate, callbacks=[Clock()])
    trainer.train()
    seconds = marks["t1"] - marks["t0"]
    timed = seen[warmup: warmup + steps]
    real_tokens = sum(t for t, _ in timed)
    samples = sum(s for _, s in timed)
    fpt = flops_per_token(cfg, [len(s) for s in seqs])
    peak = peak_bf16_flops(detect_hardware().gpu)
    tps = real_tokens / seconds
    res = BenchResult(name="hf-trainer-sdpa-padded", steps=steps, seconds=seconds, real_tokens=real_tokens,
                      samples=samples, tokens_per_s=tps, samples_per_s=samples / seconds,
                      mfu=(tps * fpt / peak) if peak else None,
                      peak_memory_gib=torch.cuda.max_memory_allocated() / 2**30,
                      extra={"batch_size": batch_size, "precision": prec.name, "params": count_params(model)})
    del trainer, model
    torch.cuda.empty_cache()
    return res


def run_bench(sizes: list[str], steps: int = 20, warmup: int = 5, max_tokens: int = 16384,
              baseline_batch: int = 20, attention: str = "auto", compile: bool = True,
              skip_baseline: bool = False, out: str | None = None) -> list[dict]:
    from dataclasses import asdict

    from trainstack.bench import compare, device_banner

    if not torch.cuda.is_available():
        raise SystemExit("esm2ae bench needs a CUDA GPU (it compares GPU throughput)")
    print(device_banner(), flush=True)
    lengths = lognormal_lengths(40_000, seed=0)
    seqs = random_sequences(lengths, seed=0)
    records = []
    for size in sizes:
        results = []
        if not skip_baseline:
            results.append(bench_hf_trainer(size, seqs, steps, warmup, baseline_batch))
            print(json.dumps({"size": size, **asdict(results[-1])}), flush=True)
        results.append(bench_ours(size, seqs, steps, warmup, max_tokens, attention, compile))
        print(json.dumps({"size": size, **asdict(results[-1])}), flush=True)
        if not skip_baseline:
            print(f"## {size}\n" + compare(results, baseline="hf-trainer-sdpa-padded"), flush=True)
        records.extend({"size": size, **asdict(r)} for r in results)
        if out:
            with open(out, "w") as f:
                json.dump(records, f, indent=1)
    return records
