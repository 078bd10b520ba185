"""hlbd train: the APT model on HLBD pairs, until it has learned them (exact match >= 95%).

    hlbd train                                                   # bundled sample, recipe "fast", CPU or GPU
    hlbd train --data path/to/hlbd_v1_600pairs.txt               # the real 600 pairs
    hlbd train --profile users-baseline --data FILE              # the users' recipe, our implementation
    hlbd train optim.lr=2e-3 batch_size=128 speed.compile=false  # any config key, dotted
    hlbd train --resume run_dir=runs/hlbd                        # after Ctrl-C / SIGTERM (exit 130)
    CPU only:    CUDA_VISIBLE_DEVICES= hlbd train    (or device=cpu)
    N GPUs:      not supported: the whole dataset is a few hundred pairs and fits one GPU.

The whole job, top to bottom: read and validate the data (before anything is written), build the
tokenizer and model, choose precision and the fast path once (on a GPU: one batch shape, a compiled
step replayed from CUDA graphs), train with the dataset resident on the device and at most one host
sync per epoch, stop when teacher-forced exact match reaches the target, then
greedy-decode every training target (exact match + chrF) and save a checkpoint. SIGINT/SIGTERM
finish the optimizer step and save a checkpoint that resumes exactly, mid-epoch included.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from trainstack import optim
from trainstack.checkpoint import CheckpointManager, check_fingerprint, checkpoint_dirs, files_fingerprint
from trainstack.config import ConfigError, check_writable_dir, make_run_dir, save_config
from trainstack.data import DeviceDataset
from trainstack.hardware import detect_hardware
from trainstack.loop import StopFlag, check_run_dir, clear_run_outputs
from trainstack.memory import memory_report
from trainstack.metrics import ThroughputMeter
from trainstack.optim import build_optimizer, build_scheduler, describe_optimizer
from trainstack.precision import apply_precision, resolve_precision
from trainstack.runlog import RunLog, import_wandb
from trainstack.speed import LengthBuckets, Speed, TrainStep, resolve_speed

from hlbd.config import TrainConfig
from hlbd.data import LANGUAGE_TAGS, Pair, build_pairs, bundled_sample_path, read_hlbd
from hlbd.evaluate import evaluate_pairs
from hlbd.model import APTConfig, APTModel, seq2seq_loss
from hlbd.tokenizer import BOS, PAD, CharTokenizer

LEARNED = 0.95  # "learned" = greedy exact match on every training target >= 95%


@dataclass
class Prepared:
    pairs: list[Pair]
    tokenizer: CharTokenizer
    src: list[list[int]]
    tgt: list[list[int]]
    data_path: Path


def prepare_data(cfg: TrainConfig) -> Prepared:
    """Read, validate and encode; raises HLBDError / ValueError with a one-line reason. Writes nothing."""
    path = Path(cfg.data.path) if cfg.data.path else bundled_sample_path()
    concepts = read_hlbd(path, required=tuple(cfg.data.targets))
    pairs = build_pairs(concepts, cfg.data.sources, cfg.data.targets, cfg.data.language_tags)
    tags = [LANGUAGE_TAGS[f] for f in (*cfg.data.sources, *cfg.data.targets)] if cfg.data.language_tags else []
    tok = CharTokenizer.build(pairs, tags=tags)
    src = [tok.encode(p.source) for p in pairs]
    tgt = [tok.encode_target(p.target) for p in pairs]
    limit = cfg.model.max_len
    for p, s, t in zip(pairs, src, tgt, strict=True):
        if len(s) > limit or len(t) > limit:
            raise ValueError(f"{path}: concept {p.concept!r} ({p.source_field}): sequence of {max(len(s), len(t))} "
                             f"tokens exceeds model.max_len={limit}")
    if cfg.data.pad_to:
        if cfg.data.pad_to > limit:
            raise ValueError(f"data.pad_to={cfg.data.pad_to} exceeds model.max_len={limit}")
        # Padding every sequence to a fixed width as the users do; the tokens stay the same.
        src = [s + [PAD] * (cfg.data.pad_to - len(s)) for s in src]
        tgt = [t + [PAD] * (cfg.data.pad_to - len(t)) for t in tgt]
    return Prepared(pairs, tok, src, tgt, path)


def pick_device(cfg: TrainConfig, hw) -> torch.device:
    if cfg.device == "cuda" and not hw.has_gpu:
        raise ValueError("device=cuda asked for but no CUDA GPU is visible; use device=auto or device=cpu")
    return torch.device("cuda" if cfg.device in ("auto", "cuda") and hw.has_gpu else "cpu")


def length_batches(lengths: torch.Tensor, batch_size: int, generator: torch.Generator):
    """Batches of similar length in random order (host side: on CPU the trim saves real compute)."""
    noise = torch.rand(len(lengths), generator=generator)
    order = torch.argsort(lengths.float() + noise)
    chunks = list(order.split(batch_size))
    return [chunks[i] for i in torch.randperm(len(chunks), generator=generator).tolist()]


def build_model(cfg: TrainConfig, vocab_size: int, debug_log=None) -> APTModel:
    m = cfg.model
    return APTModel(APTConfig(vocab_size=vocab_size, d_model=m.d_model, n_heads=m.n_heads,
                              n_encoder_layers=m.n_encoder_layers, n_decoder_layers=m.n_decoder_layers, d_ff=m.d_ff,
                              dropout=m.dropout, max_len=m.max_len, attention=m.attention,
                              padding_masks=m.padding_masks, embed_init_std=m.embed_init_std,
                              scale_embeddings=m.scale_embeddings, checkpointing=m.checkpointing),
                    debug_log=debug_log)


@torch.no_grad()
def teacher_forced_exact(model, ds: DeviceDataset, precision, device, chunk: int = 256) -> torch.Tensor:
    """Count of pairs whose every target token is the argmax given the true prefix (eval mode);
    equal to greedy-decoding exact match. Stays on the device: the caller decides when to sync."""
    was_training = model.training
    model.eval()
    right = torch.zeros((), dtype=torch.long, device=device)
    src, tgt = ds.tensors["src"], ds.tensors["tgt"]
    for i in range(0, len(ds), chunk):
        with precision.autocast(device.type):
            _, _, ok = seq2seq_loss(model, src[i:i + chunk], tgt[i:i + chunk])
        right += ok.sum()
    model.train(was_training)
    return right


@dataclass
class Session:
    """Everything one run needs, built by ``setup``; ``train_one_epoch`` advances it. The position
    (epoch, micro-batch, the shuffling generators' state at the epoch's start) is what a checkpoint
    stores, so an interrupted epoch resumes on exactly the batches it had left."""
    cfg: TrainConfig
    data: Prepared
    device: torch.device
    precision: object
    speed: Speed
    model: APTModel
    train_step: TrainStep
    optimizer: torch.optim.Optimizer
    scheduler: object
    dataset: DeviceDataset
    src_lengths: torch.Tensor
    tgt_lengths: torch.Tensor
    generator: torch.Generator
    host_generator: torch.Generator
    micro_per_epoch: int
    length_batching: bool = False
    buckets: LengthBuckets | None = None
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    step: int = 0
    epoch: int = 0                      # completed epochs
    micro: int = 0                      # micro-batches done in the current epoch
    loss_sum: torch.Tensor | None = None
    epoch_start_rng: tuple | None = None


def setup(cfg: TrainConfig, data: Prepared) -> Session:
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    hw = detect_hardware()
    device = pick_device(cfg, hw)
    precision = resolve_precision(cfg.precision, hw if device.type == "cuda" else detect_cpu_only(hw))
    apply_precision(precision)
    check_optimizer_installed(cfg.optim.name)
    # fp16 (auto on sm_70/75) needs loss scaling: small gradients underflow to zero in fp16 without
    # it. An overflowing step is skipped by the scaler, and TrainStep then holds the schedule back.
    scaler = torch.amp.GradScaler(device.type) if precision.use_grad_scaler else None
    model = build_model(cfg, len(data.tokenizer)).to(device)
    opt = build_optimizer(model, cfg.optim.name, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                          betas=tuple(cfg.optim.betas))
    if cfg.optim.decay_all_params:
        for group in opt.param_groups:
            group["weight_decay"] = cfg.optim.weight_decay
    n = len(data.pairs)
    micro_per_epoch = -(-n // cfg.batch_size)
    total_steps = -(-micro_per_epoch // cfg.grad_accum_steps) * cfg.epochs
    sched = build_scheduler(opt, cfg.optim.schedule, cfg.optim.warmup_steps, total_steps, cfg.optim.floor)
    speed = resolve_speed(cfg.speed, device, use_grad_scaler=precision.use_grad_scaler, max_len=cfg.model.max_len)
    train_step = TrainStep(model, pair_loss, opt, speed, scheduler=sched, grad_accum_steps=cfg.grad_accum_steps,
                           max_grad_norm=cfg.max_grad_norm, autocast=lambda: precision.autocast(device.type),
                           scaler=scaler)
    ds = DeviceDataset({"src": data.src, "tgt": data.tgt}, pad_id=PAD, device=device)
    src_lengths = torch.tensor([sum(1 for t in s if t != PAD) for s in data.src])
    tgt_lengths = torch.tensor([sum(1 for t in s if t != PAD) for s in data.tgt])
    return Session(cfg, data, device, precision, speed, model, train_step, opt, sched, ds, src_lengths, tgt_lengths,
                   torch.Generator(device=device).manual_seed(cfg.seed), torch.Generator().manual_seed(cfg.seed),
                   micro_per_epoch,
                   length_batching=cfg.data.batching == "length" or (cfg.data.batching == "auto" and device.type == "cpu"),
                   buckets=speed.buckets(cfg.model.max_len) if speed.fast else None, scaler=scaler)


def check_optimizer_installed(name: str) -> None:
    """An optional optimizer's package, checked before anything is built or written."""
    if name == "adamw8bit" and not optim.HAS_BITSANDBYTES:
        raise ConfigError("optim.name=adamw8bit needs bitsandbytes, which is not installed: "
                          "pip install 'hlbd[bnb]', or use optim.name=adamw")


def pair_loss(model, batch):
    """The training loss of a batch {"src", "tgt"}: what the (compiled, captured) step computes."""
    return seq2seq_loss(model, batch["src"], batch["tgt"])[0]


def full_rows(batch: dict, batch_size: int) -> dict:
    """Pad a short batch to ``batch_size`` rows, so the fast path sees one shape. A filler row is
    BOS then padding on both sides: its targets are all ignored (no loss, zero gradient, and the
    mean over real tokens is unchanged), and the BOS keeps every attention row from being fully
    masked (which would give NaN, and NaN times a zero gradient is still NaN)."""
    missing = batch_size - batch["src"].shape[0]
    if missing <= 0:
        return batch
    out = {}
    for name, t in batch.items():
        filler = t.new_full((missing, t.shape[1]), PAD)
        filler[:, 0] = BOS
        out[name] = torch.cat([t, filler])
    return out


def train_one_epoch(s: Session, stop: StopFlag | None = None, micro_losses: list | None = None):
    """One pass over the pairs, from micro-batch ``s.micro`` on (non-zero after a resume). Returns the
    mean micro-batch loss as a device tensor (no sync), or None when ``stop`` was raised: then the
    epoch stopped right after an optimizer step and ``s`` holds the position to save.
    ``micro_losses`` (bench only) collects each micro-batch loss as a device tensor."""
    cfg = s.cfg
    s.model.train()
    if s.micro == 0:
        s.loss_sum = torch.zeros((), device=s.device)
        s.epoch_start_rng = (s.generator.get_state(), s.host_generator.get_state())
    else:  # resumed mid-epoch: replay this epoch's shuffle, skip what was done
        s.generator.set_state(s.epoch_start_rng[0])
        s.host_generator.set_state(s.epoch_start_rng[1])
    if s.length_batching:
        batches = []
        for idx in length_batches(s.src_lengths, cfg.batch_size, s.host_generator):
            ls, lt = int(s.src_lengths[idx].max()), int(s.tgt_lengths[idx].max())
            if s.buckets is not None:  # a compiled step: a few widths, each compiled once
                ls, lt = s.buckets.bucket(ls), s.buckets.bucket(lt)
            idx = idx.to(s.device)
            batches.append({"src": s.dataset.tensors["src"][idx, :ls], "tgt": s.dataset.tensors["tgt"][idx, :lt]})
    else:
        batches = ({"src": b["src"], "tgt": b["tgt"]} for b in s.dataset.batches(cfg.batch_size, s.generator))
    for i, batch in enumerate(batches):
        if i < s.micro:
            continue
        if s.speed.fast:
            batch = full_rows(batch, cfg.batch_size)
        # Divided by the accumulation count even for a short last group, as the users' loop does.
        loss = s.train_step.micro(batch)
        s.loss_sum += loss
        if micro_losses is not None:
            micro_losses.append(loss)
        s.micro = i + 1
        if s.micro % cfg.grad_accum_steps == 0 or s.micro == s.micro_per_epoch:
            s.train_step.optimizer_step()  # clip, update, schedule, zero
            s.step += 1
            if stop is not None and stop.signum is not None and s.micro < s.micro_per_epoch:
                return None
    s.micro = 0
    return s.loss_sum / s.micro_per_epoch


def _position(s: Session) -> dict:
    """What resuming needs besides model/optimizer/scheduler/RNG (those CheckpointManager keeps)."""
    gen, host = s.epoch_start_rng if s.micro else (s.generator.get_state(), s.host_generator.get_state())
    return {"epoch": s.epoch, "micro": s.micro, "step": s.step,
            "loss_sum": float(s.loss_sum) if s.micro else 0.0,  # one sync, only when saving
            "generator": gen, "host_generator": host}


def _restore_position(s: Session, pos: dict) -> None:
    s.step, s.epoch, s.micro = pos["step"], pos["epoch"], pos["micro"]
    s.loss_sum = torch.tensor(pos["loss_sum"], device=s.device)
    s.generator.set_state(pos["generator"])
    s.host_generator.set_state(pos["host_generator"])
    s.epoch_start_rng = (pos["generator"], pos["host_generator"])


def train(cfg: TrainConfig, progress: bool = True, say=print, resume: bool | Path = False) -> dict:
    """The whole run. ``resume``: True continues from the latest complete checkpoint in run_dir, a path
    from that checkpoint."""
    # 1. Data, validated before the run directory exists (a run_dir that can never work fails first).
    run_dir = check_writable_dir(cfg.run_dir, "run_dir")
    if "wandb" in cfg.report_to:
        import_wandb()  # report_to=[wandb] without wandb installed: the install line, nothing written
    data = prepare_data(cfg)
    n = len(data.pairs)
    ckpt_root = run_dir / "checkpoints"
    if resume and not any(p.is_dir() for p in ckpt_root.glob("step-*")):
        raise ValueError(f"{run_dir}: nothing to resume (no checkpoint in {ckpt_root})")
    check_run_dir(run_dir, resume=resume, overwrite=cfg.overwrite, resume_hint=f"hlbd train --resume run_dir={run_dir}")
    # What a resumed run must share with the checkpoint, or its position means something else.
    fingerprint = {"data": files_fingerprint([data.data_path]), "pairs": n, "vocab_size": len(data.tokenizer),
                   "max_len": cfg.model.max_len}

    # 2. Hardware, precision (chosen once, said aloud), model, optimizer, device-resident data.
    s = setup(cfg, data)
    n_params = sum(p.numel() for p in s.model.parameters())
    say(f"data: {data.data_path} | {n} pairs | vocab {len(data.tokenizer)}")
    say(f"device: {s.device} | precision: {s.precision.reason}")
    say(s.speed.reason)
    say(f"model: APT {cfg.model.attention} attention, {n_params / 1e6:.2f}M params | "
        f"batch {cfg.batch_size} x accum {cfg.grad_accum_steps} ({'length' if s.length_batching else 'random'} "
        f"batches) | {cfg.optim.name} lr {cfg.optim.lr:g}")
    say(f"optimizer: {describe_optimizer(s.optimizer)}")  # built after the model is on its device: fused on CUDA

    # 3. Run directory: only now that the data is known to be good. Resuming restores the position
    #    and the history; the log is rewritten from that history so it matches the checkpoint.
    history, learned_at, train_seconds = [], None, 0.0
    make_run_dir(run_dir, "run_dir")  # a file in the way or a read-only place: one line, nothing written
    if cfg.overwrite and not resume and checkpoint_dirs(ckpt_root):
        removed = clear_run_outputs(run_dir)
        say(f"overwrite: removed {len(removed)} entries of the earlier run in {run_dir}")
    manager = CheckpointManager(ckpt_root, keep_last=2)
    if resume:
        latest = manager.latest() if resume is True else Path(resume)
        if latest is None:
            raise ValueError(f"{run_dir}: nothing to resume (no complete checkpoint in {ckpt_root})")
        check_fingerprint(latest, fingerprint, ignore_mismatch=cfg.ignore_resume_mismatch, say=say)
        extra = manager.load(latest, model=s.model, optimizer=s.optimizer, scheduler=s.scheduler, scaler=s.scaler,
                             map_location=s.device)
        if extra.get("tokens") != data.tokenizer.tokens:
            raise ValueError(f"{latest}: the data changed since this checkpoint (vocabulary differs); "
                             f"resume with the run's data ({extra.get('data')})")
        _restore_position(s, extra["position"])
        history, train_seconds = list(extra["history"]), extra["train_seconds"]
        learned_at = extra.get("learned_at")
        where = f"epoch {s.epoch + 1}, micro-batch {s.micro}" if s.micro else f"end of epoch {s.epoch}"
        say(f"resumed from {latest} at step {s.step} ({where})")
    save_config(cfg, run_dir)
    with open(run_dir / "log.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in history)
    # From here on records go through core's RunLog: log.jsonl plus TensorBoard / W&B (report_to).
    run_log = RunLog(run_dir, cfg.report_to, run_config=asdict(cfg))
    try:
        def save_extras(d: Path):
            data.tokenizer.save(d / "tokenizer.json")
            (d / "model_config.json").write_text(json.dumps(s.model.cfg.to_dict(), indent=2))

        def save(metrics: dict, finished: bool) -> Path:
            return manager.save(
                s.step, model=s.model, optimizer=s.optimizer, scheduler=s.scheduler, scaler=s.scaler, metrics=metrics,
                extra={"epoch": s.epoch, "data": str(data.data_path), "position": _position(s), "history": history,
                       "train_seconds": train_seconds, "learned_at": learned_at, "tokens": data.tokenizer.tokens,
                       "finished": finished},
                save_model_fn=save_extras, fingerprint=fingerprint)

        # 4. Epochs: nothing reads a value back until the epoch ends, and then once.
        interrupted = False
        already_done = bool(history) and s.micro == 0 and (
            learned_at is not None or s.epoch >= cfg.epochs)
        # A run that stops at an exact-match target ends at an epoch nobody knows yet: an open-ended bar
        # ("32 epochs") rather than "32/300" as if it had stopped short.
        open_ended = cfg.stop_at_exact_match > 0
        bar = tqdm(total=None if open_ended else cfg.epochs, initial=s.epoch, disable=not progress, leave=False,
                   desc=f"epochs (until {cfg.stop_at_exact_match:.0%} exact match, at most {cfg.epochs})" if open_ended
                   else "epochs", unit=" epochs" if open_ended else "it")
        s.train_step.start_clock()  # time to the first step counts from here: compilation and capture
        meter = ThroughputMeter()  # rates per epoch; no MFU (no FLOPs-per-token figure for this model yet)
        tokens_per_epoch = real_target_tokens(data)
        with StopFlag() as stop:
            while s.epoch < cfg.epochs and not already_done:
                t0 = time.perf_counter()
                meter.restart_clock()
                loss = train_one_epoch(s, stop)
                if loss is None:  # stopped mid-epoch, right after an optimizer step
                    train_seconds += time.perf_counter() - t0
                    interrupted = True
                    break
                epoch = s.epoch
                check = cfg.stop_at_exact_match > 0 and ((epoch + 1) % cfg.eval_every_epochs == 0 or epoch + 1 == cfg.epochs)
                right = teacher_forced_exact(s.model, s.dataset, s.precision, s.device) if check else loss * 0
                grad_norm = s.train_step.grad_norm  # None when clipping is off (max_grad_norm=0)
                synced = torch.stack([loss, right.float(), loss * 0 if grad_norm is None else grad_norm.float()])
                mean_loss, n_right, last_grad_norm = synced.tolist()  # the one sync
                train_seconds += time.perf_counter() - t0
                meter.update(tokens_per_epoch, n)
                s.epoch += 1
                # Core's field names (as fit logs them), then hlbd's own: seconds, the fast path's figures
                # and eval_exact_match_tf (teacher-forced exact match on the training pairs).
                record = {"step": s.step, "epoch": s.epoch, "loss": mean_loss,
                          "lr": float(s.scheduler.get_last_lr()[0]),
                          "grad_norm": None if grad_norm is None else last_grad_norm,
                          **{k: meter.summary()[k] for k in ("tokens_per_s", "samples_per_s", "mfu")},
                          **memory_report().as_dict(), "seconds": round(train_seconds, 3), **_speed_record(s)}
                if check:
                    record["eval_exact_match_tf"] = n_right / n
                history.append(record)
                run_log.write(record)
                bar.update(1)
                bar.set_postfix(loss=f"{mean_loss:.3f}", em=f"{record.get('eval_exact_match_tf', float('nan')):.2f}")
                if check and n_right / n >= cfg.stop_at_exact_match:
                    learned_at = train_seconds
                    break
                if stop.signum is not None:
                    interrupted = True
                    break
                if cfg.save_every_epochs and s.epoch % cfg.save_every_epochs == 0:
                    save({"loss": mean_loss}, finished=False)
            bar.close()
            if interrupted:
                ckpt = save({"loss": history[-1]["loss"] if history else None}, finished=False)
                where = f"in epoch {s.epoch + 1} (micro-batch {s.micro})" if s.micro else f"after epoch {s.epoch}"
                say(f"interrupted by signal {stop.signum} at step {s.step} {where}; checkpoint: {ckpt}")
                say(f"resume with: hlbd train --resume run_dir={run_dir}")
                return {"interrupted": True, "learned": False, "epochs": s.epoch, "steps": s.step,
                        "train_seconds": round(train_seconds, 2), "checkpoint": str(ckpt), "history": history}

        # 5. Evaluation that means something: greedy decoding of every training target.
        result = evaluate_pairs(s.model, data.tokenizer, data.pairs)
        # In the log, not in the history a checkpoint keeps: a finished run resumed evaluates again.
        run_log.write({"step": s.step, "epoch": s.epoch, "eval_exact_match": result["exact_match"],
                       "eval_chrf": result["chrf"]})
        learned = result["exact_match"] >= LEARNED
        summary = {"epochs": len(history), "steps": s.step, "train_seconds": round(train_seconds, 2),
                   "seconds_to_learned": round(learned_at, 2) if learned_at is not None and learned else None,
                   "final_loss": history[-1]["loss"], "exact_match": result["exact_match"], "chrf": result["chrf"],
                   "learned": learned, "pairs": n, "params": n_params, "device": str(s.device),
                   "precision": s.precision.name, "speed": s.speed.reason, **s.train_step.stats.as_dict(),
                   "interrupted": False, "history": history}

        # 6. Checkpoint: weights, optimizer, scheduler, position, tokenizer and model config together.
        ckpt = save({k: v for k, v in summary.items() if k != "history"}, finished=True)
        summary["checkpoint"] = str(ckpt)
        (run_dir / "summary.json").write_text(json.dumps({**{k: v for k, v in summary.items() if k != "history"},
                                                          "wrong_examples": result["wrong_examples"]},
                                                         ensure_ascii=False, indent=2))
        verdict = "learned" if learned else "not learned yet"
        say(f"{verdict}: exact match {result['exact_match']:.1%} ({n} pairs, greedy), chrF {result['chrf']:.1f}, "
            f"loss {summary['final_loss']:.3f}, {len(history)} epochs, {train_seconds:.1f} s of training")
        stats = s.train_step.stats
        if stats.first_step_seconds is not None:
            say(f"first optimizer step after {stats.first_step_seconds:.1f} s ({stats.compiled_graphs} compiled graphs, "
                f"{stats.captured_graphs} CUDA graphs, {stats.recompiles} recompiles); "
                f"{train_seconds - stats.first_step_seconds:.1f} s of training after it")
        say(f"checkpoint: {ckpt}")
        return summary
    finally:
        run_log.close()


def real_target_tokens(data: Prepared) -> int:
    """Target tokens the loss counts in one epoch (every pair once; padding and the leading BOS left out)."""
    return sum(1 for t in data.tgt for x in t[1:] if x != PAD)


def _speed_record(s: Session) -> dict:
    """The fast path's figures for the log: time to the first optimizer step (compile and capture
    included) and compilations; a recompile for a shape already compiled is warned about."""
    stats = s.train_step.stats
    if not s.speed.fast and stats.first_step_seconds is None:
        return {}
    return {k: v for k, v in stats.as_dict().items() if v is not None}


def latest_checkpoint(run_dir) -> Path | None:
    """The run's last complete checkpoint, or None (for messages; creates nothing when there is none)."""
    root = Path(run_dir) / "checkpoints"
    return CheckpointManager(root).latest() if root.is_dir() else None


def detect_cpu_only(hw):
    """The hardware as precision should see it when we train on the CPU anyway."""
    from dataclasses import replace

    return replace(hw, gpus=())
