"""DeepSpeed JSON configs: shipped names or user paths, precision applied, one-line errors.

Shipped configs (src/t5_deepspeed/ds_configs/, in the wheel):
    zero2, zero2-offload, zero3, zero3-offload   each as -bf16 and -fp16
A name without the precision suffix picks the variant that matches the run's precision.

    t5-deepspeed --deepspeed zero3 ...            # shipped, precision picked at start-up
    t5-deepspeed --deepspeed zero2-fp16 ...       # shipped, explicit variant
    t5-deepspeed --deepspeed ds_config_zero2.json # any DeepSpeed JSON file

"auto" values are left for the HF Trainer, which fills them from the run's arguments
(batch sizes, accumulation, clipping, lr, bucket sizes from d_model); the filled config is written
to OUTPUT_DIR/ds_config.resolved.json.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path

SHIPPED_BASES = ("zero2", "zero2-offload", "zero3", "zero3-offload")
PRECISION_SUFFIXES = ("bf16", "fp16")


class DeepSpeedConfigError(ValueError):
    """A DeepSpeed config that cannot be used; the message is one line naming the file or name."""


def shipped_names() -> list[str]:
    return [f"{base}-{p}" for base in SHIPPED_BASES for p in PRECISION_SUFFIXES]


def shipped_dir():
    return resources.files("t5_deepspeed") / "ds_configs"


def _parse_json(text: str, where: str) -> dict:
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as err:
        raise DeepSpeedConfigError(
            f"{where}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}"
        ) from None
    if not isinstance(cfg, dict):
        raise DeepSpeedConfigError(f"{where}: a DeepSpeed config must be a JSON object, got {type(cfg).__name__}")
    return cfg


def load_ds_config(name_or_path: str | dict, precision: str = "bf16") -> tuple[dict, str]:
    """Return (config dict, where it came from) for a shipped name, a path, or a dict.

    `precision` ("bf16" | "fp16" | "fp32") picks the variant of a shipped name given without a suffix;
    fp32 runs use the bf16 file, whose "auto" then resolves to disabled.
    """
    if isinstance(name_or_path, dict):
        return copy.deepcopy(name_or_path), "<dict>"
    text = str(name_or_path).strip()
    if text.startswith("{"):
        return _parse_json(text, "--deepspeed JSON string"), "<inline JSON>"
    path = Path(text).expanduser()
    if path.is_file():
        return _parse_json(path.read_text(encoding="utf-8"), str(path)), str(path)
    name = text[:-5] if text.endswith(".json") else text
    if name in SHIPPED_BASES:
        name = f"{name}-{'fp16' if precision == 'fp16' else 'bf16'}"
    if name in shipped_names():
        resource = shipped_dir() / f"{name}.json"
        return _parse_json(resource.read_text(encoding="utf-8"), f"shipped config {name}"), f"shipped:{name}"
    if path.suffix == ".json" or "/" in text:
        raise DeepSpeedConfigError(f"DeepSpeed config file not found: {path}")
    raise DeepSpeedConfigError(
        f"unknown DeepSpeed config {text!r}; shipped: {', '.join(SHIPPED_BASES + tuple(shipped_names()))}; "
        "or give a path to a JSON file"
    )


def zero_stage(cfg: dict) -> int:
    stage = cfg.get("zero_optimization", {}).get("stage", 0)
    try:
        return int(stage)
    except (TypeError, ValueError):
        raise DeepSpeedConfigError(f"zero_optimization.stage must be 0..3, got {stage!r}") from None


def offload_devices(cfg: dict) -> dict[str, str]:
    """{"optimizer": "cpu", "param": "cpu"} for the parts that are offloaded (devices other than none)."""
    zero = cfg.get("zero_optimization", {})
    out = {}
    for part in ("optimizer", "param"):
        device = (zero.get(f"offload_{part}") or {}).get("device", "none")
        if device not in (None, "none"):
            out[part] = device
    return out


def apply_run_precision(cfg: dict, precision: str) -> list[str]:
    """Make the config's fp16/bf16 blocks agree with the run's precision; return what changed.

    A user's file often says `"fp16": {"enabled": true}` (or "auto" together with --fp16). When the
    run switched T5 from fp16 to bf16, leaving that in would either train in fp16 anyway or make the
    Trainer refuse the mismatch, so the switch is written into the config and reported.
    """
    changes = []
    want = {"fp16": precision == "fp16", "bf16": precision == "bf16"}
    for key in ("fp16", "bf16"):
        block = cfg.get(key)
        if block is None:
            if want[key]:
                cfg[key] = {"enabled": True}
                changes.append(f"{key}.enabled: (absent) -> true")
            continue
        old = block.get("enabled", "auto" if key == "fp16" else False)
        if old == "auto" or bool(old) != want[key]:
            block["enabled"] = want[key]
            if old != "auto":
                changes.append(f"{key}.enabled: {json.dumps(old)} -> {json.dumps(want[key])}")
    if precision == "fp32":
        # DeepSpeed's "amp" block is apex-based and gone from torch-native setups; drop it if set.
        if cfg.get("amp", {}).get("enabled"):
            cfg["amp"]["enabled"] = False
            changes.append("amp.enabled: true -> false")
    return changes


# DeepSpeed's own documented bucket size; the Trainer's "auto" (d_model**2) is far smaller.
MAX_BUCKET_ELEMENTS = 200_000_000
REDUCTIONS_PER_STEP = 4


def size_gradient_buckets(cfg: dict, n_params: int, d_model: int) -> list[str]:
    """Replace the Trainer's "auto" gradient bucket size with one that gives a few reductions a step.

    ZeRO reduces gradients bucket by bucket, and each bucket costs a kernel launch, a stream sync and
    Python bookkeeping whatever its size. The Trainer's "auto" is d_model**2 elements (1,048,576 for
    t5-large, so ~700 reductions per optimizer step), which left a 738M-parameter step bound by that
    overhead (measured: see BENCHMARKS.md). A quarter of the model per bucket, at most 2e8 elements,
    keeps a few reductions that still overlap the backward pass on several GPUs, and bounds the
    bucket buffers' memory. Numbers the user wrote are kept. ZeRO-1/2 only: ZeRO-3's buckets also pace
    its parameter gathering and memory, and are left to the Trainer. Returns what changed, for the log.
    """
    zero = cfg.get("zero_optimization")
    if not isinstance(zero, dict) or zero_stage(cfg) not in (1, 2):
        return []
    size = max(d_model * d_model, min(MAX_BUCKET_ELEMENTS, -(-n_params // REDUCTIONS_PER_STEP)))
    changes = []
    for key in ("reduce_bucket_size", "allgather_bucket_size"):
        if zero.get(key, "auto") == "auto":
            zero[key] = size
            changes.append(f"{key}: auto -> {size:,} (~{-(-n_params // size)} reductions a step)")
    return changes


def skip_bf16_overflow_scan(cfg: dict) -> list[str]:
    """bf16.check_grad_overflow: false unless the user's config sets it. Returns what changed.

    DeepSpeed >= 0.16 scans every gradient for inf/NaN before a bf16 step (five kernels per tensor,
    ~2,500 launches a t5-large step, profiled) to skip overflowed steps as fp16 loss scaling does. bf16
    has fp32's range, so that scan guards against little; plain PyTorch bf16 training, and DeepSpeed
    before 0.16, run without it.
    """
    block = cfg.get("bf16")
    if not isinstance(block, dict) or block.get("enabled") is not True or "check_grad_overflow" in block:
        return []
    block["check_grad_overflow"] = False
    return ["bf16.check_grad_overflow: (default true) -> false"]


def check_for_cpu(cfg: dict) -> None:
    """Refuse settings that cannot run on a CPU-only DeepSpeed, with the fix in the message."""
    if cfg.get("fp16", {}).get("enabled") is True:
        raise DeepSpeedConfigError("fp16 is not supported by DeepSpeed on CPU; use --bf16 or fp32 (no flag)")
