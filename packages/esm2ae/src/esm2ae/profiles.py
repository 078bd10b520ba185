"""Hardware profiles shipped in the wheel, and `esm2ae profiles validate`: keys and types
against the config schema, precision against the profile's GPU class, the DeepSpeed JSON through
DeepSpeed's own parser, tokens-per-step arithmetic, and a memory estimate against GPU memory."""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path

from trainstack.hardware import GPUInfo, Hardware, Profile, load_profile, load_profiles, resolve_profile

from esm2ae.config import Config, deepspeed_json

GIB = 1024**3
CUDA_CONTEXT_GIB = 0.6        # context + cuBLAS workspace + allocator slack at start
USABLE_FRACTION = 0.92        # fragmentation margin: plan for at most 92% of the card


def profile_dir():
    """Entry point for `trainstack.tasks`: the directory of shipped profiles."""
    return importlib.resources.files("esm2ae") / "profiles"


def shipped_profiles() -> list[Profile]:
    return load_profiles(profile_dir())


def get_profile(name_or_path: str) -> Profile:
    """A shipped profile by name, or any YAML file by path (an edited copy)."""
    if Path(name_or_path).suffix in (".yaml", ".yml") or "/" in name_or_path:
        return load_profile(Path(name_or_path))
    return resolve_profile(name_or_path, shipped_profiles())


def profile_hardware(profile: Profile) -> Hardware:
    """The weakest machine the profile admits: what validation must plan for."""
    r = profile.requires
    if r.gpu_count == 0:
        return Hardware((), cpu_count=2, ram_gib=r.min_ram_gib or 4)
    gpu = GPUInfo(f"{profile.name} class GPU", r.min_compute_capability or (7, 0), r.min_gpu_memory_gib)
    return Hardware((gpu,) * r.gpu_count, cpu_count=8, ram_gib=r.min_ram_gib or 16)


@dataclass
class MemoryEstimate:
    params: int
    weights_gib: float
    grads_gib: float
    optimizer_gib: float
    activations_gib: float
    overhead_gib: float
    cpu_optimizer_gib: float = 0.0

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.grads_gib + self.optimizer_gib + self.activations_gib + self.overhead_gib

    def describe(self) -> str:
        s = (f"weights {self.weights_gib:.1f} + grads {self.grads_gib:.1f} + optimizer {self.optimizer_gib:.1f}"
             f" + activations {self.activations_gib:.1f} + overhead {self.overhead_gib:.1f}"
             f" = {self.total_gib:.1f} GiB per GPU")
        if self.cpu_optimizer_gib:
            s += f" (+ {self.cpu_optimizer_gib:.1f} GiB optimizer state in CPU RAM)"
        return s


def activation_bytes_per_token(d: int, layers: int, ffn: int, vocab: int, half: bool, checkpointing: bool,
                               half_residual: bool = True, masked_fraction: float = 1.0) -> float:
    """Saved activations per token. Per layer (Korthikanti et al. 2022, flash-style attention that
    keeps no score matrix): residual and LayerNorm inputs in fp32 (in the compute dtype with
    model.residual_dtype=autocast), q/k/v/attention output and the FFN input/GELU output in the compute
    dtype. With checkpointing only each layer's input stays, plus one layer being recomputed. The LM
    head runs on the masked tokens only (``masked_fraction`` of them)."""
    b = 2 if half else 4
    r = b if half_residual else 4
    per_layer = r * d * 2 + b * (2 * d + 4 * d + 2 * d + 2 * ffn) + 8 * 20
    head = (4 * d * 3 + 4 * vocab * 3) * masked_fraction    # LM head, logits and their grad in fp32
    if checkpointing:
        return layers * r * d + per_layer + head
    return layers * per_layer + head


def estimate_memory(cfg: Config, precision_name: str, world_size: int = 1) -> MemoryEstimate:
    from esm2ae.model import ESM2_SIZES, short_name

    key = short_name(cfg.model.name)
    if key not in ESM2_SIZES:
        raise ValueError(f"model.name '{cfg.model.name}': no built-in size to estimate; "
                         f"known: {', '.join(ESM2_SIZES)}")
    s = ESM2_SIZES[key]
    d, L, f, V = s["hidden_size"], s["num_hidden_layers"], s["intermediate_size"], 33
    n = L * (4 * d * d + 2 * d * f + 9 * d + f) + V * d + d * d + 3 * d + V
    if cfg.task != "mlm":
        w = [d, *cfg.ae.widths]
        n += 2 * sum(a * b + b for a, b in zip(w[:-1], w[1:], strict=True))
    half = precision_name in ("bf16", "fp16")
    ds = cfg.deepspeed
    if ds.enabled:
        # DeepSpeed keeps compute-dtype weights on the GPU; ZeRO-2 partitions grads and optimizer
        # state; fp32 master weights + Adam moments (12 B/param) sit in CPU RAM when offloaded.
        wb = 2 if half else 4
        weights = n * wb
        grads = n * wb / world_size + 2 * ds.reduce_bucket_size * wb
        opt_bytes = 12 * n / (world_size if ds.zero_stage >= 1 else 1)
        optimizer, cpu_opt = (0.0, opt_bytes) if ds.offload_optimizer == "cpu" else (opt_bytes, 0.0)
    else:
        weights, grads, optimizer, cpu_opt = 4 * n, 4 * n, 8 * n, 0.0
        if cfg.task == "ae":     # frozen backbone: no grads or Adam state for it
            trainable = n - (L * (4 * d * d + 2 * d * f + 9 * d + f) + V * d + d * d + 3 * d + V)
            grads, optimizer = 4 * trainable, 8 * trainable
    per_token = activation_bytes_per_token(d, L, f, V, half, cfg.model.gradient_checkpointing,
                                           half_residual=cfg.model.residual_dtype == "autocast",
                                           masked_fraction=cfg.data.mask_prob)
    if cfg.task == "ae":
        per_token = 4 * d * 2      # no backward through the backbone
    acts = per_token * cfg.batch.max_tokens_per_batch
    if cfg.model.attention == "sdpa":      # dense block-diagonal mask (CPU path)
        acts += cfg.batch.max_tokens_per_batch ** 2
    return MemoryEstimate(n, weights / GIB, grads / GIB, optimizer / GIB, acts / GIB, CUDA_CONTEXT_GIB,
                          cpu_opt / GIB)


@dataclass
class Validation:
    source: str
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def validate_profile(name_or_path: str, check_deepspeed: bool = True) -> Validation:
    from trainstack.config import ConfigError, load_config
    from trainstack.precision import PrecisionError, resolve_precision

    v = Validation(str(name_or_path))
    try:
        profile = get_profile(str(name_or_path))
    except Exception as e:  # noqa: BLE001 - any load failure is the message
        v.errors.append(f"cannot load profile: {e}")
        return v
    v.source = f"{profile.name} ({profile.path})"
    try:
        cfg = load_config(Config, profile.settings)
    except (ConfigError, ValueError, TypeError) as e:
        v.errors.append(f"settings: {e}")
        return v
    hw = profile_hardware(profile)
    try:
        prec = resolve_precision(cfg.precision, hw)
        v.notes.append(f"precision {prec.name}: {prec.reason}")
    except PrecisionError as e:
        v.errors.append(f"precision '{cfg.precision}' on this profile's GPU class "
                        f"(compute capability {profile.requires.min_compute_capability}): {e}")
        return v
    if cfg.deepspeed.enabled and not hw.has_gpu:
        v.errors.append("deepspeed.enabled on a CPU profile: DeepSpeed offload needs a GPU")
    if cfg.model.attention in ("flash", "varlen"):
        from esm2ae.model import VARLEN_MIN_CAPABILITY

        cap = profile.requires.min_compute_capability
        if not hw.has_gpu or cap is None or tuple(cap) < VARLEN_MIN_CAPABILITY:
            admits = "no GPU" if not hw.has_gpu else f"GPUs from compute capability {hw.gpu.capability[0]}.{hw.gpu.capability[1]}"
            v.errors.append(f"model.attention={cfg.model.attention} needs a GPU of compute capability 8.0 or newer; "
                            f"this profile admits {admits} (requires.min_compute_capability): use sdpa or auto")
    world = max(1, profile.requires.gpu_count)
    accum = cfg.batch.grad_accum_steps(world)
    actual = accum * cfg.batch.max_tokens_per_batch * world
    v.notes.append(f"tokens/step: {cfg.batch.max_tokens_per_batch} per micro-batch x {accum} accumulation x "
                   f"{world} GPU(s) = {actual:,} (target {cfg.batch.tokens_per_step:,})")
    if actual > 1.25 * cfg.batch.tokens_per_step:
        v.errors.append(f"tokens per step {actual:,} overshoots batch.tokens_per_step "
                        f"{cfg.batch.tokens_per_step:,} by >25%: lower batch.max_tokens_per_batch")
    if cfg.optim.warmup_steps >= cfg.max_steps:
        v.errors.append(f"optim.warmup_steps={cfg.optim.warmup_steps} >= max_steps={cfg.max_steps}")
    if cfg.deepspeed.enabled and check_deepspeed:
        try:
            from deepspeed.runtime.config import DeepSpeedConfig
        except ImportError:
            v.errors.append("deepspeed.enabled but deepspeed is not installed: pip install 'esm2ae[deepspeed]'")
        else:
            ds_json = deepspeed_json(cfg, prec.name, accum, world)
            try:
                DeepSpeedConfig(ds_json)
                v.notes.append("deepspeed: config accepted by deepspeed.runtime.config.DeepSpeedConfig")
            except Exception as e:  # noqa: BLE001 - pydantic and assertion errors alike
                v.errors.append(f"deepspeed config rejected by DeepSpeed: {' '.join(str(e).split())[:300]}")
    try:
        est = estimate_memory(cfg, prec.name, world)
    except ValueError as e:
        v.notes.append(f"memory: not estimated ({e})")
        return v
    if hw.has_gpu:
        budget = USABLE_FRACTION * hw.gpu.memory_gib
        v.notes.append(f"memory: {est.describe()} vs {budget:.1f} usable of {hw.gpu.memory_gib:.1f} GiB")
        if est.total_gib > budget:
            v.errors.append(f"does not fit: {est.describe()} > {budget:.1f} GiB usable "
                            f"({USABLE_FRACTION:.0%} of {hw.gpu.memory_gib:.1f}); lower batch.max_tokens_per_batch, "
                            "enable model.gradient_checkpointing or deepspeed offload")
        if est.cpu_optimizer_gib and est.cpu_optimizer_gib * 1.5 > hw.ram_gib:
            v.errors.append(f"CPU RAM: offloaded optimizer needs ~{1.5 * est.cpu_optimizer_gib:.1f} GiB "
                            f"> requires.min_ram_gib {hw.ram_gib}")
    else:
        v.notes.append(f"memory: {est.describe()} (CPU RAM {hw.ram_gib} GiB)")
        if est.total_gib > hw.ram_gib:
            v.errors.append(f"does not fit in {hw.ram_gib} GiB RAM: {est.describe()}")
    return v
