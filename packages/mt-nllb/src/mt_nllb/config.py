"""The typed config of an mt-nllb run: dataclass defaults <- profile YAML <- dotted overrides.

    mt-nllb train --profile rtx4080s-16g data.train=wmt19 optim.lr=8e-5
    mt-nllb train --profile cpu-debug data.train=[path/to/pairs.tsv] model.name_or_path=tiny

Every switch that trades memory for speed is a key here, on by default only where measured to help
(BENCHMARKS.md has the measurements).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trainstack.config import ConfigError, check_limits
from trainstack.runlog import check_report_to
from trainstack.speed import LengthBuckets
from trainstack.speed import SpeedConfig as CoreSpeedConfig
from trainstack.speed.config import Switch


@dataclass
class ModelConfig:
    name_or_path: str = "facebook/nllb-200-distilled-600M"
    """Hub name or local HF model dir (pretrained weights), or a shipped architecture for random init:
    "nllb-600m" (full-size M2M100) or "tiny" (tests)."""
    tokenizer: str = ""
    """Tokenizer source: "" = from name_or_path (hub name or dir); "sample" = build a small
    character/word tokenizer over the training data (tests, offline runs with random init)."""
    src_lang: str = "zho_Hans"
    tgt_lang: str = "eng_Latn"
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    dropout: float | None = None
    """Overrides the model config's dropout when set."""
    attention_dropout: float | None = None
    """Overrides the model config's attention dropout when set (NLLB's is 0.1)."""


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=lambda: ["wmt19"])
    """Sources: hub names ("wmt19", "opus100") or files (.tsv, .jsonl, .parquet)."""
    caps: list[int] = field(default_factory=list)
    """Per-source caps, same order as `train` (0 = no cap). Users' recipe: [5000000, 500000]. Under
    selection=recipe a cap takes the first N rows of its source; under cleaned it counts pairs kept."""
    selection: Literal["recipe", "cleaned"] = "recipe"
    """How pairs are chosen from the sources.
    recipe: the users' steps. A cap takes the first N rows of its source (rows dropped later still
    count); the min_chars..max_chars filter applies only to the sources marked in `length_filter`
    (by default the OPUS-100 hub source, as in the recipe: WMT19 is taken as it is); no dedup.
    cleaned: ours. Every source is length-filtered, exact duplicate pairs are dropped across
    sources, and a cap counts the pairs kept (up to 0.1.0 the only behaviour).
    Under both, pairs with an empty side are dropped and counted as bad rows."""
    length_filter: list[bool] = field(default_factory=list)
    """selection=recipe only: per source, same order as `train`, whether the min_chars..max_chars
    filter applies (e.g. [false, true] for local copies of WMT19 and OPUS-100). Empty = the hub
    source opus100 only."""
    test: str = ""
    """Test file (or "wmt19" = newstest2018) evaluated at the end; empty = skip."""
    validation_rows: int = 2000
    """Held out from the selected training pairs."""
    min_chars: int = 10
    max_chars: int = 400
    max_length: int = 256
    """Token limit per side; longer pairs are truncated (and counted)."""
    dedup: bool | None = None
    """Drop exact duplicate pairs across sources. Unset = as `selection` says (recipe: no, cleaned: yes)."""
    src_key: str = "zh"
    tgt_key: str = "en"
    cache_dir: str = ""
    """Tokenized cache (parquet, keyed by a fingerprint). Empty = <run_dir>/../.mt-nllb-cache."""
    seed: int = 0


@dataclass
class OptimConfig:
    name: Literal["adamw", "adamw8bit", "adafactor"] = "adamw"
    lr: float = 8e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = 0.06


@dataclass
class SpeedConfig(CoreSpeedConfig):
    """Core's fast path (cuda_graphs, length_buckets, compile, ...; docs/core-api.md) plus this task's
    batching and loss switches. On one CUDA process the step is captured as CUDA graphs (one per
    padded shape) and replayed: the GPU no longer waits for Python to launch ~5,000 kernels a step."""
    compile: Switch = False
    """torch.compile the whole step, one compilation per padded shape (core's speed.compile). Off here:
    the 600M model's fwd+bwd takes minutes to compile for each of the dozen (source, target) bucket
    pairs; CUDA graphs remove the launch overhead without it, and compile_loss fuses the head's math."""
    length_buckets: str = "multiple:16"
    """Padded lengths on the fast path (core's speed.length_buckets), per side. multiple:16 keeps the
    padding under 16 tokens a side; each (source, target) bucket pair is one captured graph."""
    group_by: Literal["longest", "each_side"] = "longest"
    """How rows are grouped into batches. longest: sorted by a pair's longer side. each_side: by the
    length buckets of both sides (core's BatchShapes), so neither side pads far when source and target
    lengths differ (less padding, more padded shapes: one per bucket pair)."""
    max_tokens_per_batch: int = 12288
    """Token budget per micro-batch, padding counted (len(batch) * longest side)."""
    max_batch_size: int = 0
    """Cap on sentences per micro-batch (0 = none); with a fixed effective batch, set batch_size."""
    batch_size: int = 0
    """Fixed sentences per micro-batch instead of a token budget (0 = token budget). The fast path
    fills a short batch to this many rows (ignored filler rows), so the shapes stay few."""
    chunked_ce: bool = True
    """Chunked linear + label-smoothed cross-entropy: never materializes full fp32 logits."""
    ce_chunk_tokens: int = 2048
    """Rows of the LM head per chunk: the chunk's fp32 logits take rows x vocab x 4 bytes (1 GiB at 1024)."""
    head_row_multiple: int = 0
    """On the fast path (padded shapes), the LM head runs over the batch's real target tokens only,
    gathered on the device by positions the collate computed on the host and padded with ignored rows
    to a multiple of this many rows, so a captured step still sees few shapes (the gather length is
    part of the shape). 0: the head runs over every target position, padding masked. The head is a
    quarter of the step and ~21% of its rows were padding in the bench's length mix; the h100-80g
    profile sets 256: 67.8 -> 64.6 ms a step on an H200 (BENCHMARKS.md, run 8)."""
    liger_ce: bool = False
    """The LM head's loss by liger-kernel's fused linear + label-smoothed cross-entropy (Triton, CUDA
    only; pip install 'mt-nllb[gpu]') in place of the chunked path (speed.chunked_ce); same value,
    in chunks of at most ce_chunk_tokens rows where liger's sizing allows. Where it may help: a step
    that runs without CUDA graphs anyway (several processes, fp16 loss scaling, 8-bit optimizer
    states), if its kernel beats the chunk math (`mt-nllb bench --only fused-vs-chunked` compares
    them; not yet measured on a GPU). It turns CUDA graphs off (auto resolves to off, true is
    refused): its forward reads the count of real tokens back to the host on every call, which a
    captured graph cannot do."""
    triton_ce: Switch = "auto"
    """The chunked head's per-chunk loss and gradient by this package's Triton kernel (ce_kernel.py:
    one program per row, the gradient written over the chunk's logits) instead of torch ops, compiled
    or not (speed.compile_loss). auto: on with a CUDA device of compute capability 8.0 or newer and
    Triton importable (it comes with PyTorch's CUDA builds); older GPUs are untried. On an H200 the
    h100-80g step takes 61.6 instead of 63.7 ms (1,558 vs 1,508 samples/s; BENCHMARKS.md, run 9)."""
    compile_layers: Switch = False
    """torch.compile each encoder and decoder layer (dynamic lengths: one compilation per layer kind,
    shared by its 12 layers) to fuse the autocast casts, layer norms, dropout and residual adds.
    auto: on where the step is captured as CUDA graphs (the layers are compiled in the warm-up run,
    before the capture). The h100-80g profile sets true: 1,174 instead of 1,052 samples/s on an H200
    (BENCHMARKS.md, run 5); without graphs the compiled layers are host-bound."""
    compile_loss: Switch = "auto"
    """torch.compile the per-chunk loss/gradient math (two fused kernels instead of ~10 passes over
    the chunk's fp32 logits). auto: on with CUDA and the fast path, where the shapes are few; eagerly
    every batch has new shapes and the recompiles cost more than they save (H100, BENCHMARKS.md)."""
    symbolic_widths: bool = True
    """The compiled layers and chunk math: true compiles once with every size symbolic (rows, lengths,
    width, vocabulary); false compiles the first shape as it is and makes symbolic only the sizes
    that then change (lengths, rows), so the width (1024) and the vocabulary stay constants in the
    kernels' index math, for one more compilation each. The h100-80g profile sets false: 67.9 instead of
    71.1 ms a step on an H200 (BENCHMARKS.md, run 7)."""
    embedding_row_grads: Switch = "auto"
    """The encoder's and decoder's token lookups add their gradient rows into the shared embedding
    (and LM head) weight's gradient in place, instead of two dense 256k x 1024 gradients that autograd
    zero-fills and then sums with the head's (~4 GB of memory traffic a step). auto: on in one
    process unless speed.compile compiles the whole step; off under several, where
    DistributedDataParallel's hook could reduce that gradient before the rows arrive (true is refused
    there). 72.9 -> 71.1 ms a step on an H200 (BENCHMARKS.md, run 7)."""
    gradient_checkpointing: bool = False
    """Non-reentrant activation checkpointing. Not needed at batch 96 / 256 tokens with chunked CE."""
    params_dtype: Literal["fp32", "bf16"] = "fp32"
    """bf16 = weights in bf16 with fp32 optimizer math (pure bf16 training; smaller, less exact)."""


@dataclass
class EvalConfig:
    num_beams: int = 4
    max_new_tokens: int = 256
    batch_size: int = 32
    max_rows: int = 0
    """Rows of the validation set decoded at each eval (0 = all)."""
    bleu_tokenize: str = "13a"


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    label_smoothing: float = 0.1
    precision: str = "auto"
    epochs: int = 2
    max_steps: int = 0
    """0 = epochs * steps per epoch."""
    grad_accum_steps: int = 1
    max_grad_norm: float = 1.0
    log_every_steps: int = 50
    eval_every_steps: int = 2000
    save_every_steps: int = 2000
    keep_last: int = 1
    keep_best: int = 1
    seed: int = 42
    overwrite: bool = False
    """Start afresh in a --run-dir that holds another run's checkpoints: removes its checkpoints and logs
    (other files stay). Without it such a start is refused; --resume continues that run instead."""
    ignore_resume_mismatch: bool = False
    """--resume even though the data, vocabulary, max_length or batching differ from the checkpoint's."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Where log.jsonl's numbers also go: tensorboard (RUN_DIR/tb), wandb (pip install
    'trainstack-core[wandb]'; W&B's own WANDB_* variables set project and mode), or [none]."""

    def __post_init__(self):
        self.report_to = check_report_to(self.report_to) or ["none"]
        check_limits(self, {
            "optim.lr": "> 0", "optim.weight_decay": ">= 0", "optim.warmup_ratio": ">= 0",
            "speed.max_tokens_per_batch": ">= 1", "speed.max_batch_size": ">= 0", "speed.batch_size": ">= 0",
            "speed.ce_chunk_tokens": ">= 1", "speed.head_row_multiple": ">= 0", "data.validation_rows": ">= 0",
            "data.min_chars": ">= 0",
            "data.max_length": ">= 3",  # language code, one token, </s>
            "eval.num_beams": ">= 1", "eval.max_new_tokens": ">= 1", "eval.batch_size": ">= 1",
            "eval.max_rows": ">= 0", "epochs": ">= 1", "max_steps": ">= 0", "grad_accum_steps": ">= 1",
            "max_grad_norm": ">= 0", "log_every_steps": ">= 1", "eval_every_steps": ">= 0",
            "save_every_steps": ">= 0", "keep_last": ">= 0", "keep_best": ">= 0",
        })
        if any(cap < 0 for cap in self.data.caps):
            raise ConfigError(f"config key 'data.caps': row caps must be >= 0 (0 = no cap), got {self.data.caps}")
        if not self.speed.batch_size and self.speed.max_tokens_per_batch < self.data.max_length:
            # A pair may be data.max_length tokens long; it must fit one batch.
            raise ConfigError(f"config key 'speed.max_tokens_per_batch': {self.speed.max_tokens_per_batch} is below "
                              f"data.max_length={self.data.max_length}; raise it to at least that")
        if self.speed.group_by == "each_side" and LengthBuckets.parse(self.speed.length_buckets, self.data.max_length) is None:
            raise ConfigError("config key 'speed.group_by': each_side groups rows by speed.length_buckets, which is "
                              "off; set speed.length_buckets (multiple:16, say) or speed.group_by=longest")
        if self.speed.liger_ce and self.speed.cuda_graphs is True:
            raise ConfigError("config key 'speed.cuda_graphs': true cannot capture speed.liger_ce's loss (liger-kernel "
                              "reads the count of real tokens back to the host on every call); set "
                              "speed.cuda_graphs=auto or false, or speed.liger_ce=false")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.data.caps and len(self.data.caps) != len(self.data.train):
            raise ValueError(f"data.caps has {len(self.data.caps)} entries for {len(self.data.train)} sources")
        if self.data.length_filter and len(self.data.length_filter) != len(self.data.train):
            raise ConfigError(f"config key 'data.length_filter': {len(self.data.length_filter)} entries for "
                              f"{len(self.data.train)} sources in data.train; give one true/false per source")
        if self.data.length_filter and self.data.selection != "recipe":
            raise ConfigError("config key 'data.length_filter': applies to data.selection=recipe; "
                              "data.selection=cleaned filters every source")
        if self.data.min_chars > self.data.max_chars:
            raise ValueError("data.min_chars must be <= data.max_chars")
