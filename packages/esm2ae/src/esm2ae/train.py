"""The whole esm2ae training job, top to bottom.

    esm2ae train --profile h100-80g data.train=uniref50.fasta.gz            # one GPU
    torchrun --nproc_per_node 2 -m esm2ae train --profile 2x-rtx2080s-8g data.train=u50.parquet
    esm2ae train --profile cpu-debug                                         # CPU, shipped sample
    esm2ae train --profile cpu-debug task=ae model.name=runs/cpu-debug/final # AE on a frozen backbone

Steps: config (profile <- overrides) -> hardware, precision (printed with the reason) -> data
(validated, held-out split) -> model (HF ESM-2 weights, packed forward) -> optimizer and the
paper's schedule (built after the model is on its device: fused AdamW on CUDA; the line
"optimizer: ..." names what runs) -> DeepSpeed when the profile asks -> loop with token-budget micro-batches and
derived accumulation -> eval (perplexity, masked accuracy, AE loss) -> checkpoints -> final export.

core (trainstack) supplies config, hardware, precision, optimizer, schedule, the loop (fit: DDP,
autocast, accumulation, checkpoints, JSONL logs) and throughput. DeepSpeed runs (the 8-10 GB
profiles) use the engine's own backward/step in a short loop here, since core's fit takes no engine.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from trainstack.checkpoint import capture_rng_state, checkpoint_dirs, files_fingerprint, restore_rng_state
from trainstack.loop import check_run_dir, clear_run_outputs

from esm2ae.config import Config, deepspeed_json
from esm2ae.data import PackedMLMBatches, check_parquet_source, read_sequences, split_windows, train_val_split
from esm2ae.model import Esm2AE, esm_flops_per_token, load_esm

SAMPLE_FASTA = Path(__file__).parent / "data" / "sample_proteins.fasta"
RESUME_HINT = "the same esm2ae train command plus --resume auto"


# ------------------------------------------------------------------------------------ setup

def _distributed() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, local, world


def _single_process_group(device: torch.device) -> None:
    """DeepSpeed needs a process group even on one GPU; without a launcher it would try MPI
    discovery (mpi4py) and then ask for LOCAL_RANK. A one-rank group on an in-memory store
    needs neither a launcher nor a free port."""
    if torch.distributed.is_initialized():
        return
    for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(k, v)
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(), rank=0, world_size=1)


def _device(cfg: Config, local_rank: int) -> torch.device:
    if cfg.device != "auto":
        return torch.device(cfg.device)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_training_data(cfg: Config, rank: int = 0):
    path = cfg.data.train or str(SAMPLE_FASTA)
    records, report = read_sequences(path, cfg.data.max_length, limit=cfg.data.limit)
    if rank == 0:
        print(f"data: {report.summary()}")
    if cfg.data.val:
        val, vreport = read_sequences(cfg.data.val, cfg.data.max_length)
        if rank == 0:
            print(f"val data: {vreport.summary()}")
        train = records
    else:
        train, val = train_val_split(records, cfg.data.val_fraction, cfg.seed)
    val = val[: cfg.data.max_val_sequences]
    return [r.sequence for r in train], [r.sequence for r in val], report


def _trainable(model: Esm2AE, task: str) -> torch.nn.Module:
    if task == "ae":
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        return model.ae
    if task == "mlm":
        for p in model.ae.parameters():
            p.requires_grad_(False)
        return model.backbone
    return model


# ------------------------------------------------------------------------------------- loss

def compute_loss(model, batch, cfg: Config) -> tuple[torch.Tensor, dict]:
    """(loss to backpropagate, tensors to accumulate for logging; no host sync). ``model`` may be
    DDP- or DeepSpeed-wrapped: the call goes through the wrapper so gradient sync is prepared."""
    out = model(batch, mlm=cfg.task != "ae", ae=cfg.task != "mlm", freeze_backbone=cfg.task == "ae")
    stats, loss = {}, 0.0
    if cfg.task != "ae":
        mlm = out["mlm_loss_sum"] / out["mlm_tokens"].clamp(min=1)
        loss = mlm if cfg.task == "mlm" else cfg.ae.mlm_weight * mlm
        stats.update(mlm_loss_sum=out["mlm_loss_sum"].detach(), mlm_tokens=out["mlm_tokens"],
                     mlm_correct=out["mlm_correct"])
    if cfg.task != "mlm":
        loss = loss + cfg.ae.ae_weight * out["ae_loss"]
        stats.update(ae_loss_sum=out["ae_loss"].detach() * batch.num_seqs, ae_seqs=batch.num_seqs)
    return loss, stats


@torch.no_grad()
def evaluate(model: Esm2AE, sequences: list[str], cfg: Config, device, precision) -> dict:
    """Perplexity and masked-token accuracy (fixed crops and masks: comparable across evals),
    and the AE reconstruction MSE over pooled embeddings."""
    if not sequences:
        return {}
    was_training = model.training
    model.eval()
    batches = PackedMLMBatches(sequences, cfg.data.max_length, cfg.batch.max_tokens_per_batch,
                               seed=12345, random_crop=False,
                               fixed_len=device.type == "cuda" and cfg.model.compile)
    totals = {"loss": torch.zeros((), device=device), "n": torch.zeros((), device=device),
              "correct": torch.zeros((), device=device), "ae": torch.zeros((), device=device), "seqs": 0}
    for i, batch in enumerate(batches):
        if cfg.fast_dev_run and i >= 1:
            break
        batch = batch.to(device)
        with precision.autocast(device.type):
            out = model(batch, mlm=True, ae=cfg.task != "mlm", freeze_backbone=False)
        totals["loss"] += out["mlm_loss_sum"].float()
        totals["n"] += out["mlm_tokens"]
        totals["correct"] += out["mlm_correct"]
        if "ae_loss" in out:
            totals["ae"] += out["ae_loss"].float() * batch.num_seqs
            totals["seqs"] += batch.num_seqs
    n = max(totals["n"].item(), 1)
    metrics = {"eval_loss": totals["loss"].item() / n, "eval_masked_accuracy": totals["correct"].item() / n}
    metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50))
    if totals["seqs"]:
        metrics["eval_ae_loss"] = totals["ae"].item() / totals["seqs"]
    model.train(was_training)
    return metrics


# ------------------------------------------------------------------------------ checkpoints

def latest_checkpoint(run_dir: Path) -> Path | None:
    # only complete checkpoints: trainer_state.json is written last
    steps = sorted((int(p.name.split("-")[1]), p) for p in (run_dir / "checkpoints").glob("step-*")
                   if (p / "trainer_state.json").exists())
    return steps[-1][1] if steps else None


def _unwrap(model):
    return getattr(model, "module", model)


def export_final(model: Esm2AE, cfg: Config, out_dir: Path, metrics: dict) -> Path:
    """HF ``save_pretrained`` backbone + ``ae.pt``: loadable by `esm2ae embed` and by HF alone."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.backbone.hf.save_pretrained(out_dir)
    torch.save(model.ae.state_dict(), out_dir / "ae.pt")
    (out_dir / "esm2ae.json").write_text(json.dumps(
        {"ae_widths": list(cfg.ae.widths), "pooling": cfg.ae.pooling, "task": cfg.task,
         "max_length": cfg.data.max_length, "metrics": metrics}, indent=1))
    return out_dir


def _load_tensors(file: Path) -> dict:
    """A state dict, unpickled with ``weights_only=True`` (explicit: torch 2.4-2.5 default to False):
    a file that holds anything but tensors and plain data is refused, so a crafted file cannot run code."""
    import pickle

    from esm2ae.data import DataError

    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message is a paragraph; its "Unsupported global: GLOBAL x" part says what was refused
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f"it references {found.group(1)}" if found else "not plain tensors"
        raise DataError(f"{file}: refused to load ({what}); only tensors and plain data are loaded from "
                        f"checkpoints, so re-export it from a trusted run") from None


def load_for_inference(checkpoint: str, device="cpu", attention="auto") -> tuple[Esm2AE, dict]:
    """A final export directory (config.json + ae.pt + esm2ae.json) or a step-N checkpoint."""
    path = Path(checkpoint)
    if (path / "esm2ae.json").exists():
        meta = json.loads((path / "esm2ae.json").read_text())
        ae_state = _load_tensors(path / "ae.pt")  # first: a refused file stops before the backbone loads
        hf, _ = load_esm(str(path))
        model = Esm2AE(hf, meta["ae_widths"], meta["pooling"], attention)
        model.ae.load_state_dict(ae_state)
        return model.to(device).eval(), meta
    if (path / "trainer_state.json").exists():
        from trainstack.config import load_config
        cfg = load_config(Config, path.parent.parent / "config.yaml")
        hf, _ = load_esm(cfg.model.name, pretrained=False)
        model = Esm2AE(hf, cfg.ae.widths, cfg.ae.pooling, attention)
        if (path / "model.safetensors").exists():
            from safetensors.torch import load_file
            state = load_file(path / "model.safetensors")
        else:
            state = _load_tensors(path / "model.pt")
        model.load_state_dict(state, strict=False)   # tied LM-head weight may be stored once
        model.backbone.hf.tie_weights()
        return model.to(device).eval(), {"ae_widths": cfg.ae.widths, "pooling": cfg.ae.pooling,
                                          "max_length": cfg.data.max_length}
    raise FileNotFoundError(f"{path}: not an esm2ae checkpoint (no esm2ae.json or trainer_state.json)")


# ---------------------------------------------------------------------------------- builders
# The training setup, one function per part; `esm2ae bench` (its "ours" arm) calls the same ones,
# so a bench figure is what `esm2ae train` runs (tests/test_bench_builders.py checks it).

def build_training_model(cfg: Config, device: torch.device, rank: int = 0):
    """(model, the part that trains, weight source), the model already on ``device`` so that the
    optimizer built next sees CUDA parameters and takes the fused kernel."""
    torch.manual_seed(cfg.seed + rank)
    hf, source = load_esm(cfg.model.name, cfg.model.pretrained)
    model = Esm2AE(hf, cfg.ae.widths, cfg.ae.pooling, cfg.model.attention).to(device)
    model.backbone.compile = cfg.model.compile and device.type == "cuda"
    model.backbone.gradient_checkpointing = cfg.model.gradient_checkpointing
    model.train()
    return model, _trainable(model, cfg.task), source


def schedule_steps(cfg: Config, world: int = 1) -> tuple[int, int]:
    """(optimizer steps, micro-batches per optimizer step per rank)."""
    if cfg.fast_dev_run:
        return 1, 1
    return cfg.max_steps, cfg.batch.grad_accum_steps(world)


def build_optimizer_and_scheduler(cfg: Config, trainable: torch.nn.Module, max_steps: int):
    """Call after build_training_model (parameters on their device: fused AdamW on CUDA). With
    DeepSpeed CPU offload the states live on the host: DeepSpeedCPUAdam, or torch AdamW unfused."""
    from trainstack.optim import build_optimizer, build_scheduler, param_groups

    lr = cfg.ae.lr if (cfg.task == "ae" and cfg.ae.lr) else cfg.optim.lr
    offload = cfg.deepspeed.enabled and cfg.deepspeed.offload_optimizer == "cpu"
    if offload and cfg.deepspeed.cpu_adam:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        optimizer = DeepSpeedCPUAdam(param_groups(trainable, cfg.optim.weight_decay), lr=lr,
                                     betas=cfg.optim.betas, eps=cfg.optim.eps, adamw_mode=True)
    else:
        optimizer = build_optimizer(trainable, cfg.optim.name, lr=lr, weight_decay=cfg.optim.weight_decay,
                                    betas=cfg.optim.betas, eps=cfg.optim.eps,
                                    fused=False if offload else cfg.optim.fused)
    scheduler = build_scheduler(optimizer, cfg.optim.schedule, min(cfg.optim.warmup_steps, max_steps - 1),
                                max_steps, floor=cfg.optim.lr_floor)
    return optimizer, scheduler


def build_train_batches(cfg: Config, train_seqs: list[str], device: torch.device, rank: int = 0, world: int = 1):
    fixed_len = device.type == "cuda" and cfg.model.compile   # static shapes: one compiled graph
    if cfg.data.streaming:
        from esm2ae.data import StreamingMLMBatches
        return StreamingMLMBatches(cfg.data.train, cfg.data.max_length, cfg.batch.max_tokens_per_batch,
                                   seed=cfg.seed, mask_prob=cfg.data.mask_prob, rank=rank, world_size=world,
                                   fixed_len=fixed_len)
    return PackedMLMBatches(train_seqs, cfg.data.max_length, cfg.batch.max_tokens_per_batch,
                            seed=cfg.seed, mask_prob=cfg.data.mask_prob,
                            overfit_batches=cfg.overfit_batches, fixed_len=fixed_len,
                            rank=rank, world_size=world)


def make_loss_fn(cfg: Config, device: torch.device):
    """core's loss_fn(model, batch) -> (loss, real tokens); the count stays on the device."""
    def loss_fn(m, batch):
        batch = batch.to(device)
        loss, _ = compute_loss(m, batch, cfg)
        return loss, batch.cu_seqlens[batch.num_seqs]

    return loss_fn


def build_loop_config(cfg: Config, max_steps: int, accum: int):
    from trainstack.loop import LoopConfig

    return LoopConfig(max_steps=max_steps, grad_accum_steps=accum, max_grad_norm=cfg.optim.max_grad_norm,
                      log_every_steps=cfg.log_every_steps, eval_every_steps=cfg.eval_every_steps,
                      save_every_steps=cfg.save_every_steps if cfg.save_checkpoints else 0,
                      keep_last=cfg.keep_last, seed=cfg.seed)


# ------------------------------------------------------------------------------------- train

def resume_target(resume: str | None, run_dir: Path) -> str | None:
    """--resume checked before anything is read or written: asking to resume where there is nothing
    to resume is an error, never a silent fresh start."""
    from trainstack.config import ConfigError

    if not resume:
        return None
    if resume == "auto":
        if latest_checkpoint(run_dir) is None:
            raise ConfigError(f"--resume auto: no checkpoint in {run_dir / 'checkpoints'}; check run_dir, or drop "
                              f"--resume to start fresh")
        return resume
    if not (Path(resume) / "trainer_state.json").is_file():
        raise ConfigError(f"--resume {resume}: not a checkpoint (expected a directory like "
                          f"{run_dir / 'checkpoints' / 'step-N'} holding trainer_state.json)")
    return resume


def train(cfg: Config, resume: str | None = None) -> dict:
    from trainstack.config import check_writable_dir, format_config, make_run_dir, save_config
    from trainstack.hardware import detect_hardware
    from trainstack.optim import describe_optimizer
    from trainstack.precision import apply_precision, resolve_precision

    # Everything that can be wrong with the input is found before the first write: the run directory,
    # --resume, the data and the model.
    run_dir = check_writable_dir(cfg.run_dir, "run_dir")
    resume = resume_target(resume, run_dir)
    rank, local_rank, world = _distributed()
    device = _device(cfg, local_rank)
    hw = detect_hardware()
    precision = resolve_precision(cfg.precision, hw if device.type == "cuda" else None)
    apply_precision(precision)
    # Before anything is written: a fresh start must not overwrite another run's config and logs.
    check_run_dir(run_dir, resume=bool(resume), overwrite=cfg.overwrite, resume_hint=RESUME_HINT)
    if rank == 0:
        print(format_config(cfg))
        print(f"precision: {precision.name} ({precision.reason})")
    _seed_everything(cfg.seed + rank)

    if cfg.data.streaming:
        if not cfg.data.train.endswith(".parquet") and not Path(cfg.data.train).is_dir():
            raise ValueError(f"data.streaming needs parquet input (a file or a directory), got '{cfg.data.train}'")
        if not cfg.data.val:
            raise ValueError("data.streaming needs a held-out file in data.val (a split would read the whole input)")
        check_parquet_source(cfg.data.train)
        val_records, vreport = read_sequences(cfg.data.val, cfg.data.max_length)
        if rank == 0:
            print(f"val data: {vreport.summary()}")
        train_seqs, val_seqs = [], [r.sequence for r in val_records][: cfg.data.max_val_sequences]
    else:
        train_seqs, val_seqs, _ = load_training_data(cfg, rank)

    model, trainable, source = build_training_model(cfg, device, rank)
    if rank == 0:  # the first write, now that the config, the data and the model are known to be good
        make_run_dir(run_dir, "run_dir")
        save_config(cfg, run_dir)
    n_params = sum(p.numel() for p in model.backbone.hf.parameters())
    if rank == 0:
        print(f"model: {cfg.model.name} ({source} weights, {n_params / 1e6:.1f}M params), "
              f"attention {model.backbone.backend(device.type)}, task {cfg.task}")

    max_steps, accum = schedule_steps(cfg, world)
    optimizer, scheduler = build_optimizer_and_scheduler(cfg, trainable, max_steps)
    engine = None
    if cfg.deepspeed.enabled:
        import deepspeed
        # the group lives as long as the process: DeepSpeed caches it (a later engine in the same
        # process reuses it)
        _single_process_group(device)
        ds_cfg = deepspeed_json(cfg, precision.name, accum, world)
        engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer,
                                                               lr_scheduler=scheduler, config=ds_cfg)
        if rank == 0:
            print(f"deepspeed: ZeRO-{cfg.deepspeed.zero_stage}, optimizer offload {cfg.deepspeed.offload_optimizer}")
    if rank == 0:
        print(f"optimizer: {describe_optimizer(optimizer)}")

    if rank == 0 and cfg.overwrite and not resume and checkpoint_dirs(run_dir / "checkpoints"):
        # here, not in fit: the untrained baseline eval below goes into the fresh log
        print(f"overwrite: removed {len(clear_run_outputs(run_dir))} entries of the earlier run in {run_dir}")
    batches = build_train_batches(cfg, train_seqs, device, rank, world)
    if engine is None:
        # the common path: core's loop (accelerate: DDP, autocast, loss scaling, checkpoints, logs)
        return _fit_with_core(cfg, model, optimizer, scheduler, batches, val_seqs, train_seqs, device, precision,
                              run_dir, resume, max_steps, accum, world, rank)
    return _fit_with_deepspeed(cfg, engine, model, batches, val_seqs, train_seqs, device, precision, hw,
                               run_dir, resume, max_steps, world, rank)


def _save_deepspeed_checkpoint(run_dir: Path, step: int, engine, model, state: dict, keep_last: int,
                               rank: int, world: int) -> Path:
    """Atomic like core's CheckpointManager: rank 0 owns the temporary directory and the rename;
    every rank writes its ZeRO shards (a collective) and its own RNG state in between."""
    root = run_dir / "checkpoints"
    tmp, final = root / f".tmp-step-{step}", root / f"step-{step}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    if world > 1:
        torch.distributed.barrier()
    engine.save_checkpoint(str(tmp), tag="ds")
    torch.save(capture_rng_state(), tmp / f"rng-{rank}.pt")
    if world > 1:
        torch.distributed.barrier()
    if rank == 0:
        torch.save(_unwrap(model).state_dict(), tmp / "model.pt")   # compute-dtype weights, for embed/eval
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))   # last: marks it complete
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        steps = sorted((int(p.name.split("-")[1]), p) for p in root.glob("step-*"))
        for _, p in steps[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(p, ignore_errors=True)
    if world > 1:
        torch.distributed.barrier()
    return final


def _fit_with_deepspeed(cfg, engine, model, batches, val_seqs, train_seqs, device, precision, hw, run_dir,
                        resume, max_steps, world, rank) -> dict:
    """DeepSpeed (ZeRO + CPU offload): core's fit takes no DeepSpeed engine, so the engine's own
    backward/step drive this loop (accumulation, clipping and the loss scale are the engine's);
    checkpoints use the engine's sharded format. Logs, evals, resume and SIGINT follow fit."""
    from trainstack.config import config_to_dict
    from trainstack.loop import StopFlag
    from trainstack.metrics import ThroughputMeter

    step, epoch = 0, 0
    if resume:
        ckpt = latest_checkpoint(run_dir) if resume == "auto" else Path(resume)
        if ckpt is not None:
            state = json.loads((ckpt / "trainer_state.json").read_text())
            engine.load_checkpoint(str(ckpt), tag="ds")
            rng_file = ckpt / f"rng-{rank}.pt"
            restore_rng_state(torch.load(rng_file if rng_file.exists() else ckpt / "rng.pt", weights_only=True))
            step, epoch = state["step"], state["epoch"]
            batches.load_state_dict(state["batches"])
            if rank == 0:
                print(f"resumed from {ckpt} at step {step}")

    mean_len = float(np.mean([min(len(s) + 2, cfg.data.max_length) for s in (train_seqs or val_seqs)]))
    # logged tokens are summed over ranks; dividing the FLOPs by the world size keeps MFU per GPU
    meter = ThroughputMeter(esm_flops_per_token(_unwrap(model).backbone.config, mean_len) / world,
                            hw.gpu if device.type == "cuda" else None)
    log_path = run_dir / "log.jsonl"
    history: list[dict] = []
    zero = lambda: torch.zeros((), device=device)  # noqa: E731
    acc = {k: zero() for k in ("loss", "micro", "tokens", "seqs", "mlm_loss_sum", "mlm_tokens", "mlm_correct",
                               "ae_loss_sum", "ae_seqs")}
    metrics: dict = {}
    last_saved = step if resume and step else -1
    interrupted = False
    pbar = tqdm(total=max_steps, initial=step, disable=rank != 0, desc="train", dynamic_ncols=True)
    if step == 0 and cfg.eval_every_steps and rank == 0 and not cfg.fast_dev_run:
        # the untrained baseline, so "perplexity falls" is visible in the log itself
        _log(rank, log_path, {"step": 0, **evaluate(_unwrap(model), val_seqs, cfg, device, precision)},
             history, pbar)
        meter.restart_clock()
    # fp16 runs in DeepSpeed's half-precision module with its loss scaler; bf16 uses autocast
    autocast = (lambda: precision.autocast(device.type)) if precision.name == "bf16" else \
        (lambda: torch.autocast(device.type, enabled=False))
    done = step >= max_steps
    with StopFlag() as stop:  # core's: same Ctrl-C/SIGTERM contract as fit
        while not done:
            batches.set_epoch(epoch)
            for batch in batches:
                batch = batch.to(device)
                boundary = engine.is_gradient_accumulation_boundary()
                with autocast():
                    loss, stats = compute_loss(engine, batch, cfg)
                engine.backward(loss)
                engine.step()
                acc["loss"] += loss.detach().float()
                acc["micro"] += 1
                acc["tokens"] += batch.cu_seqlens[batch.num_seqs].to(device)
                acc["seqs"] += batch.num_seqs
                for k, v in stats.items():
                    acc[k] += v
                if not boundary:
                    continue
                step += 1
                pbar.update(1)
                stopping = stop.signum is not None
                if world > 1:   # every rank stops at the same step, or the save collective hangs
                    flag = torch.tensor(float(stopping), device=device)
                    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                    stopping = bool(flag.item())
                if step % cfg.log_every_steps == 0 or step == max_steps or stopping:
                    # host syncs only at log cadence
                    if world > 1:   # throughput of the whole job, not of rank 0
                        for k in ("tokens", "seqs"):
                            torch.distributed.all_reduce(acc[k])
                    meter.update(acc["tokens"], acc["seqs"])
                    rec = {"step": step, "epoch": epoch, "loss": (acc["loss"] / acc["micro"].clamp(min=1)).item(),
                           "lr": engine.get_lr()[0]}
                    if acc["mlm_tokens"].item():
                        rec["mlm_loss"] = acc["mlm_loss_sum"].item() / acc["mlm_tokens"].item()
                        rec["masked_accuracy"] = acc["mlm_correct"].item() / acc["mlm_tokens"].item()
                    if acc["ae_seqs"].item():
                        rec["ae_loss"] = acc["ae_loss_sum"].item() / acc["ae_seqs"].item()
                    if precision.name == "fp16":   # overflow-skipped steps show up here first
                        rec["loss_scale"] = getattr(engine.optimizer, "loss_scale", None)
                        rec["skipped_steps"] = getattr(engine, "skipped_steps", None)
                    rec.update({k: v for k, v in meter.summary().items() if v is not None})
                    _log(rank, log_path, rec, history, pbar)
                    acc = {k: zero() for k in acc}
                eval_now = not stopping and ((cfg.eval_every_steps and step % cfg.eval_every_steps == 0)
                                             or step == max_steps)
                if eval_now and rank == 0:
                    metrics = evaluate(_unwrap(model), val_seqs, cfg, device, precision)
                    _log(rank, log_path, {"step": step, **metrics}, history, pbar)
                    meter.restart_clock()
                save_now = stopping or (cfg.save_checkpoints and (
                    (cfg.save_every_steps and step % cfg.save_every_steps == 0) or step == max_steps))
                if save_now:
                    state = {"step": step, "epoch": epoch, "batches": batches.state_dict(), "metrics": metrics,
                             "config": config_to_dict(cfg)}
                    if not cfg.data.streaming and batches.position >= len(batches):
                        state["epoch"], state["batches"] = epoch + 1, {"epoch": epoch + 1, "position": 0}
                    _save_deepspeed_checkpoint(run_dir, step, engine, model, state, cfg.keep_last, rank, world)
                    last_saved = step
                    meter.restart_clock()
                if step >= max_steps or stopping:
                    interrupted = stopping
                    done = True
                    break
            else:
                epoch += 1
    pbar.close()
    result = {"steps": step, "metrics": metrics, "history": history, "run_dir": str(run_dir),
              "interrupted": interrupted}
    if rank == 0:
        if interrupted:
            print(f"stopped by signal {stop.signum} at step {step}; checkpoint step-{last_saved} saved; "
                  f"continue with --resume auto")
        else:
            export_final(_unwrap(model), cfg, run_dir / "final", metrics)
            print(f"done: {step} steps; final model in {run_dir / 'final'}; {json.dumps(metrics)}")
    return result


def _fit_with_core(cfg, model, optimizer, scheduler, batches, val_seqs, train_seqs, device, precision, run_dir,
                   resume, max_steps, accum, world, rank) -> dict:
    from trainstack.loop import fit

    loop_cfg = build_loop_config(cfg, max_steps, accum)
    loss_fn = make_loss_fn(cfg, device)

    def run_eval(m):
        return evaluate(_unwrap(m), val_seqs, cfg, device, precision)

    resume_arg = False if not resume else (True if resume == "auto" else Path(resume))  # checked in train()
    if not resume_arg and cfg.eval_every_steps and rank == 0 and not cfg.fast_dev_run:
        # the untrained baseline, so "perplexity falls" is visible in the log itself
        base = evaluate(model, val_seqs, cfg, device, precision)
        with open(run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps({"step": 0, **base}) + "\n")
    mean_len = float(np.mean([min(len(s) + 2, cfg.data.max_length) for s in (train_seqs or val_seqs)]))
    # logged tokens are summed over ranks; dividing the FLOPs by the world size keeps MFU per GPU
    # A saved data position only means something on the same sequences cut into the same batches.
    fingerprint = {"max_length": cfg.data.max_length, "task": cfg.task,
                   "batching": [cfg.batch.max_tokens_per_batch, accum, cfg.overfit_batches],
                   "train_sequences": len(train_seqs), "data": files_fingerprint([cfg.data.train or str(SAMPLE_FASTA)])}
    result = fit(model=model, optimizer=optimizer, scheduler=scheduler, train_batches=batches, loss_fn=loss_fn,
                 config=loop_cfg, run_dir=run_dir, precision=precision, evaluate=run_eval if val_seqs else None,
                 flops_per_token=esm_flops_per_token(model.backbone.config, mean_len) / world, resume=resume_arg,
                 overwrite=cfg.overwrite, resume_fingerprint=fingerprint,
                 ignore_resume_mismatch=cfg.ignore_resume_mismatch,
                 resume_hint=RESUME_HINT)
    evals = [r for r in result.history if any(k.startswith("eval_") for k in r)]
    metrics = {k: v for k, v in evals[-1].items() if k.startswith("eval_")} if evals else {}
    if rank == 0 and result.interrupted:
        # fit saved a resumable checkpoint; a half-trained model is not exported as final
        print(f"stopped at step {result.steps}; checkpoint {result.checkpoint}; continue with --resume auto")
    elif rank == 0:
        export_final(model, cfg, run_dir / "final", metrics)
        print(f"done: {result.steps} steps; final model in {run_dir / 'final'}; {json.dumps(metrics)}")
    return {"steps": result.steps, "metrics": metrics, "history": result.history, "run_dir": str(run_dir),
            "interrupted": result.interrupted}


def _log(rank: int, path: Path, rec: dict, history: list, pbar) -> None:
    history.append(rec)
    if rank != 0:
        return
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
    short = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items()
             if k in ("loss", "eval_perplexity", "eval_masked_accuracy", "ae_loss", "eval_ae_loss", "tokens_per_s")}
    pbar.write(f"step {rec['step']}: {short}")


def train_from_cli(profile: str | None, overrides: list[str], resume: str | None = None) -> dict:
    from trainstack.config import load_config
    from trainstack.hardware import detect_hardware, pick_profile, why_not_fits

    from esm2ae.profiles import get_profile, shipped_profiles

    hw = detect_hardware()
    prof = get_profile(profile) if profile else pick_profile(shipped_profiles(), hw)
    print(f"profile: {prof.name} ({prof.path})")
    for reason in why_not_fits(prof, hw):
        print(f"warning: profile {prof.name} does not fit this machine: {reason}")
    cfg = load_config(Config, prof.settings, overrides)
    return train(cfg, resume=resume)


def evaluate_checkpoint(checkpoint: str, data: str, device: str = "auto") -> dict:
    from trainstack.precision import resolve_precision

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    model, meta = load_for_inference(checkpoint, dev)
    records, report = read_sequences(data, meta.get("max_length", 512))
    print(f"data: {report.summary()}")
    seqs = [w for r in records for w in split_windows(r.sequence, meta.get("max_length", 512))]
    cfg = Config(task="joint" if meta.get("task", "mlm") != "mlm" else "mlm")
    cfg.data.max_length = meta.get("max_length", 512)
    cfg.model.compile = False
    metrics = evaluate(model, seqs, cfg, dev, resolve_precision("auto" if dev.type == "cuda" else "fp32"))
    print(json.dumps(metrics))
    return metrics
