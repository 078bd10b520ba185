"""The typed config of a chat-pretrain run: dataclass defaults <- a shipped config (YAML) <- overrides.

    chat-pretrain train --profile large data.train_files=[data/train.parquet] epochs=5 optim.lr=2e-4

The users' flag spellings are accepted as aliases (`--learn_rate=2e-4`, `--batch_size_per_gpu=24`,
`--use_large_config=True`, `--is_keep_training=True`): ``users_flags`` rewrites them into the shared
grammar before the command line is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trainstack.config import ConfigError, check_limits
from trainstack.runlog import check_report_to
from trainstack.speed import SpeedConfig as CoreSpeedConfig


@dataclass
class ModelConfig:
    name: str = "chatlm-0.2b"
    """A shipped model config (`chatlm-0.2b`, `tiny`), a local directory with config.json (and
    weights, which are loaded when present), or a model on the Hugging Face hub (weights loaded)."""
    attn_implementation: Literal["auto", "sdpa", "eager"] = "auto"
    """auto: SDPA when the installed transformers supports it for T5, eager otherwise."""
    dropout_rate: float = 0.1


@dataclass
class TokenizerConfig:
    path: str = ""
    """tokenizer.json or a directory holding one (e.g. path/to/chatlm-tokenizer)."""
    fix_metaspace: bool = True
    """Drop a Metaspace pre-tokenizer whose replacement character is not in the vocab (the ChatLM
    defect that puts an [UNK] before every pre-token)."""


@dataclass
class DataConfig:
    train_files: list[str] = field(default_factory=list)
    """Parquet files or directories (every *.parquet inside, sorted)."""
    valid_files: list[str] = field(default_factory=list)
    prompt_column: str = "prompt"
    response_column: str = "response"
    id_column: str = ""
    """Optional row-id column carried into each batch as `row_ids` (debugging, resume checks)."""
    max_seq_len: int = 192
    """Token-level truncation of prompt and response (EOS included)."""
    batch_size: int = 32
    """Rows per micro-batch at full length: the token budget is batch_size * max_seq_len tokens per
    side (padding counted), so short rows make bigger batches and no batch exceeds the users' shape."""
    pad_to_multiple_of: int = 8
    """Round each batch's padded width up to a multiple of this (tensor-core and SDPA-kernel friendly
    shapes, fewer distinct shapes); 1 disables."""
    max_batch_rows: int = 0
    """Upper bound on rows per micro-batch (0: batch_size * 8)."""
    bucket_rows: int = 4096
    """Rows tokenized and cut into batches together (bounded RAM: about 6 MB per 1,000 rows of
    60-character text). More rows leave fewer short batches (filled with filler rows on the fast path)."""
    shuffle_buffer: int = 5000
    read_batch_rows: int = 1024
    on_bad_row: Literal["skip", "error"] = "skip"
    """Null or empty prompt/response: count and skip, or stop with the file and row."""
    num_workers: int = 0
    """Must be 0: rows are read and tokenized in the training process so the saved data position is
    exact at every step (loader workers keep positions of their own); tokenizing a micro-batch costs
    about a millisecond. Kept as a field so the users' low-memory setting can be written down."""

    def __post_init__(self):
        # Ranges are checked in TrainConfig, which knows the dotted keys.
        if self.num_workers != 0:
            raise ValueError(f"data.num_workers must be 0 (rows are read in the training process so the data "
                             f"position is exact), got {self.num_workers}")


@dataclass
class OptimConfig:
    name: Literal["adamw", "adafactor"] = "adamw"
    lr: float = 1e-4
    """Peak learning rate, warmed up and decayed by `schedule`. With adafactor (torch.optim.Adafactor) it
    is the step size relative to each parameter's RMS: torch takes min(lr, 1/sqrt(step)), which is lr
    for the first 1/lr^2 steps, so the lr and its schedule are honoured (the users' relative-step
    Adafactor ignored both)."""
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 1024
    floor: float = 0.0


@dataclass
class EvalConfig:
    every_steps: int = 0
    """0: at each epoch end."""
    max_rows: int = 0
    """0: the whole validation set."""
    batch_size: int = 64
    num_beams: int = 1
    max_new_tokens: int = 0
    """0: data.max_seq_len."""
    bleu: bool = True


@dataclass
class SpeedConfig(CoreSpeedConfig):
    """Core's fast path (trainstack.speed): with `auto`, one CUDA process runs a compiled step
    replayed as CUDA graphs, several CUDA processes a compiled model, the CPU the eager step. The
    line "speed: ..." at start-up says which runs; "batches: ..." the shapes."""
    length_buckets: str = "multiple:32"
    """Padded lengths per side (prompt, response): multiple:N, pow2, a comma list, or off. Batches are
    grouped by them on every path, so the fast and the eager path train on the same rows together:
    rows of one (prompt bucket, response bucket) pair, as many as the token budget allows at the wider
    bucket (rounded down to a multiple of 8), plus leftover rows of smaller pairs. The fast path pads
    each side to its bucket and fills a bucket of rows' one short batch with filler rows (no targets,
    no loss): one shape per pair. off: plain token-budget batches padded to their longest row (every
    multiple of data.pad_to_multiple_of is then a new shape for the fast path)."""
    compile_dynamic: bool = True
    """Compile once for every batch shape (symbolic sizes), instead of once per shape: multiple:32 at
    max_seq_len 192 gives up to 36 shapes, and tracing the 0.2B T5's step alone took 18-36 s per shape
    on a 2-core CPU, before any code generation. CUDA graphs still capture each shape (about one step
    each). false: shape-specialised kernels, one compilation per shape."""
    shared_length: bool = False
    """Pad the prompt and the response to the same bucket (the longer side's): one shape per bucket
    instead of one per pair of buckets; more padding wherever the two sides' lengths differ."""


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    run_dir: str = "runs/chat-pretrain"
    epochs: int = 1
    max_steps: int = 0
    """0: epochs * steps per epoch."""
    grad_accum_steps: int = 1
    max_grad_norm: float = 1.0
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    log_every_steps: int = 100
    save_every_steps: int = 5000
    keep_last: int = 2
    keep_best: int = 5
    memory_log_every_steps: int = 200
    cleanup_every_steps: int = 0
    seed: int = 42
    dist_timeout_s: int = 1800
    """How long a collective waits for the slowest process (a long evaluation or save on rank 0) before
    a multi-GPU run fails; the users' recipe sets 1800 s (torch's NCCL default is 600)."""
    overwrite: bool = False
    """Start afresh in a run_dir that holds another run's checkpoints: removes its checkpoints and logs
    (other files stay). Without it such a start is refused; --resume continues that run instead."""
    ignore_resume_mismatch: bool = False
    """--resume even though the data files, vocabulary, max_seq_len or batching differ from the checkpoint's."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Where log.jsonl's numbers also go: tensorboard (RUN_DIR/tb), wandb (pip install
    'trainstack-core[wandb]'; W&B's own WANDB_* variables set project and mode), or [none]."""

    def __post_init__(self):
        self.report_to = check_report_to(self.report_to) or ["none"]
        check_limits(self, {
            "data.max_seq_len": ">= 2",  # one token plus EOS
            "data.batch_size": ">= 1", "data.pad_to_multiple_of": ">= 1", "data.max_batch_rows": ">= 0",
            "data.bucket_rows": ">= 1", "data.shuffle_buffer": ">= 0", "data.read_batch_rows": ">= 1",
            "optim.lr": "> 0", "optim.weight_decay": ">= 0", "optim.warmup_steps": ">= 0", "optim.floor": ">= 0",
            "eval.every_steps": ">= 0", "eval.max_rows": ">= 0", "eval.batch_size": ">= 1", "eval.num_beams": ">= 1",
            "eval.max_new_tokens": ">= 0", "model.dropout_rate": ">= 0",
            "epochs": ">= 1", "max_steps": ">= 0", "grad_accum_steps": ">= 1", "max_grad_norm": ">= 0",
            "log_every_steps": ">= 1", "save_every_steps": ">= 0", "keep_last": ">= 0", "keep_best": ">= 0",
            "memory_log_every_steps": ">= 0", "cleanup_every_steps": ">= 0", "dist_timeout_s": ">= 1",
        })


# The users' flag names (their train.py / TrainConfig) -> our dotted keys.
ALIASES = {
    "learn_rate": "optim.lr",
    "lr": "optim.lr",
    "batch_size_per_gpu": "data.batch_size",
    "gradient_accumulation_steps": "grad_accum_steps",
    "max_seq_len": "data.max_seq_len",
    "warmup_steps": "optim.warmup_steps",
    "save_steps": "save_every_steps",
    "logging_steps": "log_every_steps",
    "keep_latest_n_ckp": "keep_best",
    "train_file": "data.train_files",
    "validation_file": "data.valid_files",
    "tokenizer_dir": "tokenizer.path",
    "output_dir": "run_dir",
    "seed": "seed",
}

_TRUE = {"true", "1", "yes", "on"}
# Flags of the shared grammar (trainstack.task_cli): left for the parser.
_GRAMMAR_FLAGS = {"--profile", "--resume", "--help-config", "--help", "-h", "--no-progress"}


LOW_RAM_BELOW_GIB = 15.0
"""The users' rule: under 15 GB of host RAM the large config runs in low-memory mode."""


def profile_for_host_ram(profile: str, ram_gib: float) -> tuple[str, str | None]:
    """(the profile to run, the line that says why it changed, or None). ``large`` on a host with less
    than LOW_RAM_BELOW_GIB of RAM becomes ``low-ram-12g`` (the same training settings, rows read in
    small batches, caches cleared every 50 steps, memory logged every 200), as the users' recipe does."""
    if profile == "large" and ram_gib < LOW_RAM_BELOW_GIB:
        return "low-ram-12g", (f"host RAM {ram_gib:.1f} GiB < {LOW_RAM_BELOW_GIB:.0f} GB: low-RAM mode, profile "
                               "low-ram-12g (the large settings with bounded host memory); to keep the large profile's "
                               "buffers, save it (chat-pretrain profiles show large > large.yaml) and pass "
                               "--profile large.yaml")
    return profile, None


def users_flags(argv: list[str]) -> list[str]:
    """The users' command line -> the shared grammar: `--use_large_config[=True]` -> `--profile large`,
    `--is_keep_training[=True]` -> `--resume` (`=False`: nothing), and any other `--key=value` or
    `--key value` -> the override `key=value`, through ALIASES (`--learn_rate=2e-4` -> `optim.lr=2e-4`)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        name, eq, value = token.partition("=")
        if not token.startswith("--") or name in _GRAMMAR_FLAGS:
            out.append(token)
            continue
        key = name[2:].replace("-", "_")
        if key in ("is_keep_training", "use_large_config"):
            if not eq or value.strip().lower() in _TRUE:
                out.extend(["--resume"] if key == "is_keep_training" else ["--profile", "large"])
            continue
        if not eq:
            if i >= len(argv):
                raise ConfigError(f"{token} needs a value (e.g. {token}=5)")
            value = argv[i]
            i += 1
        out.append(f"{ALIASES.get(key, key)}={value}")
    return out


def load_train_config(profile: str, overrides=()) -> TrainConfig:
    """The config `chat-pretrain train --profile PROFILE OVERRIDES` runs (for bench and tools)."""
    from trainstack.config import load_config
    from trainstack.hardware import choose_profile, load_profiles

    from chat_pretrain.profiles import profile_dir

    chosen, _ = choose_profile(profile, load_profiles(profile_dir()))
    return load_config(TrainConfig, chosen.settings, list(overrides))
