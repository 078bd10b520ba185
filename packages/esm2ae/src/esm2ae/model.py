"""ESM-2 models by name, a packed (unpadded) forward over HF weights, and the autoencoder.

The packed forward reuses the parameters of a transformers ``EsmForMaskedLM`` (so checkpoints
stay ``save_pretrained``-compatible) but runs every micro-batch as one flat row of tokens with
per-sequence rotary positions and block-diagonal attention, so no padding is computed.
Attention backends, chosen once (``pick_attention_backend``):

- ``flash``: flash-attn 2's varlen kernels when the optional extra is installed (``HAS_FLASH_ATTN``);
  compute capability 8.0 or newer;
- ``fa4``: FlashAttention-4's varlen kernels (the flash-attn-4 package, CuTe DSL, compiled at their first
  call and kept in the compile cache; Hopper and Blackwell kernels of their own) when installed
  (``HAS_FLASH_ATTN4``); ``auto``'s choice on Hopper, where it was measured (H200, ESM-2 650M: 3.5% more
  tokens/s than torch's varlen kernel, a FlashAttention-2 kernel; BENCHMARKS.md);
- ``varlen``: PyTorch's own flash varlen kernel (``torch.nn.attention.varlen``, torch >= 2.10:
  ``HAS_TORCH_VARLEN``); compute capability 8.0 or newer, bf16/fp16; ``auto``'s choice where neither
  flash-attn package is picked (on an H200, ESM-2 650M: 5.7% more tokens/s than FlexAttention, and no
  FlexAttention kernels to compile on a cold start: BENCHMARKS.md);
- ``flex``: torch FlexAttention with a document mask (compiled on CUDA; ``auto`` on torch without varlen);
- ``sdpa``: PyTorch SDPA with a dense block-diagonal mask (CPU, tests, GPUs older than sm_80; O(T^2)
  memory for the mask).

Compiled (``PackedEsm.compile``), one layer function serves every layer: its weights come in as
tensors, so all layers share one graph (regional compilation: one compile, not one per layer). The
varlen kernels take per-batch sequence boundaries (their count varies), so with ``flash``, ``fa4`` and
``varlen`` attention is called between compiled graphs, which see only fixed shapes: the first layer up
to attention, one layer after attention with the next one up to it (serving every layer boundary), and
the last layer after attention (``CompiledLayers``).
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

# flash-attn 2's CUDA extension: flash-attn-4 installs a ``flash_attn`` package too (only ``flash_attn.cute``)
HAS_FLASH_ATTN = importlib.util.find_spec("flash_attn_2_cuda") is not None


def _has_flash_attn4() -> bool:
    """Whether flash-attn-4's ``flash_attn.cute`` is installed, found without importing ``flash_attn``
    (flash-attn 2's package imports its CUDA extension)."""
    spec = importlib.util.find_spec("flash_attn")
    return spec is not None and any((Path(p) / "cute" / "interface.py").is_file()
                                    for p in spec.submodule_search_locations or ())


HAS_FLASH_ATTN4 = _has_flash_attn4()


def _has_torch_varlen() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return False
    # torch 2.9's first version had no ``scale``; ESM pre-scales the query, so the kernel's must be 1
    return "scale" in inspect.signature(varlen_attn).parameters


HAS_TORCH_VARLEN = _has_torch_varlen()
ATTENTION_BACKENDS = ("auto", "flash", "fa4", "varlen", "flex", "sdpa")
VARLEN_MIN_CAPABILITY = (8, 0)   # flash kernels (flash-attn 2 and 4, torch's varlen): Ampere and newer
FA4_AUTO_CAPABILITY_MAJOR = 9      # Hopper: where auto's pick of FlashAttention-4 was measured

# The ESM-2 family (Lin et al. 2023); written here so random init needs no hub access.
ESM2_SIZES: dict[str, dict] = {
    "esm2_t6_8M": dict(num_hidden_layers=6, hidden_size=320, num_attention_heads=20, intermediate_size=1280),
    "esm2_t12_35M": dict(num_hidden_layers=12, hidden_size=480, num_attention_heads=20, intermediate_size=1920),
    "esm2_t30_150M": dict(num_hidden_layers=30, hidden_size=640, num_attention_heads=20, intermediate_size=2560),
    "esm2_t33_650M": dict(num_hidden_layers=33, hidden_size=1280, num_attention_heads=20, intermediate_size=5120),
    "esm2_t36_3B": dict(num_hidden_layers=36, hidden_size=2560, num_attention_heads=40, intermediate_size=10240),
    "esm2_t48_15B": dict(num_hidden_layers=48, hidden_size=5120, num_attention_heads=40, intermediate_size=20480),
    # Not an ESM-2 release: a tiny model for CPU tests and debugging.
    "esm2_tiny": dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128),
}

# ESM-2 alphabet (fair-esm order): special tokens, residues, then <null_1> and <mask>.
ESM2_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P",
              "K", "Q", "N", "F", "Y", "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-", "<null_1>",
              "<mask>"]
CLS_ID, PAD_ID, EOS_ID, UNK_ID, MASK_ID = 0, 1, 2, 3, 32
RESIDUE_IDS = list(range(4, 29))   # what the 10% "random token" branch of MLM draws from
TOKEN_TO_ID = {t: i for i, t in enumerate(ESM2_VOCAB)}


def short_name(name: str) -> str:
    """'facebook/esm2_t33_650M_UR50D' -> 'esm2_t33_650M'."""
    base = Path(name).name
    for key in ESM2_SIZES:
        if base.startswith(key):
            return key
    return base


def esm2_config(name: str, **overrides):
    """An ``EsmConfig`` for an ESM-2 size given by name (short or hub-style)."""
    from transformers import EsmConfig

    key = short_name(name)
    if key not in ESM2_SIZES:
        raise ValueError(f"unknown ESM-2 size '{name}'; known: {', '.join(ESM2_SIZES)}")
    kw = dict(
        vocab_size=len(ESM2_VOCAB), pad_token_id=PAD_ID, mask_token_id=MASK_ID,
        max_position_embeddings=1026, position_embedding_type="rotary", token_dropout=True,
        emb_layer_norm_before=False, layer_norm_eps=1e-5, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, hidden_act="gelu", initializer_range=0.02,
        tie_word_embeddings=True, is_folding_model=False, vocab_list=None,
    )
    kw.update(ESM2_SIZES[key])
    kw.update(overrides)
    return EsmConfig(**kw)


def load_esm(name_or_path: str, pretrained: bool = True, attn_implementation: str = "sdpa", device=None):
    """``(EsmForMaskedLM, source)``. A local HF directory is loaded as it is ("local"). Otherwise
    ``pretrained`` loads the published weights ("hub": a hub id, or an ESM-2 size for
    facebook/<size>_UR50D) and a failure is a one-line ``ConfigError`` naming the model: never a
    silent random start. Random init ("random") only when ``pretrained`` is false, from the built-in
    config of an ESM-2 size, made on ``device`` (a GPU draws 650M random weights in well under a
    second; a CPU takes seconds, which a run's cold start would pay)."""
    from trainstack.config import ConfigError
    from transformers import EsmForMaskedLM

    local = Path(name_or_path).expanduser()
    if (local / "config.json").is_file():
        return EsmForMaskedLM.from_pretrained(local, attn_implementation=attn_implementation), "local"
    if local.is_dir() or name_or_path.startswith(("/", ".", "~")):
        what = "has no config.json" if local.is_dir() else "does not exist"
        raise ConfigError(f"model.name={name_or_path}: the directory {what}; point it at an HF model directory "
                          f"(a run's final/), or name an ESM-2 size ({', '.join(ESM2_SIZES)})")
    key = short_name(name_or_path)
    if not pretrained:
        if key not in ESM2_SIZES:
            raise ConfigError(f"model.name={name_or_path}: random init (model.pretrained=false) needs an ESM-2 "
                              f"size ({', '.join(ESM2_SIZES)}) or a local HF directory")
        config = esm2_config(name_or_path)
        config._attn_implementation = attn_implementation
        with torch.device(device or "cpu"):
            return EsmForMaskedLM(config), "random"
    if key == "esm2_tiny":
        raise ConfigError("model.name=esm2_tiny has no published weights (a size for tests); set "
                          "model.pretrained=false to train it from random init")
    hub = name_or_path if "/" in name_or_path else f"facebook/{key}_UR50D"
    from trainstack.hub import loading

    # offline and not cached, no such repository, a malformed id: trainstack.hub's one line
    with loading(hub, what="model", key="model.name",
                 instead="point model.name at a local directory, or set model.pretrained=false to train from "
                         "random init"):
        return EsmForMaskedLM.from_pretrained(hub, attn_implementation=attn_implementation), "hub"


def count_params(model: nn.Module, non_embedding: bool = False) -> int:
    n = sum(p.numel() for p in model.parameters())
    if non_embedding:
        n -= sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    return n


def esm_flops_per_token(config, mean_seq_len: float) -> float:
    """Training FLOPs per token: 6N (N = non-embedding params, plus the LM head) + attention
    (12 * layers * d_model * mean attended length, forward + backward of QK^T and AV)."""
    d, L, f = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    per_layer = 4 * d * d + 2 * d * f
    n = L * per_layer + d * d + d * config.vocab_size
    return 6 * n + 12 * L * d * mean_seq_len


# ---------------------------------------------------------------------------------- packing

@dataclass
class PackedBatch:
    """One micro-batch as a flat row. ``seq_ids`` numbers sequences 0..B-1; tail filler tokens
    (to a fixed length, so compiled shapes stay static) get id B and attend only to each other."""
    input_ids: torch.Tensor      # (T,) long
    position_ids: torch.Tensor   # (T,) long, restarts at 0 per sequence
    seq_ids: torch.Tensor        # (T,) long
    cu_seqlens: torch.Tensor     # (B+2,) int32, filler segment last
    max_seqlen: int
    num_seqs: int                # B (real sequences)
    labels: torch.Tensor | None = None   # (T,) long, -100 where no loss
    label_positions: torch.Tensor | None = None   # (M,) long: where labels are not -100, found on the host

    def to(self, device, non_blocking=True) -> PackedBatch:
        from trainstack.speed import to_device  # pinned on the way to CUDA: the host need not wait

        move = to_device if non_blocking else (lambda t, d: t.to(d))
        mv = lambda t: None if t is None else move(t, device)  # noqa: E731
        return PackedBatch(mv(self.input_ids), mv(self.position_ids), mv(self.seq_ids), mv(self.cu_seqlens),
                           self.max_seqlen, self.num_seqs, mv(self.labels), mv(self.label_positions))

    def __len__(self) -> int:   # samples, for the loop's per-step counts
        return self.num_seqs

    @property
    def real_tokens(self) -> int:
        return int(self.cu_seqlens[self.num_seqs])


def pack_sequences(token_lists: list[list[int]], labels: list[list[int]] | None = None,
                   total_len: int | None = None, pad_multiple: int = 1) -> PackedBatch:
    lengths = [len(t) for t in token_lists]
    real = sum(lengths)
    total = total_len if total_len is not None else real
    total = max(total, real)
    total = int(math.ceil(total / pad_multiple) * pad_multiple)
    fill = total - real
    ids = torch.full((total,), PAD_ID, dtype=torch.long)
    lab = torch.full((total,), -100, dtype=torch.long)
    pos = torch.zeros(total, dtype=torch.long)
    seg = torch.full((total,), len(lengths), dtype=torch.long)
    o = 0
    for i, toks in enumerate(token_lists):
        n = len(toks)
        ids[o:o + n] = torch.as_tensor(toks)
        if labels is not None:
            lab[o:o + n] = torch.as_tensor(labels[i])
        pos[o:o + n] = torch.arange(n)
        seg[o:o + n] = i
        o += n
    pos[o:] = torch.arange(fill)
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    cu.append(total)
    if labels is None:
        lab, lab_pos = None, None
    else:
        lab_pos = (lab != -100).nonzero().squeeze(1)
    return PackedBatch(ids, pos, seg, torch.tensor(cu, dtype=torch.int32),
                       max(lengths + [fill]), len(lengths), lab, lab_pos)


# --------------------------------------------------------------------------------- attention

def pick_attention_backend(requested: str, device_type: str, capability: tuple[int, int] | None = None) -> str:
    """The attention backend for ``requested`` on a device (``capability``: the CUDA compute capability).
    auto on sm_80+: FlashAttention-4 on Hopper when installed, else flash-attn 2 when installed, else torch's
    varlen kernel, else FlexAttention; SDPA below sm_80 (flash kernels do not run there, and FlexAttention's
    Triton kernels need more shared memory than Turing has) and on CPU."""
    if requested not in ATTENTION_BACKENDS:
        raise ValueError(f"model.attention={requested}; allowed: {', '.join(ATTENTION_BACKENDS)}")
    if requested == "flash" and not HAS_FLASH_ATTN:
        raise ValueError("model.attention=flash needs the optional extra: pip install 'esm2ae[flash]'")
    if requested == "fa4" and not HAS_FLASH_ATTN4:
        raise ValueError("model.attention=fa4 needs FlashAttention-4: pip install 'esm2ae[fa4]' "
                         "(the flash-attn-4 package)")
    if requested == "varlen" and not HAS_TORCH_VARLEN:
        raise ValueError(f"model.attention=varlen needs torch >= 2.10 (torch.nn.attention.varlen with a scale "
                         f"argument; this is torch {torch.__version__}): use flex or sdpa")
    flash_capable = device_type == "cuda" and (capability is None or tuple(capability) >= VARLEN_MIN_CAPABILITY)
    if requested in ("flash", "fa4", "varlen") and not flash_capable:
        where = "a CPU" if device_type != "cuda" else f"compute capability {capability[0]}.{capability[1]}"
        raise ValueError(f"model.attention={requested} runs on CUDA GPUs of compute capability 8.0 or newer, "
                         f"not on {where}: use sdpa")
    if requested != "auto":
        return requested
    if device_type != "cuda":
        return "sdpa"
    if not flash_capable:
        return "sdpa"
    if HAS_FLASH_ATTN4 and capability is not None and capability[0] == FA4_AUTO_CAPABILITY_MAJOR:
        return "fa4"
    if HAS_FLASH_ATTN:
        return "flash"
    return "varlen" if HAS_TORCH_VARLEN else "flex"


def document_block_mask(seq_ids: torch.Tensor):
    from torch.nn.attention.flex_attention import create_block_mask

    def same_doc(b, h, q, kv):
        return seq_ids[q] == seq_ids[kv]

    T = seq_ids.numel()
    return create_block_mask(same_doc, None, None, T, T, device=seq_ids.device,
                             _compile=seq_ids.device.type == "cuda")


def prepare_attention(backend: str, batch: PackedBatch):
    """What every layer's attention needs, built once per micro-batch."""
    if backend == "flex":
        return document_block_mask(batch.seq_ids)
    if backend == "sdpa":
        s = batch.seq_ids
        return s[:, None] == s[None, :]
    return (batch.cu_seqlens, batch.max_seqlen)


def varlen_kernel():
    """torch's varlen attention function (a seam: CPU tests put a reference implementation here)."""
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn


def fa4_kernel():
    """FlashAttention-4's varlen function (a seam: CPU tests put a reference implementation here)."""
    from flash_attn.cute.interface import flash_attn_varlen_func

    return flash_attn_varlen_func


def attend(backend: str, attn_arg, q, k, v):
    """q, k, v: (T, H, D), query pre-scaled (ESM scales before rotary) -> (T, H, D)."""
    if backend == "flash":
        from flash_attn import flash_attn_varlen_func
        cu, max_len = attn_arg
        return flash_attn_varlen_func(q, k, v, cu, cu, max_len, max_len, softmax_scale=1.0)
    if backend == "fa4":
        cu, max_len = attn_arg
        out, _lse = fa4_kernel()(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max_len,
                                 max_seqlen_k=max_len, softmax_scale=1.0)
        return out
    if backend == "varlen":
        cu, max_len = attn_arg
        return varlen_kernel()(q, k, v, cu, cu, max_len, max_len, scale=1.0)
    q, k, v = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
    if backend == "flex":
        from torch.nn.attention.flex_attention import flex_attention
        out = flex_attention(q, k, v, block_mask=attn_arg, scale=1.0)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_arg, scale=1.0)
    return out.squeeze(0).transpose(0, 1)


# ----------------------------------------------------------------------------- packed forward

def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def attention_inputs(h, cos, sin, num_heads: int, p: tuple):
    """The layer up to attention: LayerNorm, q/k/v projections, query scaling, rotary. -> q, k, v (T, H, D)."""
    ln1_w, ln1_b, wq, bq, wk, bk, wv, bv, eps = p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[16]
    T, d = h.shape
    D = d // num_heads
    x = F.layer_norm(h, (d,), ln1_w, ln1_b, eps)
    # one matmul for q, k and v (their weights side by side): one larger GEMM instead of three, and
    # in backward one input gradient instead of three summed
    qkv = F.linear(x, torch.cat((wq, wk, wv)), torch.cat((bq, bk, bv))).view(T, 3, num_heads, D)
    q, k, v = qkv.unbind(1)
    q = q * D ** -0.5
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    # v copied out of the q/k/v block: the kernel saves v for backward, and a view would keep the whole
    # block alive per layer (on an H200, 650M at 32,768 tokens: 5.2 GiB more peak memory, no speed gained)
    return q, k, v.contiguous()


def attention_output(h, a, p: tuple):
    """The layer after attention: output projection, residual, LayerNorm, GELU MLP, residual."""
    wo, bo, ln2_w, ln2_b, w1, b1, w2, b2, eps = p[8:]
    T, d = h.shape
    h = h + F.linear(a.reshape(T, d), wo, bo)
    x = F.layer_norm(h, (d,), ln2_w, ln2_b, eps)
    x = F.gelu(F.linear(x, w1, b1))
    return h + F.linear(x, w2, b2)


def esm_layer(h, cos, sin, backend: str, attn_arg, num_heads: int, p: tuple):
    """One pre-LN ESM layer on packed tokens (T, d). Parameters come in as plain tensors so one
    compiled graph serves every layer (a module argument would recompile per layer)."""
    q, k, v = attention_inputs(h, cos, sin, num_heads, p)
    return attention_output(h, attend(backend, attn_arg, q, k, v), p)


def attention_output_then_inputs(h, a, cos, sin, num_heads: int, p: tuple, p_next: tuple):
    """One layer's part after attention and the next layer's part before it, as one function: the
    residual stream between them is used inside it twice (the next LayerNorm, the next residual), so
    compiled its two gradients are summed inside the compiled backward, not by a separate kernel."""
    h = attention_output(h, a, p)
    return (h, *attention_inputs(h, cos, sin, num_heads, p_next))


def inductor_compile_options(mode: str) -> dict:
    """torch.compile's arguments for model.compile_mode. "autotune-pointwise" and "coordinate-descent" are
    Inductor's default mode with its generated (norm, GELU, rotary) kernels' block sizes timed on this GPU,
    more candidates or a search; the matmuls stay cuBLAS's (max-autotune also times Triton matmuls: many
    minutes for 650M)."""
    tuning = {"autotune-pointwise": "max_autotune_pointwise", "coordinate-descent": "coordinate_descent_tuning"}
    if mode in tuning:
        return {"mode": None, "options": {tuning[mode]: True}}
    return {"mode": mode}


SPLIT_BACKENDS = ("flash", "fa4", "varlen")   # attention called between compiled graphs, not inside one


@dataclass(frozen=True)
class CompiledLayers:
    """The compiled layer functions (``compiled_esm_layers``). flex and sdpa: ``whole``, the layer with its
    attention, one graph. flash, fa4 and varlen: attention runs as it is between graphs (its sequence
    boundaries change in number from batch to batch, which would recompile a graph holding them):
    ``before`` (the first layer up to attention), ``between`` (a layer after attention and the next one up
    to it) and ``after`` (the last layer after attention), each one graph serving every layer."""
    whole: object
    before: object
    between: object
    after: object

    def layer(self, h, cos, sin, backend: str, attn_arg, num_heads: int, p: tuple):
        """One layer on its own (gradient checkpointing recomputes layer by layer)."""
        if backend not in SPLIT_BACKENDS:
            return self.whole(h, cos, sin, backend, attn_arg, num_heads, p)
        q, k, v = self.before(h, cos, sin, num_heads, p)
        return self.after(h, attend(backend, attn_arg, q, k, v), p)

    def stack(self, h, cos, sin, backend: str, attn_arg, num_heads: int, params: list[tuple]):
        """Every layer in turn: a split backend chains ``between`` from one attention call to the next."""
        if backend not in SPLIT_BACKENDS:
            for p in params:
                h = self.whole(h, cos, sin, backend, attn_arg, num_heads, p)
            return h
        q, k, v = self.before(h, cos, sin, num_heads, params[0])
        for p, p_next in zip(params, params[1:], strict=False):
            h, q, k, v = self.between(h, attend(backend, attn_arg, q, k, v), cos, sin, num_heads, p, p_next)
        return self.after(h, attend(backend, attn_arg, q, k, v), params[-1])


@functools.cache
def compiled_esm_layers(compile_backend: str = "inductor", mode: str = "default") -> CompiledLayers:
    """The layer functions compiled once per process (and backend), shared by every layer and model.
    ``mode``: model.compile_mode, for Inductor only (the tracing backends have none)."""
    options = {"dynamic": False, "backend": compile_backend}
    if compile_backend == "inductor":
        options.update(inductor_compile_options(mode))
    return CompiledLayers(*(torch.compile(fn, **options) for fn in
                            (esm_layer, attention_inputs, attention_output_then_inputs, attention_output)))


def layer_params(layer) -> tuple:
    a = layer.attention
    return (a.LayerNorm.weight, a.LayerNorm.bias, a.self.query.weight, a.self.query.bias,
            a.self.key.weight, a.self.key.bias, a.self.value.weight, a.self.value.bias,
            a.output.dense.weight, a.output.dense.bias, layer.LayerNorm.weight, layer.LayerNorm.bias,
            layer.intermediate.dense.weight, layer.intermediate.dense.bias,
            layer.output.dense.weight, layer.output.dense.bias, layer.LayerNorm.eps)


class PackedEsm(nn.Module):
    """Packed forward over an HF ``EsmForMaskedLM``'s own modules and weights."""

    def __init__(self, hf_model, attention: str = "auto", compile: bool = False, compile_backend: str = "inductor"):
        super().__init__()
        self.hf = hf_model
        self.config = hf_model.config
        self.attention_request = attention
        self.compile = compile
        self.compile_backend = compile_backend
        self.compile_mode = "default"
        self.gradient_checkpointing = False
        self.residual_dtype = "fp32"
        """"autocast": the residual stream in autocast's dtype (see esm2ae.config.ModelConfig)"""
        # HF's contact-prediction head is not part of MLM training; frozen so DDP does not wait
        # for gradients that never come
        contact = getattr(hf_model.esm, "contact_head", None)
        if contact is not None:
            contact.requires_grad_(False)

    def backend(self, device_type: str) -> str:
        capability = torch.cuda.get_device_capability() if device_type == "cuda" else None
        return pick_attention_backend(self.attention_request, device_type, capability)

    def hidden_states(self, batch: PackedBatch) -> torch.Tensor:
        esm = self.hf.esm
        ids = batch.input_ids
        h = esm.embeddings.word_embeddings(ids)
        if self.config.token_dropout:
            # ESM's mask-dropout rescale, per sequence: (1 - 0.15*0.8) / (1 - observed mask ratio)
            is_mask = ids == MASK_ID
            h = h.masked_fill(is_mask.unsqueeze(-1), 0.0)
            nseg = batch.num_seqs + 1
            lengths = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).to(h.dtype)
            masked = torch.zeros(nseg, dtype=h.dtype, device=h.device).index_add_(
                0, batch.seq_ids, is_mask.to(h.dtype))
            scale = (1 - 0.15 * 0.8) / (1 - masked / lengths.clamp(min=1))
            h = h * scale[batch.seq_ids].unsqueeze(-1).to(h.dtype)
        inv_freq = esm.rotary_embeddings.inv_freq
        freqs = batch.position_ids[:, None].float() * inv_freq.float()[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
        if self.residual_dtype == "autocast":
            h = h.to(dtype)
        cos, sin = emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]
        backend = self.backend(ids.device.type)
        attn_arg = prepare_attention(backend, batch)
        H = self.config.num_attention_heads
        params = [layer_params(layer) for layer in esm.encoder.layer]
        checkpointing = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        compiled = compiled_esm_layers(self.compile_backend, self.compile_mode) if self.compile else None
        if compiled is not None and not checkpointing:
            h = compiled.stack(h, cos, sin, backend, attn_arg, H, params)
        else:
            fn = compiled.layer if compiled is not None else esm_layer
            for p in params:
                args = (h, cos, sin, backend, attn_arg, H, p)
                h = torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False) if checkpointing else fn(*args)
        return esm.encoder.emb_layer_norm_after(h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.hf.lm_head(hidden)

    def masked_lm_scores(self, hidden: torch.Tensor, batch: PackedBatch):
        """(sum of masked-token CE, number of masked tokens, number correct) as tensors, the LM head run on
        the masked tokens only (~15%): its dense layer, GELU and LayerNorm work per token, and the other
        tokens' logits would go unused. The positions come with the batch, found on the host, since a
        ``nonzero()`` here would wait for the GPU."""
        where = batch.label_positions
        if where is None:
            where = (batch.labels != -100).nonzero().squeeze(1)
        labels = batch.labels.index_select(0, where)
        logits = self.logits(hidden.index_select(0, where)).float()
        loss_sum = F.cross_entropy(logits, labels, reduction="sum")
        # the count is known here already: a fill, not a pass over the whole batch's labels
        return loss_sum, labels.new_full((), labels.numel()), (logits.argmax(-1) == labels).sum()

    def forward(self, batch: PackedBatch):
        """Returns (sum of masked-token CE, number of masked tokens, number correct) as tensors."""
        return self.masked_lm_scores(self.hidden_states(batch), batch)


# ----------------------------------------------------------------------------------- pooling

def pool(hidden: torch.Tensor, batch: PackedBatch, how: str = "mean") -> torch.Tensor:
    """Per-sequence embedding from packed hidden states: mean over residues (without <cls>/<eos>)
    or the <cls> vector. Returns (B, d)."""
    B = batch.num_seqs
    starts = batch.cu_seqlens[:B].long()
    if how == "cls":
        return hidden[starts]
    if how != "mean":
        raise ValueError(f"pooling '{how}'; allowed: mean, cls")
    ids = batch.input_ids
    residue = (ids != CLS_ID) & (ids != EOS_ID) & (ids != PAD_ID) & (batch.seq_ids < B)
    w = residue.to(hidden.dtype).unsqueeze(-1)
    seg = batch.seq_ids.clamp(max=B)
    sums = torch.zeros(B + 1, hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
    sums.index_add_(0, seg, hidden * w)
    counts = torch.zeros(B + 1, dtype=hidden.dtype, device=hidden.device).index_add_(0, seg, w.squeeze(-1))
    return sums[:B] / counts[:B].clamp(min=1).unsqueeze(-1)


class AutoEncoder(nn.Module):
    """MLP autoencoder: d_model -> widths... -> latent and back (mirror). GELU between layers."""

    def __init__(self, input_dim: int, widths: list[int]):
        super().__init__()
        dims = [input_dim, *widths]
        enc, dec = [], []
        for i in range(len(dims) - 1):
            enc.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                enc.append(nn.GELU())
        rev = dims[::-1]
        for i in range(len(rev) - 1):
            dec.append(nn.Linear(rev[i], rev[i + 1]))
            if i < len(rev) - 2:
                dec.append(nn.GELU())
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(*dec)

    def forward(self, x):
        z = self.encoder(x)
        return z, self.decoder(z)


class Esm2AE(nn.Module):
    """ESM-2 backbone (packed) + autoencoder over a pooled per-protein embedding."""

    def __init__(self, hf_model, ae_widths: list[int], pooling: str = "mean", attention: str = "auto"):
        super().__init__()
        self.backbone = PackedEsm(hf_model, attention)
        self.ae = AutoEncoder(hf_model.config.hidden_size, list(ae_widths))
        self.pooling = pooling

    def forward(self, batch: PackedBatch, mlm: bool = True, ae: bool = True, freeze_backbone: bool = False):
        out = {}
        ctx = torch.no_grad() if freeze_backbone else torch.enable_grad()
        with ctx:
            hidden = self.backbone.hidden_states(batch)
            if mlm and not freeze_backbone:
                out["mlm_loss_sum"], out["mlm_tokens"], out["mlm_correct"] = \
                    self.backbone.masked_lm_scores(hidden, batch)
        if ae:
            emb = pool(hidden, batch, self.pooling)
            if freeze_backbone:
                emb = emb.detach()
            # DeepSpeed fp16 casts the AE weights to half; feed it its own dtype, score in fp32
            z, recon = self.ae(emb.to(self.ae.encoder[0].weight.dtype))
            out["latent"] = z
            out["ae_loss"] = F.mse_loss(recon.float(), emb.float())
        return out
