"""The esm2ae config schema: dataclass defaults (the ESM-2 paper's recipe) <- a hardware profile's
`settings:` <- dotted overrides on the command line (`optim.lr=3e-4`), checked by core's config."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from trainstack.config import check_limits
from trainstack.runlog import check_report_to


@dataclass
class ModelConfig:
    name: str = "esm2_t33_650M"
    """ESM-2 size (esm2_t6_8M ... esm2_t36_3B, esm2_tiny), a hub id, or a local HF directory."""
    pretrained: bool = False
    """Start from the published weights (hub id or ESM-2 size): weights that cannot be loaded stop the
    run with one line, never a random start. False: random init (the paper trains from scratch). A
    local HF directory is always loaded."""
    attention: Literal["auto", "flash", "fa4", "varlen", "flex", "sdpa"] = "auto"
    """auto on GPUs of compute capability 8.0+: FlashAttention-4 on Hopper if installed (`pip install
    'esm2ae[fa4]'`), else flash-attn 2's varlen kernel if installed, else PyTorch's own (varlen, torch >=
    2.10), else FlexAttention; SDPA (dense block mask) below sm_80 and on CPU. flash, fa4 and varlen
    fail at start-up where they cannot run."""
    compile: bool = True
    """torch.compile the layer function: one graph shared by every layer, compiled once, and kept in the
    compile cache on disk (TRAINSTACK_CACHE_DIR, default ~/.cache/trainstack) so a second run starts warm.
    On CUDA; on CPU only with a tracing compile_backend."""
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"
    """inductor generates fused kernels (CUDA); aot_eager and eager trace the same graphs without generating
    code: for finding a compile problem, and for CPU tests of the compiled path."""
    compile_mode: Literal["default", "autotune-pointwise", "coordinate-descent",
                          "max-autotune-no-cudagraphs"] = "autotune-pointwise"
    """Inductor's mode for the layer. autotune-pointwise: Inductor's default mode with more block sizes
    timed for each generated (norm, GELU, rotary) kernel on its first call, the choice kept in the compile
    cache (650M on an H200, against default on the same machine: 1.4% more tokens/s at 65,536-token
    micro-batches, 1.7% at 32,768; warm start 10.7-12.0 s, cold 34-53 s; BENCHMARKS.md). default: the
    block sizes from Inductor's heuristics, no timing. coordinate-descent: each such kernel's block sizes
    searched further (also 1.7% at 32,768 tokens, the first step after 169 s instead of 27 cold; at 65,536
    over 190 s: for long runs). max-autotune-no-cudagraphs: also each matmul timed against Triton templates,
    which could take the bias and GELU into its epilogue; on an H200 cuBLAS won every matmul of 650M by
    6-22% and autotuning passed 5 minutes."""
    gradient_checkpointing: bool = False
    residual_dtype: Literal["fp32", "autocast"] = "autocast"
    """The dtype of the residual stream between layers when training under mixed precision. autocast:
    the autocast dtype (bf16), as Megatron-style trainers (BioNeMo's ESM-2) keep it: the residual adds
    and LayerNorm inputs move half the bytes (650M on an H200: 3.3% more tokens/s, 2.6 GiB less;
    BENCHMARKS.md). fp32: HF's numerics under autocast (fp32 embeddings, fp32 sums); the Turing (fp16)
    profiles keep it. With fp32 weights and no autocast (CPU) both are fp32; embedding and inference
    (`esm2ae embed`) keep fp32."""


@dataclass
class DataConfig:
    train: str = ""
    """FASTA (.fa/.fasta, optionally .gz) or parquet with a `sequence` column."""
    val: str | None = None
    """Held-out file; when absent, `val_fraction` of the training records are held out."""
    val_fraction: float = 0.01
    max_val_sequences: int = 2000
    max_length: int = 512
    """Tokens per sequence including <cls>/<eos>; longer ones are cropped at random each epoch."""
    mask_prob: float = 0.15
    streaming: bool = False
    """Stream parquet through core's ParquetStream instead of loading it (files larger than RAM)."""
    limit: int | None = None


@dataclass
class BatchConfig:
    tokens_per_step: int = 2_097_152
    """Real tokens per optimizer step (paper: ~2M); accumulation is derived from it."""
    max_tokens_per_batch: int = 16384
    """Tokens in one packed micro-batch per GPU (the memory knob)."""

    def grad_accum_steps(self, world_size: int = 1) -> int:
        return max(1, math.ceil(self.tokens_per_step / (self.max_tokens_per_batch * world_size)))


@dataclass
class OptimConfig:
    name: Literal["adamw", "adam", "adamw8bit", "adafactor"] = "adamw"
    lr: float = 4e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_steps: int = 2000
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    lr_floor: float = 0.1
    """Fraction of the peak lr at the end of the run (paper: 1/10)."""
    fused: bool | None = None
    max_grad_norm: float | None = 1.0


@dataclass
class AEConfig:
    widths: list[int] = field(default_factory=lambda: [768, 512, 256, 128])
    """Encoder widths after the backbone's hidden size; the decoder mirrors them."""
    pooling: Literal["mean", "cls"] = "mean"
    mlm_weight: float = 1.0
    ae_weight: float = 1.0
    lr: float | None = None
    """AE learning rate when the backbone is frozen (defaults to optim.lr)."""


@dataclass
class DeepSpeedConfig:
    enabled: bool = False
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: Literal["none", "cpu"] = "none"
    overlap_comm: bool = True
    contiguous_gradients: bool = True
    reduce_bucket_size: int = 200_000_000
    allgather_bucket_size: int = 200_000_000
    cpu_adam: bool = True
    """With CPU offload: DeepSpeedCPUAdam (builds a C++ op on first use, 1-5 min) when true;
    torch AdamW on the offloaded fp32 partitions (no build, slower step) when false."""
    loss_scale_window: int = 1000
    initial_scale_power: int = 16


@dataclass
class Config:
    task: Literal["mlm", "ae", "joint"] = "mlm"
    """mlm: pretrain the backbone; ae: train the autoencoder on a frozen backbone; joint: both."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ae: AEConfig = field(default_factory=AEConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    max_steps: int = 500_000
    log_every_steps: int = 10
    eval_every_steps: int = 1000
    save_every_steps: int = 5000
    keep_last: int = 2
    save_checkpoints: bool = True
    """False: no periodic checkpoints (benchmarks, smoke runs); the final export is still written,
    and core's loop still writes one resumable checkpoint at the last step (with DeepSpeed too).
    SIGINT/SIGTERM save one either way."""
    seed: int = 0
    fast_dev_run: bool = False
    """One optimizer step of one micro-batch, one eval batch."""
    overfit_batches: int = 0
    """Train on the first N micro-batches only (same crops and masks each epoch)."""
    run_dir: str = "runs/esm2ae"
    device: str = "auto"
    overwrite: bool = False
    """Start afresh in a run_dir that holds another run's checkpoints: removes its checkpoints and logs
    (other files stay). Without it such a start is refused; --resume continues that run instead."""
    ignore_resume_mismatch: bool = False
    """--resume even though the data, max_length, task or batching differ from the checkpoint's."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Where log.jsonl's numbers also go: tensorboard (RUN_DIR/tb), wandb (pip install
    'trainstack-core[wandb]'; W&B's own WANDB_* variables set project and mode), or [none]."""

    def __post_init__(self):
        self.report_to = check_report_to(self.report_to) or ["none"]
        check_limits(self, {
            "max_steps": ">= 1", "optim.lr": "> 0", "optim.eps": "> 0", "optim.weight_decay": ">= 0",
            "optim.warmup_steps": ">= 0", "optim.lr_floor": ">= 0", "optim.max_grad_norm": ">= 0",
            "batch.tokens_per_step": ">= 1", "batch.max_tokens_per_batch": ">= 1",
            "data.val_fraction": ">= 0", "data.max_val_sequences": ">= 0", "data.limit": ">= 1",
            "ae.lr": "> 0", "ae.mlm_weight": ">= 0", "ae.ae_weight": ">= 0",
            "log_every_steps": ">= 1", "eval_every_steps": ">= 0", "save_every_steps": ">= 0", "keep_last": ">= 0",
            "overfit_batches": ">= 0",
        })
        if not 8 <= self.data.max_length <= 1024:
            raise ValueError(f"data.max_length={self.data.max_length}: must be in [8, 1024] "
                             "(ESM-2 has 1026 rotary-free positions; the paper crops at 1024)")
        if self.batch.max_tokens_per_batch < self.data.max_length:
            raise ValueError(f"batch.max_tokens_per_batch={self.batch.max_tokens_per_batch} is smaller than "
                             f"data.max_length={self.data.max_length}: one sequence must fit a micro-batch")
        if not 0 < self.data.mask_prob < 1:
            raise ValueError(f"data.mask_prob={self.data.mask_prob}: must be in (0, 1)")
        if not self.ae.widths:
            raise ValueError("ae.widths: at least one width")


def deepspeed_json(cfg: Config, precision_name: str, grad_accum: int, world_size: int = 1) -> dict:
    """The DeepSpeed config implied by the esm2ae config (ZeRO stage, offload, precision)."""
    ds = cfg.deepspeed
    zero = {"stage": ds.zero_stage, "overlap_comm": ds.overlap_comm,
            "contiguous_gradients": ds.contiguous_gradients,
            "reduce_bucket_size": ds.reduce_bucket_size, "allgather_bucket_size": ds.allgather_bucket_size}
    if ds.offload_optimizer == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    out = {
        # A packed micro-batch is one row of a variable number of sequences: DeepSpeed counts
        # "samples" as rows. train_batch_size is left for DeepSpeed to derive (micro * accum * world)
        # so the same JSON is valid at any world size.
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": grad_accum,
        "zero_optimization": zero,
        "gradient_clipping": cfg.optim.max_grad_norm or 0.0,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": ds.cpu_adam,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if precision_name == "fp16":
        out["fp16"] = {"enabled": True, "loss_scale": 0, "loss_scale_window": ds.loss_scale_window,
                       "initial_scale_power": ds.initial_scale_power, "hysteresis": 2, "min_loss_scale": 1}
    elif precision_name == "bf16":
        out["bf16"] = {"enabled": True}
    return out
