"""mt-nllb bench: the users' Seq2SeqTrainer recipe vs ours, same process, same GPU, same data.

    mt-nllb bench                                  # users' recipe, ours, rtx4080s-16g under 16 GB
    mt-nllb bench --only ours --timed-steps 20     # one side
    mt-nllb bench --model-config tiny --steps ...  # CPU smoke run (figures say they are CPU figures)
    mt-nllb bench --only fused-vs-chunked          # the LM head's loss: liger-kernel vs chunked vs unfused

Data: synthetic pairs whose source and target token lengths are lognormal (median 38, sigma 0.6,
clipped to [4, 256]), our stand-in for WMT19 zh-en; ids drawn uniformly from the vocabulary.
Model: the NLLB-600M architecture (or --model-config), random init, fp32 master weights.
Ours: each variant is a shipped profile's TrainConfig (VARIANTS), built and stepped by the functions
`mt-nllb train` calls (train.build_*; core's FitStep takes fit's optimizer step), so the figure is
what train runs: collation inside the timed steps, fused AdamW on CUDA, the profile's schedule.
Reported: real (non-pad, source + target) tokens/s, samples/s, MFU with encoder-decoder FLOPs
including the LM head (model.pair_train_flops), peak reserved memory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

USERS_ARGS = dict(  # the users' recipe, transformers 5 spelling (warmup_ratio -> warmup_steps < 1)
    per_device_train_batch_size=24, gradient_accumulation_steps=4, learning_rate=8e-5, warmup_steps=0.06,
    lr_scheduler_type="cosine", weight_decay=0.01, bf16=True, gradient_checkpointing=True,
    optim="adamw_torch_fused", label_smoothing_factor=0.1, num_train_epochs=2, dataloader_num_workers=8,
    dataloader_pin_memory=True, eval_steps=2000, save_steps=3000, save_total_limit=1,
    predict_with_generate=True, generation_num_beams=4, generation_max_length=256,
)


def synthetic_lengths(n: int, seed: int, median: float = 38.0, sigma: float = 0.6, lo: int = 4, hi: int = 256):
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(math.log(median), sigma, size=(n, 2))), lo, hi).astype(np.int64)


def synthetic_pairs(n: int, vocab: int, seed: int, fixed_length: int = 0):
    """TokenizedPairs with NLLB's layout ([lang] ... </s>); lengths include the two special tokens.
    ``fixed_length`` > 0: every pair at that many tokens a side (the worst case for memory)."""
    from .data import TokenizedPairs, _flatten

    lengths = np.full((n, 2), fixed_length, dtype=np.int64) if fixed_length else synthetic_lengths(n, seed)
    rng = np.random.default_rng(seed + 1)
    src = [[256047 % vocab, *rng.integers(4, vocab, size=int(s) - 2).tolist(), 2] for s in lengths[:, 0]]
    tgt = [[256048 % vocab, *rng.integers(4, vocab, size=int(t) - 2).tolist(), 2] for t in lengths[:, 1]]
    sf, so = _flatten(src)
    tf, to = _flatten(tgt)
    return TokenizedPairs(sf, so, tf, to, [""] * n, [""] * n)


def _gib(x):
    return None if x is None else round(x, 3)


def _peak_reserved_gib():
    import torch

    return torch.cuda.max_memory_reserved() / 2**30 if torch.cuda.is_available() else None


def _peak_allocated_gib():
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def _flops_per_real_token(config, tp, sample: int = 20000) -> float:
    """Training FLOPs per real (source + target) token, averaged over the first ``sample`` pairs."""
    from .model import pair_train_flops

    s_len, t_len = np.diff(tp.src_offsets)[:sample], np.diff(tp.tgt_offsets)[:sample]
    flops = sum(pair_train_flops(config, int(s), int(t)) for s, t in zip(s_len, t_len, strict=True))
    return float(flops / (s_len.sum() + t_len.sum()))


def bench_ours(name, cfg, tp, *, steps, warmup, memory_cap_gib=None, profile=False, tokenizer=None,
               losses_only=False):
    """`mt-nllb train`'s step for the TrainConfig ``cfg`` on the TokenizedPairs ``tp`` (token ids of
    ``tokenizer``, or of the architecture's own vocabulary when None, as the synthetic pairs are): the model,
    batches, optimizer, scheduler, loss and loop settings come from the same train.py builders, and
    core's FitStep takes the optimizer steps exactly as fit does (its fast path included). Timed
    with core's harness. ``losses_only``: run ``steps`` steps untimed and return their losses."""
    import torch
    from accelerate import PartialState
    from trainstack.bench import FitStep, time_steps
    from trainstack.optim import describe_optimizer
    from trainstack.precision import apply_precision, resolve_precision

    from . import train as T

    state = PartialState()
    device = state.device
    if memory_cap_gib and device.type == "cuda":
        from trainstack.memory import cap_cuda_memory

        cap_cuda_memory(memory_cap_gib)
    precision = resolve_precision(cfg.precision)
    apply_precision(precision)
    speed = T.resolve_train_speed(cfg, device, precision, world_size=state.num_processes)
    print(f"bench {name}: {speed.reason}; {T.describe_loss(cfg, speed, device)}", flush=True)
    model = T.build_training_model(cfg, tokenizer, device, speed, world_size=state.num_processes)
    batches = T.build_train_batches(cfg, tp, model.config, rank=state.process_index, world_size=state.num_processes,
                                    speed=speed)
    total_steps = T.total_optimizer_steps(cfg, batches)
    opt, sched = T.build_optimizer_and_scheduler(cfg, model, total_steps)
    padded_len = [0]

    def count_batch(batch):
        # The bench's tokens are source + target (train's log counts target tokens); counted on the
        # host copy before the loss moves it, so the count adds no device sync. Filler rows (the fast
        # path's full batches) have no labels and are no samples.
        padded_len[0] = max(padded_len[0], int(batch["input_ids"].shape[1]))
        real_rows = (batch["labels"] != -100).any(dim=1)
        return (int(batch["attention_mask"][real_rows].sum()) + int((batch["labels"] != -100).sum()),
                int(real_rows.sum()))

    step = FitStep(model=model, optimizer=opt, scheduler=sched, train_batches=batches,
                   loss_fn=T.make_loss_fn(cfg, speed), config=T.build_loop_config(cfg, total_steps),
                   precision=precision, count_batch=count_batch, speed=speed)
    if losses_only:
        for _ in range(steps):
            step()
        losses = [float(x) for x in step.losses]
        model = opt = step = None
        _release_gpu()
        return losses
    fpt = _flops_per_real_token(model.config, tp)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if profile:  # kernel time by category (matmul, attention, norms, ...), then the top kernels
        from trainstack.profiling import profile_steps

        for _ in range(warmup):
            step()
        print(profile_steps(step, steps=steps).format(top=40), flush=True)
        return None
    t0 = time.perf_counter()
    res = time_steps(_with_progress(step, name, warmup), warmup_steps=warmup, timed_steps=steps, real_tokens_per_step=lambda i: step.real_tokens_of(warmup + i),
                     samples_per_step=lambda i: step.samples[warmup + i], flops_per_token=fpt, name=name)
    res.extra.update(peak_reserved_gib=_gib(_peak_reserved_gib()), peak_allocated_gib=_gib(_peak_allocated_gib()),
                     max_padded_len=padded_len[0], wall_s=round(time.perf_counter() - t0, 1),
                     batch_size=cfg.speed.batch_size, accum=cfg.grad_accum_steps,
                     max_tokens=0 if cfg.speed.batch_size else cfg.speed.max_tokens_per_batch,
                     checkpointing=cfg.speed.gradient_checkpointing, compile_step=cfg.speed.compile,
                     compile_loss=cfg.speed.compile_loss, chunked_ce=cfg.speed.chunked_ce,
                     ce_chunk=cfg.speed.ce_chunk_tokens, optim=cfg.optim.name, optimizer=describe_optimizer(opt),
                     precision=precision.name, memory_cap_gib=memory_cap_gib, flops_per_real_token=fpt,
                     speed=speed.reason, loss=T.describe_loss(cfg, speed, device), **step.stats,
                     batch_host_ms_per_step=round(1000.0 * float(np.mean(step.batch_seconds[warmup:])), 3),
                     fast_path_events_in_timed_steps=step.events_in_timed_steps)
    model = opt = step = None  # free the GPU before the next variant
    if device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    return res


def _with_progress(step, name: str, warmup: int):
    """``step`` that prints each new shape, compilation or capture of the fast path with the time so
    far (a run cut short still says how far it got) and counts those that fall in the timed steps
    (``step.events_in_timed_steps``: each one's cost is in the figure)."""
    seen, start, calls = [()], time.perf_counter(), [0]
    step.events_in_timed_steps = 0

    def run():
        step()
        calls[0] += 1
        stats = step.train_step.stats if step.train_step is not None else None
        now = (len(stats.shapes), stats.compiled_graphs, stats.captured_graphs) if stats else ()
        if now != seen[0]:
            print(f"bench {name}: step {calls[0]}, {time.perf_counter() - start:.0f} s: shapes, compiled graphs, "
                  f"captured graphs {now}", flush=True)
            step.events_in_timed_steps += calls[0] > warmup
            seen[0] = now

    return run


def bench_users(config, tp, *, steps, warmup, workdir, seed=0, overrides=None):
    """The users' Seq2SeqTrainer recipe, run by trainer.train(); CUDA events (host timer on CPU) between
    the end of warm-up step `warmup` and of step `warmup + steps`."""
    import torch
    from trainstack.bench import BenchResult
    from trainstack.metrics import peak_bf16_flops
    from transformers import (
        DataCollatorForSeq2Seq,
        M2M100ForConditionalGeneration,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        TrainerCallback,
    )

    from .bench import _current_gpu_info
    from .model import build_sample_tokenizer

    args = dict(USERS_ARGS)
    args.update(overrides or {})
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        args.update(bf16=False, optim="adamw_torch", dataloader_num_workers=0, dataloader_pin_memory=False)
    torch.manual_seed(seed)
    config._attn_implementation = "sdpa"
    model = M2M100ForConditionalGeneration(config)
    # The collator only needs pad id 1 (NLLB's); a tiny tokenizer with NLLB's special ids provides it.
    tokenizer = build_sample_tokenizer(["a b c"], ["zho_Hans", "eng_Latn"])

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return len(tp)

        def __getitem__(self, i):
            return {"input_ids": tp.src(i).tolist(), "labels": tp.tgt(i).tolist()}

    marks = {}

    class Timer(TrainerCallback):
        def on_step_end(self, targs, state, control, **kw):
            if state.global_step in (warmup, warmup + steps):
                if on_gpu:
                    ev = torch.cuda.Event(enable_timing=True)
                    ev.record()
                    marks[state.global_step] = ev
                    if state.global_step == warmup:
                        torch.cuda.reset_peak_memory_stats()
                else:
                    marks[state.global_step] = time.perf_counter()

    targs = Seq2SeqTrainingArguments(output_dir=str(workdir), max_steps=warmup + steps, eval_strategy="no",
                                     save_strategy="no", report_to="none", logging_steps=10**6,
                                     disable_tqdm=True, seed=seed, **args)
    trainer = Seq2SeqTrainer(model=model, args=targs, train_dataset=Pairs(),
                             data_collator=_ShiftedLabelsCollator(DataCollatorForSeq2Seq(tokenizer, model=model,
                                                                                         label_pad_token_id=-100)),
                             callbacks=[Timer()])
    t0 = time.perf_counter()
    trainer.train()
    if on_gpu:
        marks[warmup + steps].synchronize()
        seconds = marks[warmup].elapsed_time(marks[warmup + steps]) / 1000.0
    else:
        seconds = marks[warmup + steps] - marks[warmup]
    per_step = args["per_device_train_batch_size"] * args["gradient_accumulation_steps"]
    samples = per_step * steps
    # Random sampling over the whole set: expected real tokens per pair is the set's mean.
    mean_tokens = float((np.diff(tp.src_offsets) + np.diff(tp.tgt_offsets)).mean())
    real_tokens = int(samples * mean_tokens)
    from .model import pair_train_flops

    s_len, t_len = np.diff(tp.src_offsets), np.diff(tp.tgt_offsets)
    fpt = float(sum(pair_train_flops(config, s, t) for s, t in zip(s_len[:5000], t_len[:5000], strict=True))
                / (s_len[:5000] + t_len[:5000]).sum())
    gpu = _current_gpu_info()
    peak = peak_bf16_flops(gpu) if gpu else None
    tps = real_tokens / seconds
    res = BenchResult(name="users-trainer", steps=steps, seconds=seconds, real_tokens=real_tokens, samples=samples,
                      tokens_per_s=tps, samples_per_s=samples / seconds, mfu=tps * fpt / peak if peak else None,
                      peak_memory_gib=(torch.cuda.max_memory_allocated() / 2**30) if on_gpu else None,
                      extra={"timer": "cuda_events" if on_gpu else "host", "peak_reserved_gib": _gib(_peak_reserved_gib()),
                             "wall_s": round(time.perf_counter() - t0, 1), "args": args,
                             "gradient_checkpointing_kwargs": str(targs.gradient_checkpointing_kwargs),
                             "flops_per_real_token": fpt, "tokens": "expected (set mean x samples)"})
    del trainer, model
    if on_gpu:
        torch.cuda.empty_cache()
    return res


class _ShiftedLabelsCollator:
    """DataCollatorForSeq2Seq plus decoder_input_ids. With label_smoothing_factor the Trainer pops
    `labels` before the forward, and M2M100 (unlike BART/Marian) has no
    prepare_decoder_input_ids_from_labels for the collator to call, so transformers 5 fails with
    "You cannot specify both decoder_input_ids and decoder_inputs_embeds". This is the one-line fix a
    user of the recipe needs; it changes no compute."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, features):
        from transformers.models.m2m_100.modeling_m2m_100 import shift_tokens_right

        batch = self.inner(features)
        batch["decoder_input_ids"] = shift_tokens_right(batch["labels"], 1, 2)
        return batch


def _current_gpu_info():
    import torch
    from trainstack.hardware import GPUInfo

    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    return GPUInfo(p.name, (p.major, p.minor), p.total_memory / 2**30)


@dataclass(frozen=True)
class Variant:
    """A bench arm of ours: a shipped profile's settings plus dotted overrides, loaded into the same
    TrainConfig `mt-nllb train --profile NAME KEY=VALUE ...` would run."""
    profile: str
    overrides: tuple[str, ...] = ()
    memory_cap_gib: float | None = None
    torch_profile: bool = False


STAGES = ("users-trainer", "fast-vs-eager", "fused-vs-chunked")
"""--only's names besides VARIANTS: the users' recipe and the two comparisons."""

NO_DROPOUT = ("model.dropout=0.0", "model.attention_dropout=0.0")
"""fast-vs-eager compares losses at equal weights and batches: dropout's random masks come from
different random-number offsets in a replayed graph, so it is off in both."""

# "ours" is the h100-80g profile as shipped (96 sentences x 1, CUDA graphs over length-bucketed batches,
# chunked CE in 4096-row chunks); the others change one setting. Effective batch 96 sentences everywhere.
VARIANTS = {
    "ours": Variant("h100-80g"),
    "ours-eager": Variant("h100-80g", ("speed.cuda_graphs=false", "speed.compile_loss=false",
                                       "speed.compile_layers=false")),
    "ours-eager-compile-loss": Variant("h100-80g", ("speed.cuda_graphs=false", "speed.compile_loss=true")),
    "ours-compile-loss": Variant("h100-80g", ("speed.compile_loss=true",)),
    "ours-compile-step": Variant("h100-80g", ("speed.compile=true",)),
    "ours-unchunked": Variant("h100-80g", ("speed.chunked_ce=false",)),
    "ours-pow2": Variant("h100-80g", ("speed.length_buckets=pow2",)),
    # Run 5's ladder, each arm the shipped profile with the later steps undone (BENCHMARKS.md run 5):
    # run 3's settings; + rows grouped by both sides; + layers compiled (4096-row chunks); the same
    # without graphs or with multiple:8 buckets. `ours` adds 8192-row chunks.
    "ours-run3": Variant("h100-80g", ("speed.group_by=longest", "speed.compile_layers=false",
                                      "speed.ce_chunk_tokens=4096")),
    "ours-each-side": Variant("h100-80g", ("speed.compile_layers=false", "speed.ce_chunk_tokens=4096")),
    "ours-compile-layers-chunk4096": Variant("h100-80g", ("speed.ce_chunk_tokens=4096",)),
    "ours-compile-layers-no-graphs": Variant("h100-80g", ("speed.cuda_graphs=false", "speed.ce_chunk_tokens=4096",
                                                         "speed.length_buckets=multiple:8")),
    "ours-multiple8": Variant("h100-80g", ("speed.ce_chunk_tokens=4096", "speed.length_buckets=multiple:8")),
    # Every size symbolic in the compiled kernels (the profile keeps the width and vocabulary constant).
    "ours-symbolic-widths": Variant("h100-80g", ("speed.symbolic_widths=true",)),
    # `ours` with one of its later steps undone: a graph per micro-batch (forward and backward, the
    # update as its own graph, gradients added into static buffers), or the embeddings' dense gradients.
    "ours-micro-graphs": Variant("h100-80g", ("speed.whole_step_graphs=false",)),
    "ours-dense-embedding-grads": Variant("h100-80g", ("speed.embedding_row_grads=false",)),
    "ours-chunk2048": Variant("h100-80g", ("speed.ce_chunk_tokens=2048",)),
    # Finer buckets (less padding, twice the shapes) and one CE chunk for nearly every batch.
    "ours-buckets8": Variant("h100-80g", ("speed.length_buckets=multiple:8",)),
    "ours-chunk16384": Variant("h100-80g", ("speed.ce_chunk_tokens=16384",)),
    # The chunk math by torch ops compiled (before speed.triton_ce), and 128-row head multiples.
    "ours-torch-chunk-math": Variant("h100-80g", ("speed.triton_ce=false",)),
    "ours-head-rows128": Variant("h100-80g", ("speed.head_row_multiple=128",)),
    # The head over every target position, padding masked (before speed.head_row_multiple).
    "ours-every-head-row": Variant("h100-80g", ("speed.head_row_multiple=0",)),
    # liger-kernel's fused linear CE (pip install 'mt-nllb[gpu]'), which turns CUDA graphs off; its fair
    # comparison is the same profile without graphs (ours-eager-compile-loss: that with the chunk math compiled).
    "ours-liger": Variant("h100-80g", ("speed.liger_ce=true",)),
    "ours-no-graphs": Variant("h100-80g", ("speed.cuda_graphs=false",)),
    "ours-nodropout": Variant("h100-80g", NO_DROPOUT),
    "ours-eager-nodropout": Variant("h100-80g", (*NO_DROPOUT, "speed.cuda_graphs=false", "speed.compile_loss=false",
                                                 "speed.compile_layers=false")),
    # Kernels one by one without graphs (the chunk math compiled as on the fast path).
    "ours-profile": Variant("h100-80g", ("speed.cuda_graphs=false", "speed.compile_loss=true"), torch_profile=True),
    # The shipped step itself, graphs on (the profiler saw a replayed graph's kernels on an H200: run 6).
    "ours-shipped-profile": Variant("h100-80g", torch_profile=True),
    # The shipped rtx4080s-16g profile under a 16 GiB cap; "-adamw" is the same with fp32 AdamW states,
    # and uncapped: the true peak with fp32 states, to check the memory estimate (and, minus the states'
    # difference, what 8-bit states imply) on a machine without bitsandbytes.
    "rtx4080s-16g": Variant("rtx4080s-16g", memory_cap_gib=16.0),
    "rtx4080s-16g-adamw": Variant("rtx4080s-16g", ("optim.name=adamw",), memory_cap_gib=16.0),
    "rtx4080s-16g-adamw-uncapped": Variant("rtx4080s-16g", ("optim.name=adamw",)),
    # Settings that ran out of memory under the 16 GiB cap (BENCHMARKS.md).
    "rtx4080s-16g-48x2": Variant("h100-80g", ("speed.batch_size=48", "grad_accum_steps=2",
                                              "speed.ce_chunk_tokens=1024"), memory_cap_gib=16.0),
    "rtx4080s-16g-24x4-nockpt": Variant("h100-80g", ("speed.batch_size=24", "grad_accum_steps=4",
                                                     "speed.ce_chunk_tokens=512"), memory_cap_gib=16.0),
    "rtx4080s-16g-48x2-ckpt": Variant("h100-80g", ("speed.batch_size=48", "grad_accum_steps=2", "speed.ce_chunk_tokens=1024",
                                                   "speed.gradient_checkpointing=true"), memory_cap_gib=16.0),
}


def variant_config(name: str, arch: str):
    """The TrainConfig of bench variant ``name`` on the shipped architecture ``arch`` (random init)."""
    from trainstack.config import load_config
    from trainstack.hardware import load_profiles, resolve_profile

    from .config import TrainConfig
    from .profiles import profile_dir

    v = VARIANTS[name]
    settings = resolve_profile(v.profile, load_profiles(profile_dir())).settings
    cfg = load_config(TrainConfig, settings, [*v.overrides, f"model.name_or_path={arch}"])
    if not cfg.speed.batch_size:
        raise ValueError(f"bench variant {name} uses a token budget; the bench needs a fixed speed.batch_size")
    return cfg


def eager_twin(cfg):
    """``cfg`` with the fast path off (no graphs, nothing compiled, the chunk math by torch ops), the
    same batches: the reference that a fast arm's losses are compared with."""
    import copy

    twin = copy.deepcopy(cfg)
    twin.speed.cuda_graphs = twin.speed.compile = twin.speed.compile_loss = twin.speed.compile_layers = False
    twin.speed.triton_ce = False  # the chunk math by torch ops: the kernel is checked, not trusted
    return twin


def fast_vs_eager(arch: str, tp, steps: int, fast_arm: str = "ours-nodropout") -> dict:
    """The shipped step (fast path) and the eager step from the same initial weights over the same
    batches (the fast path pads them to buckets and fills short ones: the math is unchanged), dropout
    off in both: each optimizer step's loss, and the largest difference. On CPU both run eagerly.
    ``fast_arm``: a variant with dropout off."""
    fast_cfg = variant_config(fast_arm, arch)
    eager_cfg = eager_twin(fast_cfg)
    fast = bench_ours(fast_arm, fast_cfg, tp, steps=steps, warmup=0, losses_only=True)
    eager = bench_ours(f"{fast_arm} (eager)", eager_cfg, tp, steps=steps, warmup=0, losses_only=True)
    diff = max(abs(a - b) for a, b in zip(fast, eager, strict=True))
    print(f"fast-vs-eager: {steps} steps, largest loss difference {diff:.2e} (fast {fast[-1]:.4f}, eager "
          f"{eager[-1]:.4f} at the last step)", flush=True)
    return {"steps": steps, "fast_arm": fast_arm, "fast_losses": fast, "eager_losses": eager, "max_abs_loss_diff": diff}


def fused_vs_chunked(arch: str, head_batches: int, seed: int = 0) -> dict:
    """The LM head's loss and gradients by liger-kernel, by our chunked path and unfused (head_compare), on
    ``head_batches`` batches at the architecture's width and vocabulary, with the h100-80g profile's
    rows, chunk rows, label smoothing and precision. liger runs on CUDA with liger-kernel installed;
    elsewhere the chunked path is compared with the reference alone (float64 on CPU) and "liger" says why."""
    import torch
    from trainstack.precision import resolve_precision

    from . import fused_ce
    from . import head_compare as H
    from . import loss as loss_mod
    from . import train as T
    from .model import load_arch_config

    cfg, config = variant_config("ours", arch), load_arch_config(arch)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    liger = device.type == "cuda" and fused_ce.HAS_LIGER_KERNEL
    precision = resolve_precision(cfg.precision)
    lengths = [synthetic_lengths(cfg.speed.batch_size, seed=seed + 1 + i)[:, 1] for i in range(head_batches)]
    weight, batches = H.head_batches(lengths, config.d_model, config.vocab_size, seed, device)
    # The chunk math eager, as on the path that liger's loss takes (no graphs, real rows only), and on
    # CUDA by the Triton kernel too (the paths set it: an earlier stage may have left it compiled).
    triton_kernel = T.triton_ce_on(cfg, device)
    paths = H.head_paths(cfg.label_smoothing, cfg.speed.ce_chunk_tokens, liger,
                         torch.float32 if device.type == "cuda" else torch.float64, triton_kernel=triton_kernel)
    result = H.compare_heads(weight, batches, paths, autocast=lambda: precision.autocast(device.type), repeats=3)
    loss_mod.configure(compile_loss=False)
    result.update(arch=arch, width=config.d_model, vocab=config.vocab_size, device=device.type,
                  precision=precision.name, chunk_rows=cfg.speed.ce_chunk_tokens, label_smoothing=cfg.label_smoothing,
                  liger="ran" if liger else "skipped: needs a CUDA GPU and liger-kernel")
    print(f"fused-vs-chunked: {len(batches)} batches of {result['shapes'][0][0]} rows ({', '.join(map(str, result['rows']))} "
          f"real), width {config.d_model}, vocabulary {config.vocab_size}, {precision.name}; liger {result['liger']}",
          flush=True)
    for pair, d in result["differences"].items():
        print(f"fused-vs-chunked: {pair}: loss {d['loss_abs']:.2e} (rel {d['loss_rel']:.2e}), grad hidden max "
              f"{d['grad_hidden_max_abs']:.2e} (rel {d['grad_hidden_max_rel']:.2e}), grad weight max "
              f"{d['grad_weight_max_abs']:.2e} (rel {d['grad_weight_max_rel']:.2e})", flush=True)
    for name, t in result["per_path"].items():
        peak = "" if t["peak_gib"] is None else f", peak {t['peak_gib']:.2f} GiB above the inputs"
        print(f"fused-vs-chunked: {name}: {t['mean_ms']:.1f} ms forward + backward{peak}", flush=True)
    for name, why in result["skipped"].items():
        print(f"fused-vs-chunked: {name}: skipped: {why}", flush=True)
    return result


def fit16_verdict(bench: dict, arch: str, length: int) -> dict:
    """scripts/gpu_fit16.sh's verdict from a bench results JSON: per rtx4080s-16g variant the measured
    peak reserved / allocated memory next to the estimate (mt_nllb.memory) and fits_15gib. For the
    uncapped fp32-states run also the peak that 8-bit states imply: measured minus the states' size
    difference (exact, from parameter counts), labelled "implied": derived, not run."""
    from .memory import FIT_LIMIT_GIB, estimate
    from .model import load_arch_config

    config = load_arch_config(arch)
    measured = {r["name"]: r for r in bench.get("results", [])}
    errors = bench.get("errors", {})
    verdict = {"limit_gib": FIT_LIMIT_GIB, "arch": arch, "tokens_per_side": length, "variants": {}}
    for name in [n for n in VARIANTS if n.startswith("rtx4080s-16g")]:
        if name not in measured and name not in errors:
            continue
        cap, cfg = VARIANTS[name].memory_cap_gib, variant_config(name, arch)
        plan = estimate(config, batch=cfg.speed.batch_size, src_len=length, tgt_len=length, optim=cfg.optim.name,
                        checkpointing=cfg.speed.gradient_checkpointing, chunked_ce=cfg.speed.chunked_ce,
                        ce_chunk_rows=cfg.speed.ce_chunk_tokens)
        row = {"memory_cap_gib": cap, "estimate_allocated_gib": round(plan.allocated_gib, 2),
               "estimate_reserved_gib": round(plan.reserved_gib, 2)}
        if name in measured:
            extra = measured[name]["extra"]
            row.update(peak_reserved_gib=extra.get("peak_reserved_gib"), peak_allocated_gib=extra.get("peak_allocated_gib"),
                       steps=measured[name]["steps"], samples_per_s=round(measured[name]["samples_per_s"], 1))
            if row["peak_reserved_gib"] is not None:
                row["fits_15gib"] = row["peak_reserved_gib"] <= FIT_LIMIT_GIB
                if cfg.optim.name == "adamw" and cap is None:
                    states = {o: estimate(config, batch=1, src_len=8, tgt_len=8, optim=o).parts[f"optimizer states ({o})"]
                              for o in ("adamw", "adamw8bit")}
                    implied = row["peak_reserved_gib"] - (states["adamw"] - states["adamw8bit"]) / 2**30
                    row["implied_adamw8bit_reserved_gib"] = round(implied, 2)
                    row["implied_adamw8bit_fits_15gib"] = implied <= FIT_LIMIT_GIB
        else:
            row["error"] = errors[name]
            row["fits_15gib"] = False if "out of memory" in row["error"].lower() else None
        verdict["variants"][name] = row
    return verdict


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mt-nllb bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-config", default="nllb-600m", help="shipped architecture: nllb-600m | tiny")
    p.add_argument("--only", default="users-trainer,ours,rtx4080s-16g",
                   help=f"comma list of: {', '.join(STAGES)}, {', '.join(VARIANTS)}")
    p.add_argument("--compare-steps", type=int, default=20, help="optimizer steps of the fast-vs-eager stage")
    p.add_argument("--compare-fast-arm", default="ours-nodropout",
                   help="the fast side of fast-vs-eager (a variant with dropout off)")
    p.add_argument("--head-batches", type=int, default=3, help="batches of the fused-vs-chunked stage")
    p.add_argument("--pairs", type=int, default=20000)
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--timed-steps", type=int, default=10)
    p.add_argument("--users-timed-steps", type=int, default=4)
    p.add_argument("--users-warmup-steps", type=int, default=0,
                   help="warm-up steps of the users' arm (default: --warmup-steps); ours warms up longer on the "
                        "fast path, where each new padded shape is captured once")
    p.add_argument("--fixed-length", type=int, default=0,
                   help="every pair at this many tokens a side (memory worst case) instead of the lognormal")
    p.add_argument("--out", default="", help="write results JSON here")
    p.add_argument("--workdir", default="/tmp/mt-nllb-bench")
    args = p.parse_args(argv)

    from trainstack.bench import compare, device_banner

    from .model import load_arch_config

    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in STAGES and n not in VARIANTS]
    if unknown:
        p.error(f"unknown bench variant(s) {unknown}; choose from {', '.join(STAGES)}, {', '.join(VARIANTS)}")
    print(device_banner(), flush=True)
    config = load_arch_config(args.model_config)
    tp = synthetic_pairs(args.pairs, config.vocab_size, seed=0, fixed_length=args.fixed_length)
    print(f"synthetic pairs: {len(tp)}, mean real tokens/pair {np.diff(tp.src_offsets).mean() + np.diff(tp.tgt_offsets).mean():.1f}",
          flush=True)
    results, errors, comparisons = [], {}, {"fast_vs_eager": None, "fused_vs_chunked": None}
    for name in names:
        _release_gpu()  # a failed variant's blocks must not count in the next one's peak reserved
        t0 = time.perf_counter()
        try:
            if name in ("fast-vs-eager", "fused-vs-chunked"):
                comparisons[name.replace("-", "_")] = (
                    fast_vs_eager(args.model_config, tp, args.compare_steps, args.compare_fast_arm)
                    if name == "fast-vs-eager" else fused_vs_chunked(args.model_config, args.head_batches))
                if args.out:
                    _write(args.out, results, errors, comparisons)
                continue
            if name == "users-trainer":
                res = bench_users(load_arch_config(args.model_config), tp, steps=args.users_timed_steps,
                                  warmup=args.users_warmup_steps or args.warmup_steps,
                                  workdir=Path(args.workdir) / "users")
            else:
                v = VARIANTS[name]
                res = bench_ours(name, variant_config(name, args.model_config), tp, steps=args.timed_steps,
                                 warmup=args.warmup_steps, memory_cap_gib=v.memory_cap_gib, profile=v.torch_profile)
            if res is None:  # a profile run
                continue
            results.append(res)
            print(f"bench {name}: {res.samples_per_s:,.1f} samples/s, {res.tokens_per_s:,.0f} tokens/s, "
                  f"mfu {res.mfu if res.mfu is None else round(res.mfu, 4)}, peak reserved "
                  f"{res.extra.get('peak_reserved_gib')} GiB{_host_time(res.extra)} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
        except Exception as e:  # one failed variant (OOM under the 16 GB cap) must not lose the others
            errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            print(f"bench {name}: failed: {errors[name]}", flush=True)
            import torch

            if torch.cuda.is_available():
                torch.cuda.set_per_process_memory_fraction(1.0)
                torch.cuda.empty_cache()
        if args.out:
            _write(args.out, results, errors, comparisons)
    if results:
        base = "users-trainer" if any(r.name == "users-trainer" for r in results) else results[0].name
        print(compare(results, baseline=base))
    return 0 if not errors else 1


def _host_time(extra: dict) -> str:
    """', X ms/step (host Y, of which batches Z)' for an arm of ours: whether the host sets the pace."""
    if "host_ms_per_step" not in extra:
        return ""
    return (f", {extra['ms_per_step']:.2f} ms/step (host {extra['host_ms_per_step']:.2f}, of which batches "
            f"{extra.get('batch_host_ms_per_step')})")


def _release_gpu():
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


def _write(path, results, errors, comparisons):
    """``comparisons``: the fast_vs_eager and fused_vs_chunked stages' results (None where not run)."""
    from dataclasses import asdict

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"results": [asdict(r) for r in results], "errors": errors, **comparisons,
                   "env": {k: os.environ.get(k) for k in ("PYTORCH_CUDA_ALLOC_CONF",)}}, f, indent=1, default=str)
