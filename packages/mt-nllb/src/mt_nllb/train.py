"""mt-nllb train: the whole fine-tuning job, top to bottom.

One GPU (16 GB):  mt-nllb train --profile rtx4080s-16g data.train=[wmt19,opus100] data.caps=[5000000,500000] data.test=wmt19
                  (8-bit AdamW states: pip install 'mt-nllb[bnb]'; memory plan: mt-nllb profiles --memory)
One H100:         mt-nllb train --profile h100-80g data.train=[pairs.tsv] data.test=test.tsv
N GPUs:           accelerate launch --num_processes N -m mt_nllb train --profile h100-80g ...
CPU (smoke):      mt-nllb train --profile cpu-debug --run-dir runs/debug
Resume:           the same command plus --resume (latest checkpoint) or --resume PATH

setup: config -> precision -> fast path (core's speed: CUDA graphs over length-bucketed, row-filled
       batches; the line "speed: ..." says what runs) -> data (cached by fingerprint) -> model, moved
       to its device -> batches -> optimizer (fused on CUDA; the line "optimizer: ..." says which) /
       scheduler (the build_* functions below; `mt-nllb bench` times the same ones)
train: core's loop (trainstack.loop.fit): our loss_fn, evaluation by BLEU at the eval cadence
end:   best checkpoint by BLEU -> test file -> predictions + metrics
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .config import TrainConfig


@dataclass
class DataPlan:
    """What ``read_data`` validated (nothing written yet): the tokenizer, and either a cache hit or the
    split pairs to tokenize."""
    tokenizer: object
    cache: Path
    fingerprint: str
    sample_tokenizer: bool
    cached_report: dict | None = None
    train_pairs: list | None = None
    val_pairs: list | None = None
    reports: list | None = None


def read_data(cfg: TrainConfig, run_dir: Path) -> DataPlan:
    """Read and validate the data and load the tokenizer, or find them in the cache; writes nothing."""
    from trainstack.config import ConfigError, check_writable_dir

    from . import data as D
    from .model import build_sample_tokenizer, lang_id, load_tokenizer

    tok_spec = cfg.model.tokenizer or cfg.model.name_or_path
    tok_key = "model.tokenizer" if cfg.model.tokenizer else "model.name_or_path"
    if tok_spec in ("nllb-600m", "tiny"):
        raise D.DataError(f"model.name_or_path={tok_spec} is an architecture, not a tokenizer: set "
                          f"model.tokenizer to a hub name / dir, or to 'sample'")
    fp = D.fingerprint(cfg.data, tok_spec, cfg.model.src_lang, cfg.model.tgt_lang)
    cache_root = Path(cfg.data.cache_dir) if cfg.data.cache_dir else run_dir.parent / ".mt-nllb-cache"
    cache = cache_root / fp
    if (cache / "report.json").exists():
        report = json.loads((cache / "report.json").read_text())
        tokenizer = load_tokenizer(str(cache / "tokenizer")) if tok_spec == "sample" else load_tokenizer(tok_spec, tok_key)
        return DataPlan(tokenizer, cache, fp, tok_spec == "sample", cached_report=report)
    check_writable_dir(cache_root, "data.cache_dir")  # written after tokenizing: fail now, not then
    pairs, reports = D.read_training_pairs(cfg.data)
    for r in reports:
        print(r.line())
        for ex in r.examples:
            print(f"  bad row {ex}")
    if len(pairs) < 2:
        raise D.DataError(f"only {len(pairs)} usable pairs in {cfg.data.train}: nothing to train on "
                          f"(the lines above say why rows were dropped)")
    train_pairs, val_pairs = D.split_validation(pairs, cfg.data.validation_rows, cfg.data.seed)
    if tok_spec == "sample":
        # Trained on the training split only, so validation text stays unseen.
        tokenizer = build_sample_tokenizer([t for p in train_pairs for t in p], [cfg.model.src_lang, cfg.model.tgt_lang])
    else:
        tokenizer = load_tokenizer(tok_spec, tok_key)
    for key, code in (("model.src_lang", cfg.model.src_lang), ("model.tgt_lang", cfg.model.tgt_lang)):
        try:
            lang_id(tokenizer, code)
        except ValueError as e:
            raise ConfigError(f"{key}={code}: {e}") from None
    return DataPlan(tokenizer, cache, fp, tok_spec == "sample", train_pairs=train_pairs, val_pairs=val_pairs,
                    reports=reports)


def tokenize_data(cfg: TrainConfig, plan: DataPlan, progress: bool = True):
    """(train TokenizedPairs, validation TokenizedPairs, data report): from the cache, or tokenized and
    written to it (the cache's first write happens here, after validation)."""
    from trainstack.config import make_run_dir

    from . import data as D
    from .model import lang_id

    cache, tokenizer = plan.cache, plan.tokenizer
    if plan.cached_report is not None:
        report = plan.cached_report
        print(f"data: cache hit {cache} ({report['train_rows']} train, {report['validation_rows']} validation)")
        return D.load_tokenized(cache / "train.parquet"), D.load_tokenized(cache / "validation.parquet"), report
    src_id, tgt_id = lang_id(tokenizer, cfg.model.src_lang), lang_id(tokenizer, cfg.model.tgt_lang)
    eos = tokenizer.eos_token_id
    train_tp = D.tokenize_pairs(plan.train_pairs, tokenizer, src_id, tgt_id, eos, cfg.data.max_length, progress=progress)
    val_tp = D.tokenize_pairs(plan.val_pairs, tokenizer, src_id, tgt_id, eos, cfg.data.max_length)
    report = {"fingerprint": plan.fingerprint, "sources": [r.as_dict() for r in plan.reports],
              "train_rows": len(train_tp), "validation_rows": len(val_tp),
              "truncated": train_tp.truncated + val_tp.truncated}
    make_run_dir(cache.parent, "data.cache_dir")
    tmp = cache.parent / f".tmp-{plan.fingerprint}"
    tmp.mkdir(parents=True, exist_ok=True)
    D.save_tokenized(train_tp, tmp / "train.parquet")
    D.save_tokenized(val_tp, tmp / "validation.parquet")
    if plan.sample_tokenizer:
        tokenizer.save_pretrained(tmp / "tokenizer")
    (tmp / "report.json").write_text(json.dumps(report, indent=1))
    if not cache.exists():
        tmp.rename(cache)  # atomic: a crashed run never leaves a half cache under the fingerprint
    print(f"data: {len(train_tp)} train, {len(val_tp)} validation, {report['truncated']} truncated to "
          f"{cfg.data.max_length} tokens; cached at {cache}")
    return train_tp, val_tp, report


def resume_target(resume: str | None, run_dir: Path) -> bool | Path:
    """fit's ``resume`` argument from --resume, checked before anything is read or written: asking to
    resume where there is nothing to resume is an error, never a silent fresh start."""
    from trainstack.checkpoint import latest_checkpoint, read_manifest
    from trainstack.config import ConfigError

    if resume is None:
        return False
    if resume == "latest":
        root = run_dir / "checkpoints"
        if latest_checkpoint(root) is None:
            raise ConfigError(f"--resume: no checkpoint in {root} (none complete); check --run-dir, or drop "
                              "--resume to start fresh")
        return True
    path = Path(resume)
    if read_manifest(path) is None:
        raise ConfigError(f"--resume {resume}: not a checkpoint, or not a complete one (expected a directory like "
                          f"{run_dir / 'checkpoints' / 'step-N'} holding manifest.json)")
    return path


# The builders below are the whole training setup; `mt-nllb bench` ("ours" arms) calls the same
# functions, so a bench figure is what `mt-nllb train` runs (tests/test_bench_builders.py checks it).

def resolve_train_speed(cfg: TrainConfig, device, precision, world_size: int = 1):
    """Core's fast path for this run (trainstack.speed.Speed): CUDA graphs and length buckets on one
    CUDA process unless the config turns them off; eager on CPU and under DDP. speed.liger_ce and
    speed.triton_ce=true: checked usable here (their library, a CUDA device); liger's loss turns graphs
    off (it cannot be captured)."""
    from trainstack.speed import resolve_speed

    from . import fused_ce

    if cfg.speed.liger_ce:
        fused_ce.check_usable(device)
    if cfg.speed.triton_ce is True:
        triton_ce_on(cfg, device)  # where it cannot run: the one-line error, before the data is read
    return resolve_speed(cfg.speed, device, use_grad_scaler=precision.use_grad_scaler, world_size=world_size,
                         max_len=cfg.data.max_length,
                         graph_blockers=[fused_ce.GRAPH_BLOCKER] if cfg.speed.liger_ce else [])


def compile_loss_chunks(cfg: TrainConfig, speed) -> bool:
    """speed.compile_loss resolved: auto compiles the head's chunk math where the fast path keeps the
    shapes few. Under speed.liger_ce no chunk math of ours runs."""
    if cfg.speed.liger_ce:
        return False
    return speed.fast if cfg.speed.compile_loss == "auto" else bool(cfg.speed.compile_loss)


def triton_ce_on(cfg: TrainConfig, device) -> bool:
    """speed.triton_ce resolved for ``device``: auto where it can run and was measured (CUDA, compute
    capability >= 8.0, Triton importable); true where it cannot run is a one-line ConfigError. Never
    under speed.liger_ce or speed.chunked_ce=false (no chunk math of ours runs)."""
    import importlib.util

    import torch
    from trainstack.config import ConfigError

    if cfg.speed.liger_ce or not cfg.speed.chunked_ce or cfg.speed.triton_ce is False:
        return False
    device = torch.device(device)
    if device.type != "cuda":
        missing = f"this run's device is {device.type}"
    elif importlib.util.find_spec("triton") is None:
        missing = "Triton is not installed (it comes with PyTorch's CUDA builds)"
    else:
        return cfg.speed.triton_ce is True or torch.cuda.get_device_capability(device) >= (8, 0)
    if cfg.speed.triton_ce is True:
        raise ConfigError(f"config key 'speed.triton_ce': the Triton cross-entropy kernel needs a CUDA device and "
                          f"Triton, and {missing}: set speed.triton_ce=auto or false")
    return False


def build_training_model(cfg: TrainConfig, tokenizer, device, speed=None, world_size: int = 1):
    """The model `train` trains, already on ``device``, so that the optimizer built next sees CUDA
    parameters and takes the fused kernel. ``tokenizer`` may be None for a shipped architecture
    (the bench's synthetic ids); a random-init architecture is initialised on ``device`` directly.
    ``speed`` (resolve_train_speed) decides whether the loss's chunk math is compiled;
    ``world_size`` whether the embeddings add their gradient rows in place."""
    import torch
    from trainstack.config import ConfigError

    from . import loss as loss_mod
    from .embedding_grad import add_embedding_rows_to_grad
    from .model import build_model, enable_checkpointing

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, tokenizer, device=device)
    if tokenizer is not None and model.config.vocab_size < len(tokenizer):
        raise ConfigError(f"model.name_or_path={cfg.model.name_or_path}: vocabulary of {model.config.vocab_size} "
                          f"tokens, but the tokenizer has {len(tokenizer)}; use the model's own tokenizer")
    if cfg.speed.gradient_checkpointing:
        enable_checkpointing(model)
    if cfg.speed.params_dtype == "bf16":
        model.to(torch.bfloat16)
    model.to(device)
    if embedding_row_grads_on(cfg, world_size, speed):
        add_embedding_rows_to_grad(model)
    loss_mod.configure(compile_loss_chunks(cfg, speed) if speed is not None else cfg.speed.compile_loss is True,
                       dynamic=cfg.speed.symbolic_widths, triton_kernel=triton_ce_on(cfg, device))
    if speed is not None and compile_layers_on(cfg, speed):
        compile_layers(model, speed.compile_backend, dynamic=cfg.speed.symbolic_widths)
    return model


def embedding_row_grads_on(cfg: TrainConfig, world_size: int, speed=None) -> bool:
    """speed.embedding_row_grads resolved for a run of ``world_size`` processes. auto is off where the
    whole step is compiled (speed.compile): its backward writes .grad itself, which Dynamo would have
    to trace through."""
    from trainstack.config import ConfigError

    if cfg.speed.embedding_row_grads is True and world_size > 1:
        raise ConfigError(f"config key 'speed.embedding_row_grads': true needs one process, this run has {world_size} "
                          "(DistributedDataParallel could reduce the gradient before the rows arrive); set it to auto")
    if cfg.speed.embedding_row_grads == "auto":
        return world_size == 1 and not (speed is not None and speed.compile)
    return bool(cfg.speed.embedding_row_grads)


def compile_layers_on(cfg: TrainConfig, speed) -> bool:
    return speed.cuda_graphs if cfg.speed.compile_layers == "auto" else bool(cfg.speed.compile_layers)


def compile_layers(model, backend: str, dynamic: bool = True) -> None:
    """Compile every encoder and decoder layer in place (state_dict keys unchanged). Layers of one
    kind share the compiled code: their parameters are graph inputs, so 24 layers cost two
    compilations. ``dynamic`` (speed.symbolic_widths): every size symbolic, so new padded shapes do
    not recompile; False: the first shape compiles as it is, and the sizes that change (lengths)
    become symbolic at their first change, the width (1024) staying a constant (one more compilation
    per layer kind)."""
    from trainstack.speed import allow_compilations, enable_compile_cache, one_graph_for_all_sizes

    enable_compile_cache()
    one_graph_for_all_sizes()
    # Encoder and decoder layers share one code object (transformers' checkpointing wrapper), whose
    # variants (layer kind, static then symbolic lengths, a backend's size guards) can pass Dynamo's
    # default limit of 8; past it the layers would silently run eagerly.
    allow_compilations(16)
    for layer in [*model.model.encoder.layers, *model.model.decoder.layers]:
        layer.compile(dynamic=True if dynamic else None, backend=backend)


def build_train_batches(cfg: TrainConfig, train_tp, model_config, rank: int = 0, world_size: int = 1, speed=None):
    """Length-sorted batches; on the fast path padded to speed's length buckets and filled to
    speed.batch_size rows, so the captured step sees a few shapes."""
    from trainstack.speed import LengthBuckets

    from .data import TranslationBatches

    buckets = speed.buckets(cfg.data.max_length) if speed is not None and speed.fast else None
    # The same groups on the eager path, so that both train on the same batches (TrainConfig checks
    # that the buckets are on).
    group_buckets = (LengthBuckets.parse(cfg.speed.length_buckets, cfg.data.max_length)
                     if cfg.speed.group_by == "each_side" else None)
    return TranslationBatches(train_tp, max_tokens=cfg.speed.max_tokens_per_batch, pad_id=model_config.pad_token_id,
                              decoder_start_id=model_config.decoder_start_token_id, seed=cfg.seed,
                              max_batch_size=cfg.speed.max_batch_size, fixed_batch_size=cfg.speed.batch_size,
                              rank=rank, world_size=world_size, buckets=buckets, group_buckets=group_buckets,
                              head_row_multiple=head_row_multiple(cfg))


def head_row_multiple(cfg: TrainConfig) -> int:
    """speed.head_row_multiple as the fast path's batches use it: 0 under speed.liger_ce, whose loss
    takes the real rows itself."""
    return 0 if cfg.speed.liger_ce else cfg.speed.head_row_multiple


def total_optimizer_steps(cfg: TrainConfig, batches) -> int:
    return cfg.max_steps or cfg.epochs * math.ceil(len(batches) / cfg.grad_accum_steps)


def build_optimizer_and_scheduler(cfg: TrainConfig, model, total_steps: int):
    """Call after build_training_model (the model is on its device: fused AdamW on CUDA). Prints
    which optimizer implementation runs."""
    from trainstack.optim import build_optimizer, build_scheduler, describe_optimizer

    optimizer = build_optimizer(model, name=cfg.optim.name, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                betas=tuple(cfg.optim.betas))
    scheduler = build_scheduler(optimizer, cfg.optim.schedule, warmup_steps=round(cfg.optim.warmup_ratio * total_steps),
                                total_steps=total_steps)
    print(f"optimizer: {describe_optimizer(optimizer)}")
    return optimizer, scheduler


def make_loss_fn(cfg: TrainConfig, speed=None):
    """core's loss_fn(model, batch) -> (label-smoothed CE, real target tokens). On the fast path the
    head keeps every row (padding masked): fixed shapes, nothing read back to the host."""
    from trainstack.speed import to_device

    from . import loss as loss_mod
    from .fused_ce import liger_smoothed_ce

    fixed_shapes = speed is not None and speed.fast
    head_loss = liger_smoothed_ce if cfg.speed.liger_ce else None

    def loss_fn(model, batch):
        device = next(model.parameters()).device
        batch = {k: to_device(v, device) for k, v in batch.items()}  # pinned: the host need not wait
        return loss_mod.seq2seq_loss(model, batch, cfg.label_smoothing, chunked=cfg.speed.chunked_ce,
                                     chunk_rows=cfg.speed.ce_chunk_tokens, fixed_shapes=fixed_shapes,
                                     head_loss=head_loss)

    return loss_fn


def describe_loss(cfg: TrainConfig, speed, device="cpu") -> str:
    """The start-up line naming the loss path that runs on ``device``."""
    rows = "real tokens only"
    if speed.fast and head_row_multiple(cfg):
        rows = f"real tokens gathered, padded to a multiple of {head_row_multiple(cfg)} rows (fixed shapes)"
    elif speed.fast:
        rows = "every row, padding masked (fixed shapes)"
    if cfg.speed.liger_ce:
        return (f"loss: label-smoothed CE ({cfg.label_smoothing}), liger-kernel's fused linear CE in chunks of up "
                f"to {cfg.speed.ce_chunk_tokens} rows, {rows}")
    if not cfg.speed.chunked_ce:
        return f"loss: label-smoothed CE ({cfg.label_smoothing}) over full logits"
    math = "compiled" if compile_loss_chunks(cfg, speed) else "eager"
    if triton_ce_on(cfg, device):
        math = f"by the Triton kernel (the loss alone {math})"
    layers = ", layers compiled" if compile_layers_on(cfg, speed) else ""
    return (f"loss: label-smoothed CE ({cfg.label_smoothing}), LM head in chunks of {cfg.speed.ce_chunk_tokens} "
            f"rows, {rows}, chunk math {math}{layers}")


def build_loop_config(cfg: TrainConfig, total_steps: int):
    from trainstack.loop import LoopConfig

    return LoopConfig(max_steps=total_steps, epochs=cfg.epochs, grad_accum_steps=cfg.grad_accum_steps,
                      max_grad_norm=cfg.max_grad_norm, log_every_steps=cfg.log_every_steps,
                      eval_every_steps=cfg.eval_every_steps, save_every_steps=cfg.save_every_steps,
                      # the users' eval 2000 / save 3000: a save between evaluations evaluates first,
                      # so best-by-BLEU ranks every checkpoint
                      eval_at_save=True,
                      keep_last=cfg.keep_last, keep_best=cfg.keep_best, best_metric="eval_bleu", best_mode="max",
                      seed=cfg.seed, report_to=cfg.report_to)


def run(cfg: TrainConfig, run_dir: Path, resume=None, progress: bool = True) -> dict:
    from accelerate import PartialState
    from trainstack.config import check_writable_dir, format_config, make_run_dir, save_config
    from trainstack.hardware import detect_hardware
    from trainstack.loop import check_run_dir, fit
    from trainstack.precision import apply_precision, resolve_precision

    from .evaluate import evaluate_pairs
    from .model import pair_train_flops, save_model_and_tokenizer, set_generation

    # Everything that can be wrong with the input is found before the first write: the run directory,
    # --resume, the data, the tokenizer and the model (a hub name while offline).
    run_dir = check_writable_dir(run_dir, "--run-dir")
    resume_arg = resume_target(resume, run_dir)
    resume_hint = "the same mt-nllb train command plus --resume"
    # A fresh start must not overwrite another run's config and logs.
    check_run_dir(run_dir, resume=resume is not None, overwrite=cfg.overwrite, resume_hint=resume_hint)
    hw = detect_hardware()
    precision = resolve_precision(cfg.precision, hw)
    apply_precision(precision)
    print(f"precision: {precision.name} ({precision.reason})")
    print(format_config(cfg))
    # One process, or one of N under `accelerate launch`; its device is the one fit's accelerator uses.
    # The speed settings are resolved before the data is read: a kernel that cannot run here
    # (speed.liger_ce without liger-kernel or CUDA) stops the run before minutes of reading.
    state = PartialState()
    speed = resolve_train_speed(cfg, state.device, precision, world_size=state.num_processes)
    plan = read_data(cfg, run_dir)
    tokenizer = plan.tokenizer
    model = build_training_model(cfg, tokenizer, state.device, speed, world_size=state.num_processes)

    make_run_dir(run_dir, "--run-dir")
    save_config(cfg, run_dir)
    (run_dir / "mt_nllb.json").write_text(json.dumps({"src_lang": cfg.model.src_lang, "tgt_lang": cfg.model.tgt_lang}))
    train_tp, val_tp, data_report = tokenize_data(cfg, plan, progress)
    (run_dir / "data_report.json").write_text(json.dumps(data_report, indent=1))

    set_generation(model, tokenizer, cfg.model.tgt_lang, cfg.eval.num_beams, cfg.eval.max_new_tokens)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {cfg.model.name_or_path}, {n_params / 1e6:.1f}M parameters, attention {cfg.model.attn_implementation}")

    batches = build_train_batches(cfg, train_tp, model.config, rank=state.process_index, world_size=state.num_processes,
                                  speed=speed)
    total_steps = total_optimizer_steps(cfg, batches)
    optimizer, scheduler = build_optimizer_and_scheduler(cfg, model, total_steps)
    loss_fn = make_loss_fn(cfg, speed)
    print(describe_loss(cfg, speed, state.device))

    val_pairs = list(zip(val_tp.src_text, val_tp.tgt_text, strict=True))
    if cfg.eval.max_rows:
        val_pairs = val_pairs[:cfg.eval.max_rows]
    eval_round = [0]

    def evaluate(model):
        eval_round[0] += 1
        device_type = next(model.parameters()).device.type
        with precision.autocast(device_type):  # beam search in the training precision, not fp32
            m = _evaluate(model)
        print(f"eval: BLEU {m['bleu']:.2f} chrF++ {m['chrf']:.2f} | {m['bleu_signature']} | {m['chrf_signature']}")
        return {"bleu": m["bleu"], "chrf": m["chrf"]}

    def _evaluate(model):
        return evaluate_pairs(model, tokenizer, val_pairs, src_lang=cfg.model.src_lang, tgt_lang=cfg.model.tgt_lang,
                              num_beams=cfg.eval.num_beams, max_new_tokens=cfg.eval.max_new_tokens,
                              batch_size=cfg.eval.batch_size, bleu_tokenize=cfg.eval.bleu_tokenize,
                              predictions=run_dir / "predictions" / f"validation-{eval_round[0]:04d}.jsonl")

    # MFU: FLOPs per real target token, averaged over the training set (the loop counts target tokens).
    src_len, tgt_len = train_tp.src_offsets[1:] - train_tp.src_offsets[:-1], train_tp.tgt_offsets[1:] - train_tp.tgt_offsets[:-1]
    sample = slice(0, min(len(train_tp), 20000))
    flops = sum(pair_train_flops(model.config, int(s), int(t)) for s, t in zip(src_len[sample], tgt_len[sample], strict=True))
    flops_per_token = flops / max(1, int(tgt_len[sample].sum()))

    loop_cfg = build_loop_config(cfg, total_steps)
    # A saved data position only means something on the same tokenized data cut into the same batches.
    # (the specific fields first: the first difference is the one named)
    fingerprint = {"max_length": cfg.data.max_length, "vocab_size": len(tokenizer),
                   "batching": [cfg.speed.max_tokens_per_batch, cfg.speed.max_batch_size, cfg.speed.batch_size,
                                cfg.speed.group_by],
                   "train_rows": len(train_tp), "data": data_report["fingerprint"]}
    result = fit(model=model, optimizer=optimizer, scheduler=scheduler, train_batches=batches, loss_fn=loss_fn,
                 config=loop_cfg, run_dir=run_dir, precision=precision, evaluate=evaluate,
                 flops_per_token=flops_per_token, resume=resume_arg,
                 save_model_fn=lambda d: save_model_and_tokenizer(model, tokenizer, d), progress=progress,
                 overwrite=cfg.overwrite, resume_fingerprint=fingerprint,
                 ignore_resume_mismatch=cfg.ignore_resume_mismatch, resume_hint=resume_hint, speed=speed)
    summary = {"steps": result.steps, "last_loss": result.last_loss, "best_bleu": result.best_metric,
               "checkpoint": str(result.checkpoint) if result.checkpoint else None, "interrupted": result.interrupted}

    if cfg.data.test and not result.interrupted:
        summary["test"] = test_best(cfg, run_dir, model, tokenizer)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return summary


def test_best(cfg: TrainConfig, run_dir: Path, model, tokenizer) -> dict:
    """Evaluate the best checkpoint by BLEU (the last one if none is marked best) on data.test."""
    from trainstack.checkpoint import CheckpointManager

    from .data import read_pairs
    from .evaluate import evaluate_pairs
    from .model import load_for_inference

    ckpts = CheckpointManager(run_dir / "checkpoints", metric="eval_bleu", mode="max")
    best = ckpts.best() or ckpts.latest()
    if best is not None:
        model, tokenizer = load_for_inference(best, cfg.model.attn_implementation)
    pairs, reports = read_pairs([cfg.data.test], [0], cfg.data.src_key, cfg.data.tgt_key, 1, 10**9, dedup=False,
                                split="test")
    for r in reports:
        print(r.line())
    import torch

    if torch.cuda.is_available():
        model.to("cuda")
    m = evaluate_pairs(model, tokenizer, pairs, src_lang=cfg.model.src_lang, tgt_lang=cfg.model.tgt_lang,
                       num_beams=cfg.eval.num_beams, max_new_tokens=cfg.eval.max_new_tokens,
                       batch_size=cfg.eval.batch_size, bleu_tokenize=cfg.eval.bleu_tokenize,
                       predictions=run_dir / "predictions" / "test.jsonl")
    print(f"test ({best}): BLEU {m['bleu']:.2f}  {m['bleu_signature']}")
    print(f"test ({best}): chrF++ {m['chrf']:.2f}  {m['chrf_signature']}")
    return {"checkpoint": str(best), "rows": len(pairs), **m}


def check_optimizer_available(name: str) -> None:
    """Fail at start-up, not after data preparation, when the optimizer's package is missing."""
    from trainstack import optim

    if name == "adamw8bit" and not optim.HAS_BITSANDBYTES:
        raise ImportError("optim.name=adamw8bit (the rtx4080s-16g profile) needs bitsandbytes: "
                          "pip install 'mt-nllb[bnb]', or pass optim.name=adamw (fp32 states: +3.4 GiB)")
