"""chat-pretrain train: the whole job, top to bottom.

    # 1 GPU
    chat-pretrain train --profile large data.train_files=[data/train] data.valid_files=[data/valid.parquet] \
        tokenizer.path=path/to/chatlm-tokenizer
    # N GPUs (one process per GPU; gradients all-reduced once per optimizer step)
    accelerate launch --multi_gpu --num_processes 3 -m chat_pretrain train --profile large ...
    # CPU (tiny model, fp32)
    chat-pretrain train --profile cpu-tiny data.train_files=[train.parquet] tokenizer.path=...
    # resume from the latest checkpoint, data position included (the users' spelling works too)
    chat-pretrain train --profile large ... --resume          # or --is_keep_training=True; --resume PATH
    # several CPU processes (gloo), as the tests do
    torchrun --nproc_per_node 2 -m chat_pretrain train --profile cpu-tiny ...
    # several machines: on each, the same command (run_dir on a filesystem they all see; README)
    torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint HOST:29500 -m chat_pretrain train ...

Ctrl-C (SIGINT) or SIGTERM: a resumable checkpoint is saved, exit status 130 (one process: at the next
micro-batch, a partly accumulated window is dropped and replayed on resume; several: after the step).

Steps: config -> hardware and precision -> tokenizer -> fast path (core's speed: on one CUDA process a
compiled step replayed as CUDA graphs, compiled under DDP, eager on CPU; the line "speed: ..." says
which) -> model (SDPA when supported), on its device -> streamed token-budget batches grouped by
length buckets (the fast path pads them to a few fixed shapes: the line "batches: ..."), every W-th to
rank r -> AdamW + warmup/cosine, fused on CUDA (or Adafactor with the given lr; the line
"optimizer: ..." says which runs) -> the build_* functions, which `chat-pretrain bench` times too ->
core's fit (accelerate, no_sync on non-final micro-steps, checkpoints with the data position, keep-N
best by BLEU) with evaluation = validation loss + BLEU-4 over the whole validation set.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from trainstack.speed import to_device

from chat_pretrain.config import TrainConfig
from chat_pretrain.data import (
    DataError,
    MemoryLog,
    PromptResponseBatches,
    check_schema,
    expand_files,
    has_usable_row,
    real_tokens,
)
from chat_pretrain.evaluate import evaluate_model
from chat_pretrain.model import SHIPPED, build_model, count_params, flops_per_token
from chat_pretrain.tokenizer import load_tokenizer


def make_loss_fn():
    """core's loss_fn(model, batch) -> (mean CE over the real targets, real tokens). The same function
    on every path: a fixed-shape batch's bucket padding and filler rows carry no targets, so its loss
    is the unpadded batch's."""
    def loss_fn(model, batch):
        device = next(iter(model.parameters())).device if not hasattr(model, "device") else model.device
        b = {k: to_device(batch[k], device) for k in ("input_ids", "attention_mask", "labels")}  # pinned: no host wait
        # use_cache=False: training needs no KV cache, and building one (transformers 5.17's T5 decoder
        # makes a DynamicCache when the config's use_cache is on) breaks the compiled graph in three.
        out = model(**b, use_cache=False)
        if batch.get("is_padding"):
            # A rank with no batch left in this bucket's last round: run the graph so DDP's all-reduce
            # matches the other ranks, add nothing to the gradient or the token count.
            return out.loss * 0.0, 0
        # Real (non-pad) tokens on both sides, as a tensor: no host sync on the hot path.
        return out.loss, real_tokens(b)

    return loss_fn


@dataclass
class Job:
    cfg: TrainConfig
    resume: bool | str | Path = False
    """True: the latest complete checkpoint in run_dir; a path: that checkpoint."""
    progress: bool = True


def check_inputs(job: Job):
    """Everything about the input that can be wrong, found before the first write: data and tokenizer
    given, the run directory usable, something to resume when asked, the tokenizer loads, every file is
    readable parquet with the columns and at least one usable row. Returns (tokenizer, train files,
    validation files); raises ConfigError or DataError with one line."""
    from trainstack.config import ConfigError, check_writable_dir

    cfg = job.cfg
    if not cfg.data.train_files:
        raise ConfigError("data.train_files is empty (give data.train_files=[path, ...])")
    if not cfg.tokenizer.path:
        raise ConfigError(f"tokenizer.path is empty (a tokenizer.json or its directory); {_GET_A_TOKENIZER}")
    run_dir = check_writable_dir(cfg.run_dir, "run_dir")
    if job.resume is True and not any((run_dir / "checkpoints").glob("step-*/trainer_state.json")):
        raise ConfigError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}; check run_dir, or drop "
                          f"--resume to start fresh")
    if job.resume not in (True, False) and not (Path(job.resume) / "trainer_state.json").is_file():
        raise ConfigError(f"--resume {job.resume}: not a complete checkpoint (expected RUN_DIR/checkpoints/step-N)")
    try:
        tok = build_tokenizer(cfg)
    except FileNotFoundError:
        raise ConfigError(f"tokenizer.path={cfg.tokenizer.path}: no tokenizer.json there; {_GET_A_TOKENIZER}") from None
    except Exception as e:  # the tokenizers library raises plain Exception on a malformed file
        raise ConfigError(f"tokenizer.path={cfg.tokenizer.path}: not a usable tokenizer ({e})") from None
    columns = [cfg.data.prompt_column, cfg.data.response_column]
    train_files = expand_files(cfg.data.train_files)
    rows = check_schema(train_files, columns)
    if not has_usable_row(train_files, columns):
        what = "no rows" if rows == 0 else f"{rows:,} rows, none with a non-empty '{columns[0]}' and '{columns[1]}'"
        raise DataError(f"nothing to train on in {', '.join(map(str, train_files))}: {what}")
    valid_files = expand_files(cfg.data.valid_files) if cfg.data.valid_files else []
    if valid_files:
        check_schema(valid_files, columns)
    return tok, train_files, valid_files


_GET_A_TOKENIZER = ("train one with `chat-pretrain tokenizer train --files TRAIN.parquet --vocab-size 32000 --out DIR` "
                    "and pass tokenizer.path=DIR, or point tokenizer.path at an existing tokenizer.json or its directory")


def build_model_or_explain(cfg: TrainConfig, tok):
    from trainstack.config import ConfigError

    try:
        return build_model(cfg.model.name, tok.vocab_size, tok.pad_id, tok.eos_id, cfg.model.attn_implementation,
                           cfg.model.dropout_rate)
    except ConfigError:
        raise  # a hub name that cannot be had: trainstack.hub's line says what to do
    except (ValueError, OSError) as e:
        if Path(cfg.model.name).is_dir():
            raise ConfigError(f"model.name={cfg.model.name}: cannot load this directory ({e})") from None
        raise ConfigError(f"model.name={cfg.model.name}: not a shipped config ({', '.join(SHIPPED)}), a local "
                          f"directory, nor a model on the Hugging Face hub ({e})") from None


# The builders below are the training setup; `chat-pretrain bench --arm ours` calls the same functions,
# so a bench figure is what `chat-pretrain train` runs (tests/test_bench_builders.py checks it).

def build_tokenizer(cfg: TrainConfig):
    return load_tokenizer(cfg.tokenizer.path, fix=cfg.tokenizer.fix_metaspace)


def resolve_train_speed(cfg: TrainConfig, device, precision, world_size: int = 1):
    """Core's fast path for this run (trainstack.speed.Speed, with its one-line reason). Compiled per
    shape (speed.compile_dynamic=false), Dynamo may compile as many graphs as there are shapes."""
    from trainstack.speed import allow_compilations, resolve_speed

    speed = resolve_speed(cfg.speed, device, use_grad_scaler=precision.use_grad_scaler, world_size=world_size,
                          max_len=cfg.data.max_seq_len)
    shapes = batch_shapes(cfg)
    if speed.compile and not speed.compile_dynamic and shapes is not None:
        allow_compilations(len(shapes.possible_shapes()))
    return speed


def batch_shapes(cfg: TrainConfig):
    """core's BatchShapes for speed.length_buckets (None: off): the token budget is
    data.batch_size x data.max_seq_len per side, at most data.max_batch_rows rows."""
    from trainstack.speed import BatchShapes, LengthBuckets

    buckets = LengthBuckets.parse(cfg.speed.length_buckets, cfg.data.max_seq_len)
    if buckets is None:
        return None
    return BatchShapes(buckets, max_tokens=cfg.data.batch_size * cfg.data.max_seq_len,
                       max_rows=cfg.data.max_batch_rows or cfg.data.batch_size * 8, shared_length=cfg.speed.shared_length)


def describe_batches(cfg: TrainConfig, speed) -> str:
    """The start-up line saying how batches are cut and padded on this run."""
    shapes = batch_shapes(cfg)
    if shapes is None:
        return (f"batches: token budget, padded to each batch's longest row (multiple of "
                f"{cfg.data.pad_to_multiple_of}), length buckets off")
    padded = ("padded to their bucket and filled to the shape's rows (fast path)" if speed.fast
              else "padded to each batch's longest row (eager)")
    return f"batches: {shapes.describe()}; {padded}"


def build_training_model(cfg: TrainConfig, tok, device):
    """(model, description), the model already on ``device`` so that the optimizer built next sees
    CUDA parameters and takes the fused kernel (accelerate's prepare in fit moves it too late)."""
    torch.manual_seed(cfg.seed)
    model, how = build_model_or_explain(cfg, tok)
    return model.to(device), how


def build_train_batches(cfg: TrainConfig, tok, rank: int = 0, world_size: int = 1, memory_log=None, speed=None):
    """Streamed batches grouped by speed.length_buckets; ``speed`` on the fast path pads them to their
    fixed shapes (the same rows in each batch either way)."""
    shapes = batch_shapes(cfg)
    return PromptResponseBatches(cfg.data.train_files, tok.tokenizer, cfg.data, pad_id=tok.pad_id, eos_id=tok.eos_id,
                                 seed=cfg.seed, rank=rank, world_size=world_size, memory_log=memory_log,
                                 shapes=shapes, fixed_shapes=shapes is not None and speed is not None and speed.fast)


def schedule_steps(cfg: TrainConfig, batches) -> tuple[int, int]:
    """(optimizer steps per epoch, total steps): micro-batches per epoch estimated from the token
    lengths of the first rows."""
    steps_per_epoch = max(1, math.ceil(batches.estimate_batches(slack=1.0) / cfg.grad_accum_steps))
    return steps_per_epoch, cfg.max_steps or steps_per_epoch * cfg.epochs


def build_optimizer_and_scheduler(cfg: TrainConfig, model, total_steps: int):
    """Call after build_training_model (the model is on its device: fused AdamW on CUDA)."""
    from trainstack.optim import build_optimizer, build_scheduler

    optimizer = build_optimizer(model, cfg.optim.name, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                betas=cfg.optim.betas)
    scheduler = build_scheduler(optimizer, cfg.optim.schedule, cfg.optim.warmup_steps, total_steps, cfg.optim.floor)
    return optimizer, scheduler


def build_loop_config(cfg: TrainConfig):
    from trainstack.loop import LoopConfig

    evaluates = bool(cfg.data.valid_files)
    return LoopConfig(
        max_steps=cfg.max_steps or None,
        epochs=cfg.epochs,
        grad_accum_steps=cfg.grad_accum_steps,
        max_grad_norm=cfg.max_grad_norm or None,
        log_every_steps=cfg.log_every_steps,
        eval_every_steps=cfg.eval.every_steps,
        save_every_steps=cfg.save_every_steps,
        # The users' --save_steps=2000 with evaluation every 5000: a save between evaluations evaluates
        # too, so every checkpoint has the score best-checkpoint pruning ranks by.
        eval_at_save=evaluates,
        keep_last=cfg.keep_last,
        keep_best=cfg.keep_best,
        best_metric="eval_bleu" if (evaluates and cfg.eval.bleu) else ("eval_loss" if evaluates else None),
        best_mode="max" if (evaluates and cfg.eval.bleu) else "min",
        cleanup_every_steps=cfg.cleanup_every_steps,
        seed=cfg.seed,
        report_to=cfg.report_to,
    )


def run(job: Job):
    from accelerate import Accelerator
    from trainstack.checkpoint import bare_model, files_fingerprint
    from trainstack.config import format_config, make_run_dir, save_config
    from trainstack.distributed import process_group_defaults
    from trainstack.hardware import detect_hardware
    from trainstack.loop import check_run_dir, fit
    from trainstack.optim import describe_optimizer
    from trainstack.precision import apply_precision, resolve_precision

    cfg = job.cfg
    tok, train_files, valid_files = check_inputs(job)
    hw = detect_hardware()
    precision = resolve_precision(cfg.precision, hw)
    apply_precision(precision)
    # The users' NCCL settings as defaults (collective timeout, shared memory only where /dev/shm has
    # room), set before the process group exists; the environment overrides them.
    handlers, dist_line = process_group_defaults(cfg.dist_timeout_s)
    # cpu=True on a CPU host: accelerate only sets up gloo for several CPU processes when told so.
    accelerator = Accelerator(mixed_precision=precision.accelerate_mixed_precision, cpu=not torch.cuda.is_available(),
                              kwargs_handlers=handlers)
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process
    run_dir = Path(cfg.run_dir)
    say = print if main else (lambda *a, **k: None)
    if world > 1:
        say(dist_line)
    resume_hint = "the same chat-pretrain train command plus --resume"
    # Before anything is written: a fresh start must not overwrite another run's config and logs.
    check_run_dir(run_dir, resume=bool(job.resume), overwrite=cfg.overwrite, resume_hint=resume_hint)
    speed = resolve_train_speed(cfg, accelerator.device, precision, world_size=world)
    model, how = build_training_model(cfg, tok, accelerator.device)
    if main:  # the first write, now that the config, the data and the model are known to be good
        make_run_dir(run_dir, "run_dir")
        save_config(cfg, run_dir)
        say(format_config(cfg))
        say(f"hardware: {hw.describe()}; processes: {world}")
        say(f"precision: {precision.reason}")
        if precision.name == "fp16":
            say("warning: T5 activations overflow in fp16 (it was trained in bf16); expect NaN losses")
    if tok.fixed:
        say(f"tokenizer: {tok.fixed}")
    n_params = count_params(model)
    say(f"model: {how}; {n_params / 1e6:.1f}M parameters")

    memory_log = MemoryLog(run_dir / f"memory.rank{rank}.jsonl",
                           cfg.memory_log_every_steps * cfg.grad_accum_steps) if cfg.memory_log_every_steps else None
    batches = build_train_batches(cfg, tok, rank=rank, world_size=world, memory_log=memory_log, speed=speed)
    steps_per_epoch, total_steps = schedule_steps(cfg, batches)
    say(f"data: {len(batches.files)} file(s), {batches.num_rows:,} rows; ~{steps_per_epoch:,} optimizer steps "
        f"per epoch (estimated from token lengths); token budget {batches.max_tokens} per side per micro-batch")
    say(describe_batches(cfg, speed))

    optimizer, scheduler = build_optimizer_and_scheduler(cfg, model, total_steps)
    say(f"optimizer: {describe_optimizer(optimizer)}")

    evaluate = None
    if valid_files and cfg.save_every_steps and cfg.eval.every_steps and cfg.save_every_steps % cfg.eval.every_steps:
        say(f"checkpoints every {cfg.save_every_steps} steps, evaluation every {cfg.eval.every_steps}: a save between "
            "evaluations evaluates first (each checkpoint is ranked by its score)")
    if valid_files:

        def evaluate(m):
            r = evaluate_model(m, tok, valid_files, cfg.data, cfg.eval, precision)
            out = {"eval_loss": r["loss"], "eval_skipped_rows": r["skipped_rows"]}
            if "bleu" in r:
                out.update(eval_bleu=r["bleu"], eval_rows=r["rows"])
            return out

    def save_model_fn(directory):
        # A checkpoint is also a usable HF model directory (save_pretrained + tokenizer).
        m = bare_model(model)
        m.save_pretrained(directory, safe_serialization=True)
        tok.tokenizer.save(str(Path(directory) / "tokenizer.json"))

    loop_cfg = build_loop_config(cfg)
    # A saved data position only means something on the same rows cut into the same batches.
    d = cfg.data
    # (the fast path only pads the same batches differently: a run may resume on the other path)
    fingerprint = {"max_seq_len": d.max_seq_len, "vocab_size": tok.vocab_size,
                   "batching": [d.batch_size, d.max_batch_rows, d.bucket_rows, d.shuffle_buffer, d.pad_to_multiple_of,
                                cfg.speed.length_buckets, cfg.speed.shared_length],
                   "data": files_fingerprint(batches.files)}
    result = fit(model=model, optimizer=optimizer, scheduler=scheduler, train_batches=batches,
                 loss_fn=make_loss_fn(), config=loop_cfg, run_dir=run_dir, precision=precision,
                 accelerator=accelerator, evaluate=evaluate,
                 flops_per_token=flops_per_token(model, cfg.data.max_seq_len) / 2,
                 resume=job.resume, save_model_fn=save_model_fn, progress=job.progress and main,
                 overwrite=cfg.overwrite, resume_fingerprint=fingerprint,
                 ignore_resume_mismatch=cfg.ignore_resume_mismatch, resume_hint=resume_hint, speed=speed)
    if batches.skipped.total:
        say(f"skipped rows: {batches.skipped.null} null, {batches.skipped.empty} empty; first: "
            f"{batches.skipped.first[0]}")
    if main:
        summary = {"steps": result.steps, "last_loss": result.last_loss, "best_metric": result.best_metric,
                   "checkpoint": str(result.checkpoint) if result.checkpoint else None,
                   "interrupted": result.interrupted, "speed": speed.reason, "skipped_null": batches.skipped.null,
                   "skipped_empty": batches.skipped.empty}
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        say(f"done: {json.dumps(summary)}")
    return result
