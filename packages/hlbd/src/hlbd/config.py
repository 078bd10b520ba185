"""The typed config of an hlbd run: dataclass defaults <- recipe YAML (profiles/) <- key=value overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trainstack.config import check_limits
from trainstack.runlog import check_report_to
from trainstack.speed import SpeedConfig

from hlbd.data import DEFAULT_SOURCES, DEFAULT_TARGET, FIELDS


@dataclass
class DataConfig:
    path: str = ""
    """HLBD .txt / .json / .jsonl; empty = the bundled sample (12 concepts)."""
    sources: list[str] = field(default_factory=lambda: list(DEFAULT_SOURCES))
    """Fields used as inputs (emoji, phrase, english, pinyin, japanese, korean, card, math)."""
    targets: list[str] = field(default_factory=lambda: [DEFAULT_TARGET])
    language_tags: bool = True
    """Start each source with a tag token naming its field (<en>, <py>, ...), as the users do."""
    pad_to: int = 0
    """Pad every sequence to this length (the users pad to 64); 0 = the longest in the data."""
    batching: Literal["random", "length", "auto"] = "random"
    """random: shuffled batches of fixed width (no host work per batch; what a GPU wants).
    length: batches of similar source length, trimmed to their longest (saves real compute on CPU,
    but builds each batch on the host). auto: length on CPU, random on GPU."""

    def __post_init__(self):
        for f in (*self.sources, *self.targets):
            if f not in FIELDS:
                raise ValueError(f"unknown field {f!r} in data.sources/targets; allowed: {', '.join(FIELDS)}")


@dataclass
class ModelConfig:
    d_model: int = 256
    n_heads: int = 8
    n_encoder_layers: int = 3
    n_decoder_layers: int = 3
    d_ff: int = 1024
    dropout: float = 0.1
    max_len: int = 64
    attention: Literal["standard", "autopoietic"] = "standard"
    padding_masks: bool = True
    """False reproduces the users' loop, which passes no padding masks at all."""
    embed_init_std: float = 0.02
    """The users' 0.02 leaves the tied output logits tiny and the tokens drowned by the positions."""
    scale_embeddings: bool = False
    """Multiply input embeddings by sqrt(d_model), the usual companion of tied embeddings."""
    checkpointing: bool = False
    """Gradient checkpointing: each encoder and decoder layer recomputes its activations in the
    backward pass (torch.utils.checkpoint, non-reentrant) instead of keeping them. Less activation
    memory for about one more forward pass of compute; the same losses and gradients. One of the
    users' proposed speed-ups; off by default, as the saving on this small model is not measured."""


@dataclass
class OptimConfig:
    name: Literal["adam", "adamw", "adamw8bit"] = "adamw"
    """adamw8bit: bitsandbytes' AdamW with 8-bit states (pip install 'hlbd[bnb]'; a GPU optimizer)."""
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0
    floor: float = 0.0
    decay_all_params: bool = False
    """Apply weight_decay to biases and norm weights too, as the users' Adam(model.parameters(),
    weight_decay=0.01) does; core's default leaves 1-D parameters undecayed."""


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 64
    grad_accum_steps: int = 1
    epochs: int = 100
    max_grad_norm: float = 1.0
    """0 disables clipping."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    """Core's fast path (compile, CUDA graphs, length buckets); auto = on with CUDA. On the GPU every
    batch has one shape (random batching, the last batch padded with empty rows), so the step
    compiles and is captured once."""
    stop_at_exact_match: float = 0.95
    """Stop once teacher-forced exact match on the training pairs reaches this; 0 = run all epochs."""
    eval_every_epochs: int = 1
    save_every_epochs: int = 0
    """Also checkpoint every N epochs (0 = only at the end and on SIGINT/SIGTERM)."""
    seed: int = 0
    threads: int = 0
    """CPU threads for torch; 0 = torch's default."""
    run_dir: str = "runs/hlbd"
    overwrite: bool = False
    """Start afresh in a run_dir that holds another run's checkpoints: removes its checkpoints and log
    (other files stay). Without it such a start is refused; --resume continues that run instead."""
    ignore_resume_mismatch: bool = False
    """--resume even though the data file or vocabulary differs from the checkpoint's."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Where log.jsonl's numbers also go: tensorboard (run_dir/tb), wandb (pip install
    'trainstack-core[wandb]'; W&B's own WANDB_* variables set project and mode), or [none]."""

    def __post_init__(self):
        check_limits(self, {
            "batch_size": ">= 1", "grad_accum_steps": ">= 1", "epochs": ">= 1", "eval_every_epochs": ">= 1",
            "save_every_epochs": ">= 0", "max_grad_norm": ">= 0", "threads": ">= 0",
            "optim.lr": "> 0", "optim.weight_decay": ">= 0", "optim.warmup_steps": ">= 0",
            "model.d_model": ">= 1", "model.n_heads": ">= 1", "model.d_ff": ">= 1", "model.max_len": ">= 2",
            "model.n_encoder_layers": ">= 1", "model.n_decoder_layers": ">= 1",
            "model.dropout": ">= 0", "data.pad_to": ">= 0",
        })
        self.report_to = check_report_to(self.report_to) or ["none"]
        if not 0.0 <= self.stop_at_exact_match <= 1.0:
            raise ValueError(f"stop_at_exact_match is a fraction in [0, 1], got {self.stop_at_exact_match}")
