"""T5 translation fine-tuning with DeepSpeed ZeRO-2/3: the whole job, top to bottom.

1 GPU (DeepSpeed launcher, as the users ran run_translation.py):
    deepspeed --num_gpus=1 --module t5_deepspeed --deepspeed zero2 --model_name_or_path t5-small \
        --per_device_train_batch_size 8 --output_dir out --overwrite_output_dir --do_train --do_eval \
        --predict_with_generate --dataset_name wmt16 --dataset_config ro-en --source_lang en --target_lang ro \
        --source_prefix "translate English to Romanian: "
N GPUs:  deepspeed --num_gpus=N --module t5_deepspeed ...   or   accelerate launch --num_processes N -m t5_deepspeed ...
CPU (one process, gloo, tiny random-init model and the shipped sample):
    t5-deepspeed --deepspeed zero2 --config_name tiny-t5 --train_file DATA/en-ro.train.jsonl ...

Resume (only when asked): the same command plus --resume_from_checkpoint latest (the newest complete
checkpoint in --output_dir) or --resume_from_checkpoint OUT/checkpoint-N. Ctrl-C or SIGTERM saves a
checkpoint after the current optimizer step and exits 130/143.

Steps: arguments -> distributed env -> precision (core) -> data -> DeepSpeed config -> output dir and
resume checked (nothing is written before this) -> TrainingArguments (DeepSpeed config in place BEFORE
the model, so ZeRO-3 loads it partitioned) -> seed -> tokenizer, model -> Seq2SeqTrainer -> train /
save (16-bit gathered) / eval / predict.
The Trainer (or DeepSpeed) builds the optimizer inside train(), after the model is placed; the line
"optimizer: ..." names the implementation that runs. `t5-deepspeed bench` runs this same entry point
(its "ours" side), adding only timing and bookkeeping flags.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import socket
import sys
import time
from importlib import resources
from pathlib import Path

from .args import ArgsError, ParsedArgs
from .checkpoints import CheckpointError, checkpoint_step, resolve_resume, weights_only_loading
from .data import DataError, PairsDataset, load_split
from .ds_config import (
    DeepSpeedConfigError,
    apply_run_precision,
    check_for_cpu,
    load_ds_config,
    offload_devices,
    size_gradient_buckets,
    skip_bf16_overflow_scan,
    zero_stage,
)
from .outputs import (
    FINAL_MODEL_STAGING,
    TENSORBOARD_DIR,
    OutputDirError,
    OutputLedger,
    apply_plan,
    default_report_to,
    plan_output_dir,
    point_tensorboard_at,
    result_files,
    save_final_model,
)

log = logging.getLogger("t5_deepspeed")

T5_FAMILY = {"t5", "mt5", "umt5", "longt5", "t5gemma"}
SHIPPED_MODEL_CONFIGS = ("t5-small", "t5-large", "t5-3b", "tiny-t5")
T5_PREFIXES = {("en", "ro"): "translate English to Romanian: ", ("en", "de"): "translate English to German: ",
               ("en", "fr"): "translate English to French: "}


class RunError(RuntimeError):
    """A problem found at start-up (model path, output dir...); one line."""


class StoppedBySignal(Exception):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; the exit code is 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# Set-up helpers, each small; the job itself is `run` below.

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_name() -> str:
    env = os.environ
    if "CROSS_RANK" in env or "LOCAL_SIZE" in env:  # set by DeepSpeed's launcher
        return "deepspeed"
    if any(k.startswith("ACCELERATE_") for k in env) and "LOCAL_RANK" in env:
        return "accelerate"
    if "TORCHELASTIC_RUN_ID" in env:
        return "torchrun"
    return "single process"


def prepare_distributed_env(has_gpu: bool, using_deepspeed: bool) -> None:
    """A plain `python -m t5_deepspeed --deepspeed ...` is a world of one; DeepSpeed still wants the
    rendezvous variables a launcher would set. On a CPU-only host DeepSpeed must be told to use its
    CPU accelerator (gloo) before it is imported."""
    if not using_deepspeed:
        return
    if not has_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        # `accelerate launch --cpu` sets this, and accelerate then drops the DeepSpeed plugin without a
        # word; DeepSpeed's own CPU accelerator (gloo) is what runs here instead
        if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
            os.environ["ACCELERATE_USE_CPU"] = "False"
    if "RANK" not in os.environ and "LOCAL_RANK" not in os.environ:
        os.environ.update(MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"),
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(_free_port())),
                          RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")


def is_existing_path(text: str) -> bool:
    """Whether a flag's value names a file or directory; False for values that cannot be paths at all
    (an inline JSON config longer than the system's name limit raises instead of answering)."""
    try:
        return Path(text).expanduser().exists()
    except OSError:
        return False


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def resolve_model_config(model_args, cache_dir=None):
    """(transformers config, source) from --config_name (shipped name or path) or the model path."""
    from transformers import AutoConfig

    name = model_args.config_name or model_args.model_name_or_path
    if name in SHIPPED_MODEL_CONFIGS:
        path = Path(str(resources.files("t5_deepspeed") / "data" / "configs" / f"{name}.json"))
        return AutoConfig.from_pretrained(path), f"shipped:{name}"
    # Hub ids are "name" or "org/name"; anything else that is not on disk is a mistyped path.
    if not Path(name).expanduser().exists() and (name.startswith(("/", ".", "~")) or name.count("/") > 1):
        raise RunError(f"model path does not exist: {name}")
    config = load_pretrained(lambda: AutoConfig.from_pretrained(
        name, cache_dir=cache_dir, revision=model_args.model_revision, token=model_args.token), name, "model config")
    return config, name


def load_pretrained(load, name: str, what: str):
    """``load()`` of a hub name or a local directory. A hub name that cannot be had (offline, not cached,
    no such model) is trainstack.hub's one line; a local model that does not load, a RunError line."""
    from trainstack.hub import HubUnavailable, loading

    flag = "--tokenizer_name" if what == "tokenizer" else "--model_name_or_path"
    try:
        with loading(name, what=what, key=flag, instead=f"pass a local directory ({flag} DIR)"):
            return load()
    except HubUnavailable:
        raise
    except ValueError as err:
        raise RunError(f"cannot load {what} {name!r}: {str(err).strip().splitlines()[0]}") from None


def choose_precision(training: dict, extra, model_type: str, hw):
    """Decide bf16/fp16/fp32 once, with the reason, through core's resolve_precision.

    T5 was pretrained in bf16 and its feed-forward activations exceed fp16's 65504 range, so an
    fp16 run goes to inf/NaN (checked: see BENCHMARKS.md). --fp16 on a T5 model therefore becomes
    bf16 where the hardware has it (fp32 where not), unless --force_fp16.
    """
    from trainstack.precision import PrecisionError, resolve_precision

    is_t5 = model_type in T5_FAMILY
    if training.get("bf16"):
        return resolve_precision("bf16", hw), None
    if training.get("fp16"):
        if not is_t5 or extra.force_fp16:
            if not hw.has_gpu:
                raise RunError("fp16 is not supported on CPU; use --bf16 or no precision flag (fp32)")
            return resolve_precision("fp16", hw), None
        try:
            p = resolve_precision("bf16", hw)
            switch = ("--fp16 with a T5 model: using bf16 instead (T5 overflows to NaN in fp16; it was trained "
                      "in bf16, which has fp32's range). Pass --force_fp16 to keep fp16.")
        except PrecisionError:
            p = resolve_precision("fp32", hw)
            switch = ("--fp16 with a T5 model: this hardware has no bf16, so using fp32 (T5 overflows to NaN "
                      "in fp16). Pass --force_fp16 to keep fp16 anyway.")
        return p, switch
    p = resolve_precision("auto", hw)
    if p.name == "fp16" and is_t5 and not extra.force_fp16:
        return resolve_precision("fp32", hw), "auto precision picked fp16, which T5 overflows in: using fp32"
    return p, None


REGIONAL_COMPILE_ENV = "ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION"
DYNAMIC_SHAPES_ENV = "ACCELERATE_DYNAMO_USE_DYNAMIC"


def compiles_by_default(training: dict, recipe: str, hw, ds_cfg: dict | None) -> bool:
    """Whether `ours` compiles training when --torch_compile is not given: on a CUDA GPU that Triton
    supports (sm_70+), for a training run without gradient checkpointing and not under ZeRO-3 (blocks
    whose weights ZeRO-3 gathers on entry, and recomputation under regional compilation, are not
    measured). An eager T5 step at the users' batch sizes is bound by Python launching kernels; a
    compiled block launches a few fused ones (one H200, t5-large ZeRO-2 batch 4: 174 -> 125 ms a step,
    equal losses; BENCHMARKS.md)."""
    if recipe != "ours" or not hw.has_gpu or not training.get("do_train") or training.get("gradient_checkpointing"):
        return False
    if ds_cfg is not None and zero_stage(ds_cfg) == 3:
        return False
    if tuple(hw.gpu.capability) < (7, 0):
        return False
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return has_triton()


def choose_compile(training: dict, given: set, *, by_default: bool = False) -> str | None:
    """Compile training as asked (--torch_compile, or `by_default` when not given), set up so that T5's
    repeated blocks share compiled code; the log line, or None when training runs eager.

    accelerate's regional compilation compiles each block on its own. Measured on t5-large, the
    blocks then recompiled one after another until Dynamo's recompile limit (8) sent them back to eager
    (BENCHMARKS.md). The causes, read from TORCH_LOGS=recompiles: the decoder's KV cache, which
    training does not need, guarded on each layer's own cache entry (the training forward runs with
    use_cache off, see run), and each new length recompiled (shapes are marked dynamic from the start).
    What is left is four graphs: the first block of each stack (which makes the position bias) and
    the rest. Compiled code is kept on disk (core's compile cache): a second run loads it.
    """
    asked = given & {"torch_compile", "torch_compile_backend", "torch_compile_mode"}
    if asked:
        if not (training.get("torch_compile") or training.get("torch_compile_backend")
                or training.get("torch_compile_mode")):
            return None
        why = "as asked (--torch_compile)"
    elif by_default:
        training["torch_compile"] = True
        why = "on by default for training on this GPU (--torch_compile False runs eager)"
    else:
        return None
    os.environ.setdefault(REGIONAL_COMPILE_ENV, "1")
    os.environ.setdefault(DYNAMIC_SHAPES_ENV, "1")
    import torch._dynamo
    from trainstack.speed import enable_compile_cache, one_graph_for_all_sizes

    cache = enable_compile_cache()
    one_graph_for_all_sizes()  # no recompile when a batch's tokens cross an Inductor fusion threshold
    # two stacks x (first block, the rest), with room for a guard we have not seen
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 16)
    return (f"compile: {why}: T5 blocks compiled regionally with dynamic lengths; training runs without the "
            f"decoder's KV cache; eval/predict eager; compile cache {cache}")


def turn_off_use_cache(model) -> list:
    """use_cache off on the model's config and on its stacks' own copies (T5's decoder reads its copy);
    returns each config's previous value, for restore_use_cache. The training forward needs no KV cache,
    and compiled blocks would guard on its per-layer state. The encoder's copy has its own value (off:
    T5 refuses use_cache on a stack that is not a decoder), so each is restored to what it was."""
    configs = {id(m.config): m.config for m in model.modules() if hasattr(getattr(m, "config", None), "use_cache")}
    previous = [(config, config.use_cache) for config in configs.values()]
    for config in configs.values():
        config.use_cache = False
    return previous


def restore_use_cache(previous: list) -> None:
    for config, value in previous:
        config.use_cache = value


def run_eager_from_here(model) -> int:
    """Undo in-place module.compile() (how accelerate compiles under DeepSpeed): generation's changing
    shapes and caches would recompile block after block for no gain. Returns how many modules were
    compiled."""
    compiled = 0
    for module in model.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None
            compiled += 1
    return compiled


def postprocess_text(texts):
    return [t.strip() for t in texts]



def run(parsed: ParsedArgs) -> dict:
    """The job. Returns the metrics of each stage that ran (also written as JSON in the output dir)."""
    model_args, data_args, training, extra = parsed.model, parsed.data, dict(parsed.training), parsed.extra
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO,
                        stream=sys.stdout, force=True)
    for note in parsed.notes:
        log.warning(note)

    # 1. hardware and the distributed environment (before DeepSpeed or torch.distributed start)
    from trainstack.checkpoint import files_fingerprint
    from trainstack.hardware import detect_hardware

    hw = detect_hardware()
    ds_request = training.get("deepspeed")
    prepare_distributed_env(hw.has_gpu, ds_request is not None)
    if not hw.has_gpu:
        training["use_cpu"] = True
    log.info("launcher: %s | rank %s of %s | %s", launcher_name(), os.environ.get("RANK", "0"),
             os.environ.get("WORLD_SIZE", "1"), hw.gpu.name if hw.gpu else f"CPU x{hw.cpu_count}")

    # 2. model config (cheap) -> precision, said once with its reason
    model_config, model_source = resolve_model_config(model_args, model_args.cache_dir)
    if model_args.config_overrides:
        if model_args.model_name_or_path:
            raise RunError("--config_overrides only applies to a random-init model (--config_name without --model_name_or_path)")
        try:
            model_config.update_from_string(model_args.config_overrides)
        except ValueError as err:
            raise RunError(f"--config_overrides: {err}") from None
        log.info("config overrides: %s", model_args.config_overrides)
    from trainstack.precision import apply_precision

    if extra.recipe == "users":
        # bench baseline: the users' flags exactly as the plain Trainer would take them
        from trainstack.precision import resolve_precision

        precision = resolve_precision("fp16" if training.get("fp16") else "bf16" if training.get("bf16") else "fp32", hw)
        switch = None
    else:
        precision, switch = choose_precision(training, extra, model_config.model_type, hw)
        apply_precision(precision)
    if switch:
        log.warning(switch)
    log.info("precision: %s (%s)", precision.name, precision.reason)
    training["fp16"] = precision.name == "fp16"
    training["bf16"] = precision.name == "bf16"
    if precision.tf32 and extra.recipe == "ours" and hw.has_gpu:
        training["tf32"] = True

    # 3. data: local JSONL or the hub, read and checked row by row before any model is built
    files = {"train": data_args.train_file, "validation": data_args.validation_file, "test": data_args.test_file}
    common = dict(files=files, dataset_name=data_args.dataset_name, dataset_config=data_args.dataset_config_name,
                  source_lang=data_args.source_lang, target_lang=data_args.target_lang, cache_dir=model_args.cache_dir)
    raw_pairs = {}
    for split, flag, limit in (("train", "do_train", data_args.max_train_samples),
                               ("validation", "do_eval", data_args.max_eval_samples),
                               ("test", "do_predict", data_args.max_predict_samples)):
        if training.get(flag):
            raw_pairs[split] = load_split(split, max_samples=limit, **common)
            log.info("%s: %d pairs", split, len(raw_pairs[split]))
    if not raw_pairs:
        raise RunError("nothing to do: pass --do_train, --do_eval and/or --do_predict")

    # 4. DeepSpeed config: shipped name or path, precision written in, "auto" left for the Trainer
    ds_cfg = None
    if ds_request is not None:
        ds_cfg, ds_source = load_ds_config(ds_request, precision.name)
        changes = apply_run_precision(ds_cfg, precision.name)
        if not hw.has_gpu:
            check_for_cpu(ds_cfg)
        if extra.recipe == "ours" and extra.ds_bucket_sizes == "tuned":
            from .model_size import count_params

            changes += size_gradient_buckets(ds_cfg, count_params(model_config)[0],
                                             getattr(model_config, "hidden_size", 0) or 0)
        if extra.recipe == "ours":
            changes += skip_bf16_overflow_scan(ds_cfg)
        stage = zero_stage(ds_cfg)
        log.info("deepspeed: %s, ZeRO-%d, offload: %s%s", ds_source, stage,
                 ", ".join(f"{k}->{v}" for k, v in offload_devices(ds_cfg).items()) or "none",
                 f"; changed {'; '.join(changes)}" if changes else "")
        training["deepspeed"] = ds_cfg
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))
    compile_line = choose_compile(training, parsed.given,
                                  by_default=compiles_by_default(training, extra.recipe, hw, ds_cfg))
    if compile_line:
        log.info(compile_line)

    # 4b. output dir and resume, decided here but acted on only once the model is built (step 9), so a
    # typo or a bad checkpoint never clears a dir. Resume only when asked, only complete checkpoints.
    out_dir = Path(training["output_dir"]).expanduser()
    training["output_dir"] = str(out_dir)
    # What a checkpoint's data position refers to: resuming on other data or lengths is refused.
    run_fingerprint = {
        "train_data": (files_fingerprint([Path(files["train"]).expanduser()]) if files["train"]
                       else f"{data_args.dataset_name}/{data_args.dataset_config_name}"),
        "max_train_samples": data_args.max_train_samples, "source_lang": data_args.source_lang,
        "target_lang": data_args.target_lang, "source_prefix": data_args.source_prefix,
        "max_source_length": data_args.max_source_length, "max_target_length": data_args.max_target_length}
    ledger = OutputLedger(out_dir, writer=is_main_process())
    resume_ckpt = None
    if training.get("do_train"):
        resume_ckpt = resolve_resume(training.get("resume_from_checkpoint"), out_dir, model_config,
                                     run_fingerprint, ignore_mismatch=extra.ignore_resume_mismatch)
    training["resume_from_checkpoint"] = str(resume_ckpt) if resume_ckpt is not None else None
    if "report_to" not in parsed.given or training.get("report_to") in (None, "all", ["all"]):
        # As core's loop: TensorBoard in OUTPUT_DIR/tb by default (the Trainer's default is "none"); W&B
        # and the others only when named ("all" would be every integration that happens to be installed).
        training["report_to"] = default_report_to()
    this_run_writes = result_files(training, extra) | {FINAL_MODEL_STAGING}
    inputs = [Path(f).expanduser() for f in files.values() if f]
    inputs += [Path(p).expanduser() for p in (model_args.model_name_or_path, model_args.tokenizer_name,
                                              model_args.config_name, ds_request if isinstance(ds_request, str) else None)
               if p and is_existing_path(p)]
    output_plan = plan_output_dir(out_dir, overwrite=extra.overwrite_output_dir, do_train=bool(training.get("do_train")),
                                  resume=resume_ckpt is not None, inputs=inputs, this_run_writes=this_run_writes,
                                  ledger=ledger)

    # 5. run_translation's generation defaults
    if data_args.val_max_target_length is None:
        data_args.val_max_target_length = data_args.max_target_length
    if training.get("generation_max_length") is None:
        training["generation_max_length"] = data_args.val_max_target_length
    if training.get("generation_num_beams") is None and data_args.num_beams is not None:
        training["generation_num_beams"] = data_args.num_beams

    # 6. TrainingArguments now: with a DeepSpeed config this registers it globally (HfDeepSpeedConfig),
    # so from_pretrained/from_config below build a ZeRO-3 model already partitioned (zero.Init).
    from transformers import Seq2SeqTrainingArguments

    try:
        args = Seq2SeqTrainingArguments(**training)
    except ValueError as err:
        raise RunError(f"training arguments: {str(err).strip().splitlines()[0]}") from None
    if ds_cfg is not None:
        from transformers.integrations import is_deepspeed_zero3_enabled

        log.info("ZeRO-3 model construction: %s", "partitioned (zero.Init)" if is_deepspeed_zero3_enabled() else "not needed")

    # 7. seed, then tokenizer and model: a random init (and any weights a checkpoint lacks) draws from
    # the seeded generator, so two fresh runs with one --seed are the same run from step 1
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, enable_full_determinism, set_seed

    enable_full_determinism(args.seed) if args.full_determinism else set_seed(args.seed)

    tok_name = model_args.tokenizer_name or (model_args.model_name_or_path if model_args.model_name_or_path
                                             else str(resources.files("t5_deepspeed") / "data" / "tokenizer"))
    tokenizer = load_pretrained(lambda: AutoTokenizer.from_pretrained(
        tok_name, cache_dir=model_args.cache_dir, token=model_args.token), tok_name, "tokenizer")
    if model_args.model_name_or_path:
        model = load_pretrained(lambda: AutoModelForSeq2SeqLM.from_pretrained(
            model_args.model_name_or_path, config=model_config, cache_dir=model_args.cache_dir,
            revision=model_args.model_revision, token=model_args.token), model_args.model_name_or_path, "model")
        log.info("model: %s (pretrained)", model_args.model_name_or_path)
    else:
        model = AutoModelForSeq2SeqLM.from_config(model_config)
        log.info("model: %s (random init)", model_source)
    if len(tokenizer) > model.config.vocab_size:
        raise RunError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {model.config.vocab_size}")
    n_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    log.info("parameters: %.1fM", n_params / 1e6)
    if training.get("gradient_checkpointing"):
        model.config.use_cache = False
    inference_use_cache = turn_off_use_cache(model) if compile_line else None

    # 8. tokenize (pairs were read and checked in step 3)
    prefix = data_args.source_prefix
    if prefix is None and model.config.model_type in T5_FAMILY:
        prefix = T5_PREFIXES.get((data_args.source_lang, data_args.target_lang), "")
        if model_args.model_name_or_path:
            log.warning("T5 model without --source_prefix: using %r (run_translation warns; T5 checkpoints expect one)",
                        prefix)
    max_target = {"train": data_args.max_target_length, "validation": data_args.val_max_target_length,
                  "test": data_args.val_max_target_length}
    datasets = {split: PairsDataset(pairs, tokenizer, prefix or "", data_args.max_source_length, max_target[split])
                for split, pairs in raw_pairs.items()}

    # 9. everything is checked: from here the run writes. First what --overwrite_output_dir removes
    # (only what this program wrote), then the record of the names this run writes, then the trainer.
    from trainstack.config import make_run_dir

    if is_main_process():
        make_run_dir(out_dir, "--output_dir")  # the first write: a failure here is one line too
    apply_plan(output_plan, ledger)
    ledger.record(*result_files(training, extra))

    from trainstack.loop import StopFlag
    from transformers import DataCollatorForSeq2Seq

    from .callbacks import BenchCallback, JsonlLogCallback, OptimizerReportCallback, TokenCountingCollator
    from .flops import model_flops
    from .trainer import CompleteCheckpointsTrainer, SaveOnSignalCallback, agreed_signal

    label_pad = -100 if data_args.ignore_pad_token_for_loss else tokenizer.pad_token_id
    collator = DataCollatorForSeq2Seq(
        tokenizer, model=model, label_pad_token_id=label_pad,
        padding="max_length" if data_args.pad_to_max_length else True,
        max_length=data_args.max_source_length if data_args.pad_to_max_length else None,
        pad_to_multiple_of=8 if extra.recipe == "ours" and precision.name != "fp32" and hw.has_gpu else None)
    collator = TokenCountingCollator(collator)

    signatures = {}

    # Rows of the split being scored. On several GPUs the last batch is topped up with repeated rows so
    # that every rank runs the same number of batches, and the gathered predictions can come back
    # longer than the split (seen on 2 GPUs: 16 for 8 test pairs); the repeats are at the end.
    scored_rows = {"n": None}

    def compute_metrics(eval_preds):
        import numpy as np
        from trainstack.metrics import bleu, chrf

        preds, labels = eval_preds
        preds = preds[0] if isinstance(preds, tuple) else preds
        preds, labels = preds[:scored_rows["n"]], labels[:scored_rows["n"]]
        preds = np.where(preds != -100, preds, tokenizer.pad_token_id)
        labels = np.where(labels != -100, labels, tokenizer.pad_token_id)
        hyps = postprocess_text(tokenizer.batch_decode(preds, skip_special_tokens=True))
        refs = postprocess_text(tokenizer.batch_decode(labels, skip_special_tokens=True))
        b, c = bleu(hyps, refs), chrf(hyps, refs)
        signatures.update(bleu_signature=b.signature, chrf_signature=c.signature)
        gen_len = float(np.mean([np.count_nonzero(p != tokenizer.pad_token_id) for p in preds]))
        return {"bleu": round(b.score, 4), "chrf": round(c.score, 4), "gen_len": round(gen_len, 4)}

    stop_flag = StopFlag()
    save_on_signal = SaveOnSignalCallback(stop_flag)
    optimizer_report = OptimizerReportCallback()
    callbacks = [save_on_signal, optimizer_report]
    if extra.log_jsonl:
        if resume_ckpt is not None and is_main_process():
            from trainstack.loop import truncate_log

            # what a stopped or crashed run logged past its checkpoint goes: each step once in the log
            truncate_log(out_dir / "log.jsonl", checkpoint_step(resume_ckpt) or 0)
        callbacks.append(JsonlLogCallback(out_dir / "log.jsonl", counter=collator))
    bench_cb = None
    if extra.bench_json:
        # profiled steps come after the timed ones: the profilers' own overhead stays out of the figures
        timed_until = args.max_steps - extra.bench_profile_steps
        bench_cb = BenchCallback(collator, extra.bench_warmup_steps, extra.bench_json, precision.name, n_params,
                                 optimizer_report, stop_after_step=timed_until, flops=model_flops(model))
        callbacks.append(bench_cb)
        if extra.bench_profile_steps:
            from .profiling import StepProfileCallback

            callbacks.append(StepProfileCallback(timed_until, extra.bench_profile_steps, out_dir / "profile"))
    trainer = CompleteCheckpointsTrainer(
        model=model, args=args, train_dataset=datasets.get("train"), eval_dataset=datasets.get("validation"),
        data_collator=collator, processing_class=tokenizer,
        compute_metrics=compute_metrics if args.predict_with_generate else None, callbacks=callbacks)
    trainer.output_ledger = ledger
    point_tensorboard_at(trainer, out_dir / TENSORBOARD_DIR)
    trainer.run_fingerprint = run_fingerprint
    optimizer_report.trainer = trainer

    if ds_cfg is not None and not trainer.is_deepspeed_enabled:
        raise RunError("--deepspeed was given but the Trainer did not enable DeepSpeed (launcher settings "
                       "override it?); run under `deepspeed --module t5_deepspeed` or without a launcher")
    results = {}
    gen_kwargs = {}
    if ds_cfg is not None and zero_stage(ds_cfg) == 3:
        # Under ZeRO-3 every rank holds a slice of each layer, so every rank must run every forward
        # of generate until all ranks are done, or the all-gathers deadlock.
        gen_kwargs["synced_gpus"] = True

    # 10. train, then save: under ZeRO-3 the 16-bit weights are gathered into one normal HF checkpoint
    if args.do_train:
        t0 = time.perf_counter()
        # a resume loads DeepSpeed's pickles: every torch.load in it is forced to weights_only
        loading = weights_only_loading() if resume_ckpt is not None else contextlib.nullcontext()
        with stop_flag, loading:
            train_result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
        if inference_use_cache is not None:
            restore_use_cache(inference_use_cache)
        if save_on_signal.stopped_by is not None:
            log.warning("stopped by %s after step %d: saved %s; continue with the same command plus "
                        "--resume_from_checkpoint latest", signal.Signals(save_on_signal.stopped_by).name,
                        trainer.state.global_step, out_dir / f"checkpoint-{trainer.state.global_step}")
            raise StoppedBySignal(save_on_signal.stopped_by)
        if not extra.bench_json:  # a benchmark does not need (say) 5.7 GB of t5-3b weights on disk
            # stage3_gather_16bit_weights_on_model_save in the shipped ZeRO-3 configs
            save_final_model(trainer, out_dir, ledger)
        metrics = dict(train_result.metrics)
        metrics["train_samples"] = len(datasets["train"])
        metrics["wall_s"] = round(time.perf_counter() - t0, 3)
        if not math.isfinite(metrics.get("train_loss", 0.0)):
            log.warning("train loss is %s: the run diverged (fp16 overflow is the usual cause with T5)",
                        metrics.get("train_loss"))
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        if ds_cfg is not None and trainer.is_world_process_zero():
            resolved = trainer.accelerator.state.deepspeed_plugin.deepspeed_config
            (out_dir / "ds_config.resolved.json").write_text(json.dumps(resolved, indent=2, default=str))
        results["train"] = metrics
        late_signal = agreed_signal(stop_flag.signum, args.device)
        if late_signal:  # came after the last step: training is done and saved
            log.warning("stopped by %s after training finished: the final model is saved; eval and predict skipped",
                        signal.Signals(late_signal).name)
            raise StoppedBySignal(late_signal)

    # 11. evaluate and predict with generate
    compiled = run_eager_from_here(model)
    if compiled:
        from torch._dynamo.utils import counters

        log.info("compile: %d modules ran compiled (%d graphs compiled); eager from here", compiled,
                 counters["stats"]["unique_graphs"])
    if args.do_eval:
        scored_rows["n"] = len(datasets["validation"])
        metrics = trainer.evaluate(metric_key_prefix="eval", **gen_kwargs)
        metrics.update({f"eval_{k}": v for k, v in signatures.items()})
        metrics["eval_samples"] = len(datasets["validation"])
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        results["eval"] = metrics
    if args.do_predict:
        scored_rows["n"] = len(datasets["test"])
        out = trainer.predict(datasets["test"], metric_key_prefix="predict", **gen_kwargs)
        metrics = dict(out.metrics)
        metrics.update({f"predict_{k}": v for k, v in signatures.items()})
        metrics["predict_samples"] = len(datasets["test"])
        trainer.log_metrics("predict", metrics)
        trainer.save_metrics("predict", metrics)
        results["predict"] = metrics
        if trainer.is_world_process_zero() and args.predict_with_generate:
            import numpy as np

            predictions = out.predictions[:len(datasets["test"])]  # the repeats of a topped-up last batch go
            preds = np.where(predictions != -100, predictions, tokenizer.pad_token_id)
            hyps = postprocess_text(tokenizer.batch_decode(preds, skip_special_tokens=True))
            (out_dir / "generated_predictions.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
            with (out_dir / "predictions.jsonl").open("w", encoding="utf-8") as f:
                for (s, r), h in zip(datasets["test"].pairs, hyps, strict=True):
                    f.write(json.dumps({"source": s, "reference": r, "prediction": h}, ensure_ascii=False) + "\n")
    if bench_cb is not None:
        bench_cb.finish()
    return results


def main(argv=None) -> int:
    from trainstack.config import ConfigError
    from trainstack.hardware import NoProfileFits
    from trainstack.precision import PrecisionError

    from .args import parse_args
    from .profiles import profile_settings

    try:
        parsed = parse_args(sys.argv[1:] if argv is None else argv, profile_settings)
        run(parsed)
    except (ArgsError, DataError, DeepSpeedConfigError, RunError, PrecisionError, NoProfileFits, CheckpointError,
            OutputDirError, ConfigError) as err:
        print(f"t5-deepspeed: error: {err}", file=sys.stderr)
        return 2
    except StoppedBySignal as stop:
        return 128 + stop.signum
    except KeyboardInterrupt:  # a second Ctrl-C during training, or one outside it: stop now, say so
        print("t5-deepspeed: interrupted: stopped without saving the current step; resume from the last complete "
              "checkpoint with --resume_from_checkpoint latest", file=sys.stderr)
        return 128 + signal.SIGINT
    return 0
