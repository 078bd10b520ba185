"""The whole esm2ae training job, top to bottom.

    esm2ae train --profile h100-80g data.train=uniref50.fasta.gz            # one GPU
    torchrun --nproc_per_node 2 -m esm2ae train --profile 2x-rtx2080s-8g data.train=u50.parquet
    # several machines: on each, the same command (run_dir on a filesystem they all see; README)
    torchrun --nnodes 2 --nproc_per_node 2 --rdzv_backend c10d --rdzv_endpoint HOST:29500 -m esm2ae train ...
    esm2ae train --profile rtx3080-10g data.train=u50.parquet               # one GPU, DeepSpeed ZeRO-2 offload
    esm2ae train --profile cpu-debug                                         # CPU, shipped sample
    esm2ae train --profile cpu-debug task=ae model.name=runs/cpu-debug/final # AE on a frozen backbone

Steps: config (profile <- overrides) -> hardware, precision (printed with the reason) -> data
(validated, held-out split) -> model (HF ESM-2 weights, packed forward) -> optimizer and the
paper's schedule (built after the model is on its device: fused AdamW on CUDA; the line
"optimizer: ..." names what runs) -> core's fit with token-budget micro-batches and derived
accumulation, through DeepSpeed when the profile asks -> eval (perplexity, masked accuracy, AE loss)
-> checkpoints -> final export.

core (trainstack) supplies config, hardware, precision, optimizer, schedule, the loop (fit: DDP or a
DeepSpeed engine through accelerate, autocast, accumulation, crash-safe checkpoints, JSONL logs) and
throughput. There is one training loop: DeepSpeed runs (the 8-10 GB profiles) go through the same fit.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from pathlib import Path

import numpy as np
import torch
from trainstack.checkpoint import checkpoint_dirs, files_fingerprint
from trainstack.loop import check_run_dir, clear_run_outputs

from esm2ae.config import Config, deepspeed_json
from esm2ae.data import PackedMLMBatches, check_parquet_source, read_sequences, split_windows, train_val_split
from esm2ae.model import SPLIT_BACKENDS, Esm2AE, esm_flops_per_token, load_esm

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
                               fixed_len=compiles(cfg, device))
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

def compiles(cfg: Config, device: torch.device) -> bool:
    """Whether the layer runs compiled: on CUDA when model.compile asks; on CPU only with a tracing
    backend (Inductor's CPU code costs more to compile than it saves here)."""
    return cfg.model.compile and (device.type == "cuda" or cfg.model.compile_backend != "inductor")


def build_training_model(cfg: Config, device: torch.device, rank: int = 0):
    """(model, the part that trains, weight source), the model already on ``device`` so that the
    optimizer built next sees CUDA parameters and takes the fused kernel. A compiled layer keeps its
    graphs in core's compile cache on disk, so the next run with the same shapes starts warm."""
    from trainstack.speed import enable_compile_cache

    torch.manual_seed(cfg.seed + rank)
    hf, source = load_esm(cfg.model.name, cfg.model.pretrained, device=device)
    model = Esm2AE(hf, cfg.ae.widths, cfg.ae.pooling, cfg.model.attention).to(device)
    model.backbone.compile = compiles(cfg, device)
    model.backbone.compile_backend = cfg.model.compile_backend
    model.backbone.compile_mode = cfg.model.compile_mode
    if model.backbone.compile:
        enable_compile_cache()
    model.backbone.gradient_checkpointing = cfg.model.gradient_checkpointing
    model.backbone.residual_dtype = cfg.model.residual_dtype
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
    fixed_len = compiles(cfg, device)   # static shapes: one compiled graph
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
                      keep_last=cfg.keep_last, seed=cfg.seed, report_to=cfg.report_to)


# ------------------------------------------------------------------------------------- train

def resume_target(resume: str | None, run_dir: Path) -> str | None:
    """--resume checked before anything is read or written: asking to resume where there is nothing
    to resume is an error, never a silent fresh start."""
    from trainstack.checkpoint import checkpoint_dirs, latest_checkpoint, read_manifest
    from trainstack.config import ConfigError

    if not resume:
        return None
    root = run_dir / "checkpoints"
    if resume == "auto":
        if latest_checkpoint(root) is None:
            found = checkpoint_dirs(root)
            what = (f"complete checkpoint in {root} ({found[-1].name} has no valid manifest.json: a save that "
                    f"crashed, or one of esm2ae 0.1's DeepSpeed loop)" if found else f"checkpoint in {root}")
            raise ConfigError(f"--resume auto: no {what}; check run_dir, or drop --resume to start fresh")
        return resume
    if read_manifest(Path(resume)) is None:
        raise ConfigError(f"--resume {resume}: not a checkpoint, or not a complete one (expected a directory "
                          f"like {root / 'step-N'} holding a valid manifest.json)")
    return resume


def train(cfg: Config, resume: str | None = None) -> dict:
    import contextlib

    from trainstack.config import check_writable_dir, format_config, make_run_dir, save_config
    from trainstack.deepspeed_engine import deepspeed_accelerator
    from trainstack.hardware import detect_hardware
    from trainstack.loop import fit
    from trainstack.optim import describe_optimizer
    from trainstack.precision import apply_precision, resolve_precision
    from trainstack.speed import enable_compile_cache, process_start_clock

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
        backend = model.backbone.backend(device.type)
        print(f"model: {cfg.model.name} ({source} weights, {n_params / 1e6:.1f}M params), "
              f"attention {backend}, task {cfg.task}")
        if model.backbone.compile:
            graphs = ("one graph" if backend not in SPLIT_BACKENDS else
                      "two graphs around the attention call" if cfg.model.gradient_checkpointing else
                      "three graphs around the attention calls")
            # the mode is Inductor's; the tracing backends generate no kernels to tune
            mode = f", {cfg.model.compile_mode}" if cfg.model.compile_backend == "inductor" else ""
            print(f"compile: the layer function, {graphs} for all {model.backbone.config.num_hidden_layers} layers "
                  f"({cfg.model.compile_backend}{mode}); "
                  f"compile cache {enable_compile_cache()}")

    max_steps, accum = schedule_steps(cfg, world)
    optimizer, scheduler = build_optimizer_and_scheduler(cfg, trainable, max_steps)
    if rank == 0:
        print(f"optimizer: {describe_optimizer(optimizer)}")
        if cfg.deepspeed.enabled:
            print(f"deepspeed: ZeRO-{cfg.deepspeed.zero_stage}, optimizer offload {cfg.deepspeed.offload_optimizer}")

    if rank == 0 and cfg.overwrite and not resume and checkpoint_dirs(run_dir / "checkpoints"):
        # here, not in fit: the untrained baseline eval below goes into the fresh log
        print(f"overwrite: removed {len(clear_run_outputs(run_dir))} entries of the earlier run in {run_dir}")
    batches = build_train_batches(cfg, train_seqs, device, rank, world)
    loss_fn = make_loss_fn(cfg, device)

    def run_eval(m):
        return evaluate(_unwrap(m), val_seqs, cfg, device, precision)

    if not resume and cfg.eval_every_steps and rank == 0 and not cfg.fast_dev_run:
        # the untrained baseline, so "perplexity falls" is visible in the log itself
        base = evaluate(model, val_seqs, cfg, device, precision)
        with open(run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps({"step": 0, **base}) + "\n")
    mean_len = float(np.mean([min(len(s) + 2, cfg.data.max_length) for s in (train_seqs or val_seqs)]))
    # A saved data position only means something on the same sequences cut into the same batches.
    fingerprint = {"max_length": cfg.data.max_length, "task": cfg.task,
                   "batching": [cfg.batch.max_tokens_per_batch, accum, cfg.overfit_batches],
                   "train_sequences": len(train_seqs), "data": files_fingerprint([cfg.data.train or str(SAMPLE_FASTA)])}
    # DeepSpeed (ZeRO, optimizer offload: the 8-10 GB profiles) comes through accelerate's plugin into the
    # same fit; otherwise fit builds its own accelerator (one device, or DDP under torchrun).
    engine = (deepspeed_accelerator(deepspeed_json(cfg, precision.name, accum, world), precision)
              if cfg.deepspeed.enabled else contextlib.nullcontext())
    with engine as accelerator:
        result = fit(model=model, optimizer=optimizer, scheduler=scheduler, train_batches=batches, loss_fn=loss_fn,
                     config=build_loop_config(cfg, max_steps, accum), run_dir=run_dir, precision=precision,
                     accelerator=accelerator, evaluate=run_eval if val_seqs else None,
                     # logged tokens are summed over ranks; dividing the FLOPs by the world size keeps MFU per GPU
                     flops_per_token=esm_flops_per_token(model.backbone.config, mean_len) / world,
                     resume=False if not resume else (True if resume == "auto" else Path(resume)),
                     overwrite=cfg.overwrite, resume_fingerprint=fingerprint,
                     ignore_resume_mismatch=cfg.ignore_resume_mismatch, resume_hint=RESUME_HINT,
                     clock_start=process_start_clock())  # first_step_seconds: the wait since the command started

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
