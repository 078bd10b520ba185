"""The APT encoder-decoder as the users define it, with a choice of attention.

Architecture (from the users' APTModel): token embedding (std 0.02, pad row zero) + sinusoidal
positions (no sqrt(d) scaling) + dropout; post-LN encoder and decoder layers (residual, then
LayerNorm) with GELU feed-forward; a final LayerNorm on each stack; output projection tied to the
embedding, no bias. Attention projections: Xavier-uniform weights, zero biases.

attention:
  standard     scaled dot-product attention (F.scaled_dot_product_attention) with key padding and
               causal masks: padding never leaks.
  autopoietic  the users' score transform (see autopoietic.py), vectorized.
  users-loop   the same transform computed per batch element and head, reading statistics back with
               .item() and appending debug lines to a file as the users' code does; only for
               reproducing their loop in `hlbd bench`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from hlbd.autopoietic import autopoietic_transform, autopoietic_transform_loop

ATTENTIONS = ("standard", "autopoietic", "users-loop")


@dataclass
class APTConfig:
    vocab_size: int
    d_model: int = 256
    n_heads: int = 8
    n_encoder_layers: int = 3
    n_decoder_layers: int = 3
    d_ff: int = 1024
    dropout: float = 0.1
    max_len: int = 64
    attention: str = "standard"
    padding_masks: bool = True   # False reproduces the users' loop, which passes no padding masks
    embed_init_std: float = 0.02  # the users' value; with tied output weights it makes logits tiny at first
    scale_embeddings: bool = False  # multiply input embeddings by sqrt(d_model) (Vaswani et al.)
    checkpointing: bool = False  # recompute each layer's activations in backward (less memory, more compute)
    pad_id: int = 0

    def __post_init__(self):
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got {self.attention!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")

    def to_dict(self) -> dict:
        return asdict(self)


def sinusoidal_positions(max_len: int, d_model: int) -> torch.Tensor:
    pe = torch.zeros(max_len, d_model)
    pos = torch.arange(max_len, dtype=torch.float).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float) * (-math.log(10000.0) / d_model))
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe


class Attention(nn.Module):
    def __init__(self, cfg: APTConfig, debug_log=None):
        super().__init__()
        d = cfg.d_model
        self.n_heads, self.head_dim, self.kind = cfg.n_heads, d // cfg.n_heads, cfg.attention
        self.dropout = cfg.dropout
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, d)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.debug_log = debug_log
        if self.kind != "standard":
            hidden = max(16, d // 4)
            self.sr_conv1 = nn.Conv2d(1, hidden, kernel_size=1)
            self.sr_conv2 = nn.Conv2d(hidden, 1, kernel_size=1)
            for conv in (self.sr_conv1, self.sr_conv2):
                nn.init.xavier_uniform_(conv.weight)
                nn.init.zeros_(conv.bias)
            self.tau = nn.Parameter(torch.ones(1))

    def forward(self, x, memory=None, key_padding_mask=None, causal_mask=None):
        """key_padding_mask: bool [B, Lk], True = padding. causal_mask: additive float [Lq, Lk] (0 / -inf)."""
        kv = x if memory is None else memory
        B, Lq, _ = x.shape
        Lk = kv.shape[1]
        q = self.q_proj(x).view(B, Lq, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(kv).view(B, Lk, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(kv).view(B, Lk, self.n_heads, self.head_dim).transpose(1, 2)
        p_drop = self.dropout if self.training else 0.0
        if self.kind == "standard":
            mask = None
            if key_padding_mask is not None:
                mask = (~key_padding_mask).view(B, 1, 1, Lk)
            if causal_mask is not None:
                causal = causal_mask == 0
                mask = causal if mask is None else (mask & causal)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p_drop)
        else:
            scores = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)
            if key_padding_mask is not None:
                scores = scores.masked_fill(key_padding_mask.view(B, 1, 1, Lk), float("-inf"))
            if causal_mask is not None:
                scores = scores + causal_mask
            args = (scores, causal_mask, self.sr_conv1.weight, self.sr_conv1.bias,
                    self.sr_conv2.weight, self.sr_conv2.bias, self.tau)
            if self.kind == "autopoietic":
                scores = autopoietic_transform(*args)
            else:
                lines = [] if self.debug_log is not None else None
                scores = autopoietic_transform_loop(*args, sync_stats=True, debug_lines=lines)
                if lines is not None:
                    with open(self.debug_log, "a", encoding="utf-8") as f:  # as the users' code does, per call
                        f.write("\n".join(lines) + "\n")
            probs = F.dropout(F.softmax(scores, dim=-1), p_drop, self.training)
            out = probs @ v
        return self.out_proj(out.transpose(1, 2).reshape(B, Lq, -1))


class FeedForward(nn.Module):
    def __init__(self, cfg: APTConfig):
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(cfg.d_model, cfg.d_ff), nn.Linear(cfg.d_ff, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.linear2(self.dropout(F.gelu(self.linear1(x))))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: APTConfig, debug_log=None):
        super().__init__()
        self.self_attn, self.ff = Attention(cfg, debug_log), FeedForward(cfg)
        self.norm1, self.norm2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.drop1, self.drop2 = nn.Dropout(cfg.dropout), nn.Dropout(cfg.dropout)

    def forward(self, x, pad):
        x = self.norm1(x + self.drop1(self.self_attn(x, key_padding_mask=pad)))
        return self.norm2(x + self.drop2(self.ff(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: APTConfig, debug_log=None):
        super().__init__()
        self.self_attn, self.cross_attn = Attention(cfg, debug_log), Attention(cfg, debug_log)
        self.ff = FeedForward(cfg)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(cfg.d_model) for _ in range(3))
        self.drop1, self.drop2, self.drop3 = (nn.Dropout(cfg.dropout) for _ in range(3))

    def forward(self, y, memory, tgt_pad, src_pad, causal):
        y = self.norm1(y + self.drop1(self.self_attn(y, key_padding_mask=tgt_pad, causal_mask=causal)))
        y = self.norm2(y + self.drop2(self.cross_attn(y, memory=memory, key_padding_mask=src_pad)))
        return self.norm3(y + self.drop3(self.ff(y)))


class APTModel(nn.Module):
    def __init__(self, cfg: APTConfig, debug_log=None):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.register_buffer("positions", sinusoidal_positions(cfg.max_len, cfg.d_model), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg, debug_log) for _ in range(cfg.n_encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg, debug_log) for _ in range(cfg.n_decoder_layers))
        self.encoder_norm, self.decoder_norm = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        nn.init.normal_(self.embed.weight, std=cfg.embed_init_std)
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0
        with torch.no_grad():
            self.embed.weight[cfg.pad_id].zero_()

    def _embed(self, ids):
        return self.drop(self.embed(ids) * self.embed_scale + self.positions[: ids.shape[1]])

    def _run_layer(self, layer, *args):
        """One layer, checkpointed when asked and a backward will follow. Non-reentrant: it works
        with inputs that need no gradient and under torch.compile, and it replays the dropout masks
        (the RNG state is saved), so the gradients equal the plain path's."""
        if self.cfg.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def encode(self, src):
        pad = (src == self.cfg.pad_id) if self.cfg.padding_masks else None
        x = self._embed(src)
        for layer in self.encoder_layers:
            x = self._run_layer(layer, x, pad)
        return self.encoder_norm(x), pad

    def decode(self, tgt_in, memory, src_pad):
        L = tgt_in.shape[1]
        causal = torch.triu(torch.full((L, L), float("-inf"), device=tgt_in.device), diagonal=1)
        tgt_pad = (tgt_in == self.cfg.pad_id) if self.cfg.padding_masks else None
        y = self._embed(tgt_in)
        for layer in self.decoder_layers:
            y = self._run_layer(layer, y, memory, tgt_pad, src_pad, causal)
        return F.linear(self.decoder_norm(y), self.embed.weight)  # tied output projection

    def forward(self, src, tgt_in):
        memory, src_pad = self.encode(src)
        return self.decode(tgt_in, memory, src_pad)


def seq2seq_loss(model, src, tgt, pad_id: int = 0):
    """Teacher-forced cross entropy over real target tokens; also the per-sample "all tokens right"
    flags: greedy decoding reproduces a target exactly iff every teacher-forced argmax matches it, so
    this is exact match without decoding. Returns (mean loss, n real tokens, correct flags [B])."""
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    logits = model(src, tgt_in)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), ignore_index=pad_id)
    real = tgt_out != pad_id
    right = ((logits.argmax(-1) == tgt_out) | ~real).all(dim=1)
    return loss, real.sum(), right
