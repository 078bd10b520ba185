"""Peak GPU memory of one training step, estimated from the config (no GPU needed).

    mt-nllb profiles --memory                 # every GPU profile, worst case (every sentence at max length)
    python -c "from mt_nllb.memory import estimate_for_profile; print(estimate_for_profile('rtx4080s-16g').table())"

What it counts, in bytes, for M2M100 under bf16 autocast (fp32 master weights) as core's loop runs
it (forward and backward inside one autocast region, so autocast's cache of bf16 weight copies lives
through the whole micro-step):

- persistent: weights, fp32 grads (kept across accumulation micro-steps), optimizer states
  (AdamW: 2 x param dtype; adamw8bit: 2 bytes + a blockwise fp32 absmax per 256, tensors under 4096
  elements stay 32-bit as bitsandbytes does; Adafactor: factored second moments).
- autocast cache: bf16 copies of every matmul weight (body linears and the tied LM head).
- activations: what autograd saves per token per layer (counted op by op for M2M100's pre-LN layers
  with SDPA: fp32 LayerNorm inputs, the bf16 casts each linear makes of its input, q/k/v, attention
  output, dropout masks, the ReLU output), or with activation checkpointing the fp32 layer inputs
  plus one layer recomputed during backward. ``activation_bytes`` is checked against autograd's saved
  tensors on CPU in the tests.
- loss: our chunked CE keeps the fp32 LM-head gradient (V x d) from forward to backward; each chunk
  holds bf16 logits, their fp32 copy and the bf16 gradient (rows x V x 8 bytes) and forms the chunk's
  weight gradient as a bf16 (V x d) product that is then cast to fp32 (V x d x 6 bytes). Unchunked:
  bf16 logits, fp32 log-softmax and its gradient over all tokens.
- backward of the tied embedding: our head gradient and its scaled copy, then the dense gradients of
  the encoder and decoder embedding lookups (each V x d fp32) before they are summed into ``.grad``.

Peak allocated = max(forward peak, backward peak). Peak reserved = allocated x RESERVED_OVER_ALLOCATED,
the caching allocator's overhead measured on our path on the H100 (BENCHMARKS.md: 1.11-1.23).
The check the acceptance asks for is peak reserved <= 15 GiB; this is an estimate until measured
(scripts/gpu_fit16.sh).
"""

from __future__ import annotations

from dataclasses import dataclass, field

GIB = 2**30
RESERVED_OVER_ALLOCATED = 1.25
"""Reserved / allocated peak on our path, H100 measurements 1.11-1.23 (BENCHMARKS.md), rounded up."""
FIT_LIMIT_GIB = 15.0
"""The acceptance limit on peak reserved memory for the 16 GB profile."""


@dataclass
class Shapes:
    """Parameter counts of an M2M100 config, from a meta-device build (no memory, exact)."""
    total: int
    head: int                 # tied embedding / LM head, V x d
    body_matmul: int          # weights of every nn.Linear in the body (what autocast caches in bf16)
    small_tensors: int        # params in tensors under 4096 elements (kept 32-bit by bitsandbytes)
    adafactor_state: int      # elements of torch.optim.Adafactor's state (row + col for matrices)


def count_params(config) -> Shapes:
    import torch
    from torch import nn
    from transformers import M2M100ForConditionalGeneration

    with torch.device("meta"):
        model = M2M100ForConditionalGeneration(config)
    seen, total, small, ada = set(), 0, 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        small += p.numel() if p.numel() < 4096 else 0
        ada += (p.shape[0] + p.shape[1]) if p.ndim == 2 else p.numel()
    body = sum(m.weight.numel() for m in model.model.modules() if isinstance(m, nn.Linear))
    head = config.vocab_size * config.d_model
    return Shapes(total=total, head=head, body_matmul=body, small_tensors=small, adafactor_state=ada)


def activation_bytes(config, batch: int, src_len: int, tgt_len: int, *, autocast: bool, checkpointing: bool,
                     attn: str = "sdpa", device: str = "cuda") -> dict:
    """Bytes autograd keeps for the body between forward and backward (and the recompute peak).

    Dropout masks are bool on CUDA and in the input's dtype on CPU (``device``). Attention dropout
    costs nothing extra under SDPA on CUDA (the kernels regenerate it from the RNG state)."""
    d, h = config.d_model, config.encoder_attention_heads
    c = 2 if autocast else 4   # matmul outputs
    r = 4                      # residual stream and LayerNorm in/out stay fp32 under autocast
    cast = c if autocast else 0
    on_cuda = device == "cuda"
    drop_c = (1 if on_cuda else c) if config.dropout > 0 else 0    # mask after a linear (16-bit output)
    drop_r = (1 if on_cuda else r) if config.dropout > 0 else 0    # mask on the fp32 embeddings
    act_drop = (1 if on_cuda else c) if config.activation_dropout > 0 else 0
    s_tok, t_tok = batch * src_len, batch * tgt_len
    lse = 4 * h                                        # SDPA's logsumexp per query token
    ln_stats = 8                                       # LayerNorm mean and rstd per token

    def attn_block(self_attention: bool):
        # LayerNorm input (fp32); linear input(s): a bf16 cast per linear under autocast, else the one
        # fp32 LayerNorm output they share; q (+ k, v); SDPA output and out_proj's input; dropout mask.
        lin_in = ((3 if self_attention else 1) * cast if autocast else r) * d
        qkv = (3 if self_attention else 1) * c * d
        return r * d + ln_stats + lin_in + qkv + 2 * c * d + drop_c * d + lse

    def ffn(f):
        return r * d + ln_stats + (cast if autocast else r) * d + c * f + act_drop * f + drop_c * d

    enc_tok = attn_block(True) + ffn(config.encoder_ffn_dim)
    dec_tok = attn_block(True) + attn_block(False) + ffn(config.decoder_ffn_dim)
    cross_src_tok = (2 * cast + 2 * c) * d             # k, v of the encoder output, per decoder layer
    if attn == "eager":  # attention probabilities (+ dropout mask) per head: S^2 terms
        p_bytes = c + (1 if config.attention_dropout > 0 else 0)
        enc_tok += h * src_len * p_bytes
        dec_tok += h * (tgt_len + src_len) * p_bytes
    enc_layer = enc_tok * s_tok
    dec_layer = dec_tok * t_tok + cross_src_tok * s_tok
    masks = 4 * batch * (src_len * src_len + tgt_len * tgt_len + tgt_len * src_len)
    # token ids, scaled embeddings + positions, dropout mask, final LayerNorm input, per side
    edges = (8 + 3 * r * d + drop_r * d + ln_stats) * (s_tok + t_tok)
    if not checkpointing:
        stored = config.encoder_layers * enc_layer + config.decoder_layers * dec_layer + masks + edges
        return {"stored": stored, "recompute": 0}
    inputs = r * d * (config.encoder_layers * s_tok + config.decoder_layers * t_tok + s_tok)
    # One layer's activations rebuilt in backward, plus fp32 gradients flowing through it.
    recompute = max(enc_layer, dec_layer) + 3 * r * d * max(s_tok, t_tok)
    return {"stored": inputs + masks + edges, "recompute": recompute}


@dataclass
class MemoryPlan:
    label: str
    settings: dict
    parts: dict = field(default_factory=dict)    # name -> bytes
    forward_peak: int = 0
    backward_peak: int = 0

    @property
    def allocated_gib(self) -> float:
        return max(self.forward_peak, self.backward_peak) / GIB

    @property
    def reserved_gib(self) -> float:
        return self.allocated_gib * RESERVED_OVER_ALLOCATED

    def fits(self, limit_gib: float = FIT_LIMIT_GIB) -> bool:
        return self.reserved_gib <= limit_gib

    def table(self) -> str:
        lines = [f"{self.label}: " + ", ".join(f"{k}={v}" for k, v in self.settings.items())]
        for k, v in self.parts.items():
            lines.append(f"  {k:<38} {v / GIB:7.2f} GiB")
        lines.append(f"  {'forward peak (allocated)':<38} {self.forward_peak / GIB:7.2f} GiB")
        lines.append(f"  {'backward peak (allocated)':<38} {self.backward_peak / GIB:7.2f} GiB")
        lines.append(f"  {'peak reserved (x' + str(RESERVED_OVER_ALLOCATED) + ')':<38} {self.reserved_gib:7.2f} GiB")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"label": self.label, "settings": self.settings,
                "parts_gib": {k: round(v / GIB, 3) for k, v in self.parts.items()},
                "forward_peak_gib": round(self.forward_peak / GIB, 3),
                "backward_peak_gib": round(self.backward_peak / GIB, 3),
                "allocated_gib": round(self.allocated_gib, 3), "reserved_gib": round(self.reserved_gib, 3)}


def estimate(config, *, batch: int, src_len: int, tgt_len: int, optim: str = "adamw", params_dtype: str = "fp32",
             autocast: bool = True, checkpointing: bool = False, chunked_ce: bool = True, ce_chunk_rows: int = 2048,
             attn: str = "sdpa", label: str = "", autocast_dtype: str = "bf16") -> MemoryPlan:
    """Peak memory of one micro-step at ``batch`` sentences of ``src_len`` / ``tgt_len`` tokens (padded)."""
    shapes = count_params(config)
    p_bytes = 4 if params_dtype == "fp32" else 2
    n = shapes.total
    v, d = config.vocab_size, config.d_model
    c = 2 if autocast else 4
    if optim in ("adamw", "adam"):
        states = 2 * p_bytes * n
    elif optim == "adamw8bit":
        big = n - shapes.small_tensors
        states = 2 * big + 2 * 4 * (big // 256 + 1) + 2 * 4 * shapes.small_tensors
    elif optim == "adafactor":
        states = 4 * shapes.adafactor_state
    else:
        raise ValueError(f"unknown optimizer {optim!r}")
    parts = {"weights": p_bytes * n, "grads": p_bytes * n, f"optimizer states ({optim})": states}
    persistent = sum(parts.values())
    cache = 2 * (shapes.body_matmul + shapes.head) if (autocast and params_dtype == "fp32") else 0
    parts["autocast bf16 weight copies"] = cache
    acts = activation_bytes(config, batch, src_len, tgt_len, autocast=autocast, checkpointing=checkpointing,
                            attn=attn)
    parts["activations kept for backward"] = acts["stored"]
    parts["one layer recomputed (checkpointing)"] = acts["recompute"]
    tokens = batch * tgt_len
    head_grad = 4 * v * d                                # fp32 (V x d)
    if chunked_ce:
        rows = min(ce_chunk_rows, tokens)
        parts["CE: LM-head grad buffer (fp32)"] = head_grad
        parts["CE: one chunk (logits, fp32, grad)"] = rows * v * (c + 4 + c)
        parts["CE: chunk weight-grad product"] = v * d * (c + 4) if autocast else 0
        parts["CE: hidden rows + their grad"] = 2 * 4 * tokens * d
        loss_fwd = sum(parts[k] for k in parts if k.startswith("CE:"))
        loss_bwd = 2 * head_grad                         # the buffer and its scaled copy
    else:
        parts["CE: full logits, fp32 log-softmax"] = tokens * v * (c + 4)
        parts["CE: logits gradient"] = tokens * v * (4 + c)
        loss_fwd = parts["CE: full logits, fp32 log-softmax"]
        loss_bwd = parts["CE: full logits, fp32 log-softmax"] + parts["CE: logits gradient"]
    parts["embedding backward (2 dense V x d)"] = 2 * head_grad
    base = persistent + cache + acts["stored"]
    forward_peak = base + loss_fwd
    backward_peak = base + max(loss_bwd, 2 * head_grad + acts["recompute"])
    settings = {"batch": batch, "src_len": src_len, "tgt_len": tgt_len, "optim": optim, "params": params_dtype,
                "autocast": autocast_dtype if autocast else "off", "checkpointing": checkpointing,
                "chunked_ce": chunked_ce, "ce_chunk_rows": ce_chunk_rows}
    return MemoryPlan(label or "estimate", settings, parts, forward_peak, backward_peak)


def estimate_for_profile(name_or_path: str, overrides=()) -> MemoryPlan:
    """Worst case of a shipped profile: every sentence of a micro-batch at data.max_length on both
    sides, the NLLB-600M architecture (the model the GPU profiles train)."""
    from trainstack.config import load_config
    from trainstack.hardware import load_profiles, resolve_profile

    from .config import TrainConfig
    from .model import load_arch_config
    from .profiles import profile_dir

    profile = resolve_profile(name_or_path, load_profiles(profile_dir()))
    cfg = load_config(TrainConfig, profile.settings, list(overrides))
    arch = "tiny" if cfg.model.name_or_path == "tiny" else "nllb-600m"
    config = load_arch_config(arch, dropout=cfg.model.dropout)
    length = cfg.data.max_length
    batch = cfg.speed.batch_size or max(1, cfg.speed.max_tokens_per_batch // length)
    if cfg.speed.max_batch_size:
        batch = min(batch, cfg.speed.max_batch_size)
    return estimate(config, batch=batch, src_len=length, tgt_len=length, optim=cfg.optim.name,
                    params_dtype=cfg.speed.params_dtype, autocast=cfg.precision != "fp32",
                    checkpointing=cfg.speed.gradient_checkpointing, chunked_ce=cfg.speed.chunked_ce,
                    ce_chunk_rows=cfg.speed.ce_chunk_tokens, attn=cfg.model.attn_implementation,
                    label=f"{profile.name} ({arch}, worst case: {batch} x {length} tokens per side)",
                    autocast_dtype="fp16" if cfg.precision == "fp16" else "bf16")  # same bytes, named as run


def print_profile_plans(profiles) -> None:
    """`mt-nllb profiles --memory`: the estimated peak GPU memory of each GPU profile's worst-case step,
    and its samples/s (measured or estimated, throughput.py)."""
    from .throughput import throughput_line

    for prof in sorted(profiles, key=lambda p: p.name):
        if prof.requires.gpu_count == 0:
            continue
        plan = estimate_for_profile(prof.name)
        budget = prof.requires.min_gpu_memory_gib  # rtx4080s-16g: 15, the acceptance limit
        verdict = "fits" if plan.reserved_gib <= budget else "DOES NOT FIT"
        print()
        print(plan.table())
        print(f"  -> {verdict} in {budget:g} GiB (estimate; measured numbers in BENCHMARKS.md)")
        line = throughput_line(prof.name, plan.settings["checkpointing"])
        if line:
            print(line)
