"""run_translation.py's command line, on transformers 5.

Every argument of run_translation.py (model, data and Seq2SeqTrainingArguments) is accepted with
its meaning. Arguments that transformers 5 removed are either mapped (and said so in the log) or
refused with a one-line message naming what to use instead.

Ours on top: --force_fp16 (keep fp16 for T5 despite the overflow risk), --hardware_profile (also
spelled --profile, as in every trainstack package), --resume [auto|PATH] (the shared spelling of
--resume_from_checkpoint latest|PATH), --config_name with a shipped size name (t5-small, t5-large,
t5-3b, tiny-t5) and no --model_name_or_path for a random-init model of that size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


class ArgsError(ValueError):
    """A command-line problem; one line."""


LATEST = "latest"  # --resume_from_checkpoint latest: the newest complete checkpoint in --output_dir


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Hub name or local directory of a pretrained model."})
    config_name: str | None = field(
        default=None, metadata={"help": "Config path or name; shipped: t5-small, t5-large, t5-3b, tiny-t5. "
                                        "Without --model_name_or_path the model is randomly initialised."})
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer path or name (default: the model's, else the shipped tiny one)."})
    config_overrides: str | None = field(
        default=None, metadata={"help": "As in run_clm.py: 'd_model=256,initializer_factor=4.0' applied to the config "
                                        "(random init only)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where hub downloads are stored."})
    use_fast_tokenizer: bool = field(default=True, metadata={"help": "Kept for compatibility (always fast)."})
    model_revision: str = field(default="main", metadata={"help": "Hub revision."})
    token: str | None = field(default=None, metadata={"help": "Hub token."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow hub code (not needed for T5)."})


@dataclass
class DataTrainingArguments:
    source_lang: str = field(default=None, metadata={"help": "Source language id, e.g. en."})
    target_lang: str = field(default=None, metadata={"help": "Target language id, e.g. ro."})
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset, e.g. wmt16."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset config, e.g. ro-en."})
    train_file: str | None = field(default=None, metadata={"help": 'JSONL of {"translation": {src: .., tgt: ..}}.'})
    validation_file: str | None = field(default=None, metadata={"help": "JSONL like --train_file."})
    test_file: str | None = field(default=None, metadata={"help": "JSONL like --train_file."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Kept for compatibility (no cache is kept)."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Kept for compatibility."})
    max_source_length: int = field(default=1024, metadata={"help": "Source tokens kept (truncation)."})
    max_target_length: int = field(default=128, metadata={"help": "Target tokens kept in training."})
    val_max_target_length: int | None = field(
        default=None, metadata={"help": "Target tokens kept in eval; also the generation max length."})
    pad_to_max_length: bool = field(default=False, metadata={"help": "Pad every batch to the max lengths."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training pairs."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N validation pairs."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Keep the first N test pairs."})
    num_beams: int | None = field(default=None, metadata={"help": "Beams for eval/predict generation."})
    ignore_pad_token_for_loss: bool = field(default=True, metadata={"help": "Pad tokens do not count in the loss."})
    source_prefix: str | None = field(
        default=None, metadata={"help": 'Prefix added to sources, e.g. "translate English to Romanian: ".'})
    forced_bos_token: str | None = field(default=None, metadata={"help": "For multilingual models (mBART)."})


@dataclass
class ExtraArguments:
    force_fp16: bool = field(default=False, metadata={
        "help": "Run T5 in fp16 as asked (it overflows to NaN in fp16; without this --fp16 becomes bf16)."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Removed from transformers 5; here: remove from a non-empty --output_dir what t5-deepspeed wrote "
                "there (recorded in t5-deepspeed-outputs.json), keeping every other file."})
    hardware_profile: str | None = field(default=None, metadata={
        "help": "Shipped profile name, a YAML path, or 'auto': its settings become defaults."})
    ignore_resume_mismatch: bool = field(default=False, metadata={
        "help": "Resume even when the data files, languages, prefix or lengths differ from the checkpoint's run."})
    log_jsonl: bool = field(default=True, metadata={"help": "Write OUTPUT_DIR/log.jsonl."})
    bench_json: str | None = field(default=None, metadata={"help": "Internal (t5-deepspeed bench)."})
    bench_warmup_steps: int = field(default=5, metadata={"help": "Internal (t5-deepspeed bench)."})
    bench_profile_steps: int = field(default=0, metadata={
        "help": "Internal (t5-deepspeed bench --profile_steps): profile N optimizer steps after the warm-up."})
    ds_bucket_sizes: str = field(default="tuned", metadata={
        "help": "'tuned': a DeepSpeed config's \"auto\" gradient bucket sizes become a few buckets per step; "
                "'trainer': leave \"auto\" to the Trainer (d_model**2 elements).",
        "choices": ["tuned", "trainer"]})
    recipe: str = field(default="ours", metadata={
        "help": "'ours' (defaults below) or 'users' (plain Trainer settings, for t5-deepspeed bench).",
        "choices": ["ours", "users"]})


# Removed from TrainingArguments in transformers 5 -> the flag that replaces it. Mapped silently
# except for a log line; the value keeps its meaning.
RENAMED = {
    "evaluation_strategy": "eval_strategy",
    "no_cuda": "use_cpu",
    "per_gpu_train_batch_size": "per_device_train_batch_size",
    "per_gpu_eval_batch_size": "per_device_eval_batch_size",
    "push_to_hub_token": "hub_token",
    "warmup_ratio": "warmup_steps",  # warmup_steps now takes a float in [0, 1) as a ratio
    "dataset_config": "dataset_config_name",
}
# Removed with no same-meaning flag: the message says what to do instead.
REMOVED = {
    "fp16_backend": "mixed precision is chosen by --bf16/--fp16 (DeepSpeed's own when --deepspeed is set); drop it",
    "half_precision_backend": "mixed precision is chosen by --bf16/--fp16; drop it",
    "fp16_opt_level": "apex AMP is gone; use --bf16 (or --fp16 --force_fp16)",
    "logging_dir": "set the TENSORBOARD_LOGGING_DIR environment variable",
    "use_mps_device": "MPS is used automatically when present; drop it",
    "tpu_num_cores": "TPU support moved to accelerate; drop it",
    "use_ipex": "IPEX support was removed; drop it",
    "jit_mode_eval": "use --torch_compile",
    "torchdynamo": "use --torch_compile --torch_compile_backend NAME",
    "mp_parameters": "SageMaker MP support was removed; drop it",
    "ray_scope": "pass ray options to trainer.hyperparameter_search instead; drop it",
    "past_index": "drop it (no longer used)",
    "fsdp_min_num_params": "use --fsdp_config with min_num_params",
    "include_inputs_for_metrics": "use --include_for_metrics inputs",
    "use_legacy_prediction_loop": "drop it (only the current loop exists)",
    "dispatch_batches": "use --accelerator_config '{\"dispatch_batches\": true}'",
    "split_batches": "use --accelerator_config '{\"split_batches\": true}'",
    "group_by_length": "use --train_sampling_strategy group_by_length",
    "include_tokens_per_second": "use --include_num_input_tokens_seen; tokens/s is logged by t5-deepspeed",
}
# Removed, always on now: accepted with a note.
ALWAYS_ON = {"save_safetensors": "checkpoints are always safetensors in transformers 5"}


def translate_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Rewrite removed flags in argv; return (new argv, log notes). Raises ArgsError for refused ones."""
    out, notes = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            out.append(arg)
            i += 1
            continue
        name, eq, value = arg[2:].partition("=")
        key = name.replace("-", "_")
        if key == "resume":  # the shared grammar: --resume [auto|PATH]
            if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                value, eq = argv[i + 1], "="
                i += 1
            target = value if eq else "auto"
            out += ["--resume_from_checkpoint", LATEST if target in ("auto", LATEST) else target]
        elif key == "profile":  # the shared grammar's spelling of --hardware_profile
            out.append("--hardware_profile" + eq + value)
        elif key in RENAMED:
            new = RENAMED[key]
            if key != "dataset_config":
                notes.append(f"--{name} was removed in transformers 5; using --{new}")
            out.append(f"--{new}" + (eq + value if eq else ""))
        elif key in REMOVED:
            raise ArgsError(f"--{name} was removed in transformers 5: {REMOVED[key]}")
        elif key in ALWAYS_ON:
            notes.append(f"--{name} ignored: {ALWAYS_ON[key]}")
            if not eq and i + 1 < len(argv) and argv[i + 1].lower() in ("true", "false", "1", "0", "yes", "no"):
                if argv[i + 1].lower() in ("false", "0", "no"):
                    raise ArgsError(f"--{name} False is not possible: {ALWAYS_ON[key]}")
                i += 1
        else:
            out.append(arg)
        i += 1
    return out, notes


def build_parser():
    from transformers import HfArgumentParser, Seq2SeqTrainingArguments

    # allow_abbrev=False: a misspelled flag that happens to be a prefix of a real one (--learning_rat) is
    # refused, not silently taken for it.
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, Seq2SeqTrainingArguments, ExtraArguments),
                              prog="t5-deepspeed train", description=__doc__.splitlines()[0], allow_abbrev=False)
    for action in parser._actions:
        if action.dest == "resume_from_checkpoint":  # our meaning: only when asked, only complete ones
            action.help = ("'latest' (the newest complete checkpoint-N in --output_dir) or a checkpoint dir. "
                           "Without it nothing is resumed.")
    return parser


@dataclass
class ParsedArgs:
    model: ModelArguments
    data: DataTrainingArguments
    training: dict          # Seq2SeqTrainingArguments fields; built later, after precision and the output dir
    extra: ExtraArguments
    notes: list[str]
    given: set[str]         # dest names given on the command line (profiles never override them)


def parse_args(argv: list[str], profile_settings_fn=None) -> ParsedArgs:
    from transformers import Seq2SeqTrainingArguments

    argv, notes = translate_argv(list(argv))
    parser = build_parser()

    def error(message):  # argparse prints usage and exits; we want one line and our error type
        raise ArgsError(message)

    parser.error = error
    ns = parser.parse_args(argv)
    given = {a.dest for a in parser._actions if any(s in argv or any(x.startswith(s + "=") for x in argv)
                                                    for s in a.option_strings)}
    values = vars(ns)
    if profile_settings_fn is not None and values.get("hardware_profile"):
        from trainstack.hardware import ProfileError

        try:
            settings, profile_note = profile_settings_fn(values["hardware_profile"])
        except ProfileError as err:  # names the shipped profiles
            raise ArgsError(f"--hardware_profile: {err}") from None
        notes.append(profile_note)
        problems = check_profile_settings(settings, parser)
        if problems:
            raise ArgsError(f"--hardware_profile {values['hardware_profile']}: {problems[0]}")
        for key, value in settings.items():
            if key not in given:
                values[key] = value

    def take(cls):
        return {f.name: values.pop(f.name) for f in dataclasses.fields(cls) if f.name in values}

    model = ModelArguments(**take(ModelArguments))
    data = DataTrainingArguments(**take(DataTrainingArguments))
    extra = ExtraArguments(**take(ExtraArguments))
    training = take(Seq2SeqTrainingArguments)
    if values:
        raise ArgsError(f"unexpected arguments: {', '.join(sorted(values))}")
    if data.source_lang is None or data.target_lang is None:
        raise ArgsError("--source_lang and --target_lang are required (e.g. --source_lang en --target_lang ro)")
    if data.dataset_name is None and not (data.train_file or data.validation_file or data.test_file):
        raise ArgsError("pass --dataset_name (e.g. wmt16 --dataset_config ro-en) or --train_file/--validation_file/--test_file")
    if model.model_name_or_path is None and model.config_name is None:
        raise ArgsError("pass --model_name_or_path (pretrained) or --config_name (random init, e.g. t5-small)")
    check_training_numbers(training)
    return ParsedArgs(model, data, training, extra, notes, given)


def check_profile_settings(settings: dict, parser=None) -> list[str]:
    """One line per setting that is not an argument of t5-deepspeed, or not a value it accepts."""
    parser = parser or build_parser()
    actions = {a.dest: a for a in parser._actions}
    problems = []
    for key, value in settings.items():
        action = actions.get(key)
        if action is None or not action.option_strings:
            problems.append(f"setting {key!r} is not an argument of t5-deepspeed")
            continue
        if value is None or action.type is None or isinstance(value, (list, dict)):
            continue
        try:
            converted = action.type(str(value))
        except (TypeError, ValueError) as err:
            problems.append(f"setting {key}: {value!r} is not a valid --{key} ({err})")
            continue
        if action.choices is not None and converted not in action.choices:
            problems.append(f"setting {key}: {value!r} is not one of: {', '.join(map(str, action.choices))}")
    return problems


def check_training_numbers(training: dict) -> None:
    """Refuse values the Trainer would accept and then crash on, or train wrongly with, without a word
    (a negative batch size fails deep in the DataLoader; a negative lr trains uphill)."""
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if training.get(key) is not None and training[key] < 1:
            raise ArgsError(f"--{key} must be a positive integer, got {training[key]}")
    lr = training.get("learning_rate")
    if lr is not None and not lr > 0:  # also catches nan
        raise ArgsError(f"--learning_rate must be > 0, got {lr:g}")
    max_steps = training.get("max_steps", -1)
    if max_steps == 0 or max_steps < -1:
        raise ArgsError(f"--max_steps must be a positive number of optimizer steps, or -1 (the default: "
                        f"train --num_train_epochs), got {max_steps}")
    if max_steps == -1 and training.get("do_train") and not training.get("num_train_epochs", 1) > 0:
        raise ArgsError(f"--num_train_epochs must be > 0, got {training['num_train_epochs']:g}")
