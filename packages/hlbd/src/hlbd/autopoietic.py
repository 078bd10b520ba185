"""The users' "autopoietic" attention-score transform, vectorized over batch and heads.

Definition read from the public APT-Transformer repository (apt_model/modeling/apt_model.py,
AutopoieticAttention.autopoietic_transform, commit 0597c83). For scores S [B, H, Lq, Lk] and, per
batch element b, the head mean A = mean_h S[b]:
  1. S <- clamp(nan_to_num(S, 0, 10, -10), -15, 15)      (so -inf padding becomes -10: it leaks)
  2. conv:     a = clamp(conv2(relu(clamp(conv1(0.05 * clamp(A, -8, 8)), -5, 5))), -5, 5)  (1x1 convs)
  3. Taylor:   g = sigmoid(clamp(1 + 0.05 * 50 * a, 0.5, 1.5)), with g = sigmoid(1) where the mask is set
  4. fuzzy:    P = softmax(clamp(A, -10, 10)); Hm = -P log(P + 1e-6); F = softmax(3 Hm)
  5. T = g * F, rescaled by clamp(|A|_F / |T|_F, 0.8, 1.2)  (norms + 1e-4)
  6. spread:   T' = mean(T) + m * clamp(std(A) / std(T), 0.8, 1.2) * (T - mean(T)),
               m = clamp(0.3 / log(1 + clamp(max|A|, 1, 10)), 0.1, 0.5)  (variances floored at 1e-2)
  7. residual: R = (1 - r) T' + r A,  r = 0.4 + clamp(mean(Hm) / log(Lk), 0, 0.4)
  8. quantile temperature: R <- clamp(R / clamp(clamp(tau, 1, 1.5) (1 + 0.1 log1p(clamp(q75 - q25, 0.5, 5))), 1, 2), -15, 15)
     then R <- A if more than 20% of R is NaN/Inf, else nan_to_num; clamp(-10, 10)
  9. heads pulled toward their mean: out[b, h] = clamp(R + 0.2 (S[b, h] - A), -15, 15)
 10. out += mask (additive float mask, e.g. causal -inf); nan_to_num; clamp(-30, 30)
All statistics (means, norms, quantiles) are per batch element over the whole [Lq, Lk] map.

``autopoietic_transform`` does this with no Python loop over batch or heads and no host sync.
``autopoietic_transform_loop`` is the straightforward per-batch, per-head version of the same math,
used as the float64 reference in the tests and, with ``sync_stats=True``, by the reproduction of
the users' loop (which reads statistics back with ``.item()`` on every call).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _quantile_last(x: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile(x, q, dim=-1) with linear interpolation, via sort: compiles cleanly."""
    n = x.shape[-1]
    v = x.sort(dim=-1).values
    pos = q * (n - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[..., lo] + (v[..., hi] - v[..., lo]) * (pos - lo)


def mask_flags(attn_mask: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """The users' boolean view of the additive mask (non-zero -> set), as [B or 1, Lq, Lk]."""
    if attn_mask is None:
        return None
    if attn_mask.dim() == 2:
        m = attn_mask.unsqueeze(0)
    elif attn_mask.dim() == 3:
        m = attn_mask
    else:
        m = attn_mask[:, 0]
    return m.to(torch.bool)


def autopoietic_transform(scores, attn_mask, w1, b1, w2, b2, tau):
    """scores [B, H, Lq, Lk]; attn_mask additive float [Lq, Lk] | [B, Lq, Lk] | [B, H, Lq, Lk] or None;
    w1, b1: conv1 (hidden, 1, 1, 1), (hidden,); w2, b2: conv2 (1, hidden, 1, 1), (1,); tau (1,)."""
    B, H, Lq, Lk = scores.shape
    s = torch.nan_to_num(scores, nan=0.0, posinf=10.0, neginf=-10.0).clamp(-15.0, 15.0)
    mean = s.mean(dim=1)                                                   # [B, Lq, Lk]

    scaled = (mean.clamp(-8.0, 8.0) * 0.05).clamp(-10.0, 10.0)
    hidden = scaled.unsqueeze(-1) * w1.view(-1) + b1                       # [B, Lq, Lk, hidden]
    hidden = F.relu(hidden.clamp(-5.0, 5.0))
    ap = (hidden @ w2.view(-1) + b2).clamp(-5.0, 5.0)                      # [B, Lq, Lk]
    ap = torch.nan_to_num(ap, nan=0.0, posinf=2.0, neginf=-2.0).clamp(-5.0, 5.0)

    taylor = (1.0 + 0.05 * (ap * 50.0)).clamp(0.5, 1.5)
    flags = mask_flags(attn_mask, B)
    if flags is not None:
        taylor = torch.where(flags, torch.ones_like(taylor), taylor)
    gate = torch.sigmoid(taylor)

    probs = F.softmax(mean.clamp(-10.0, 10.0), dim=-1)
    ent = -probs * torch.log(probs + 1e-6)
    fuzzy = torch.nan_to_num(F.softmax(3.0 * ent, dim=-1), nan=1.0 / Lk)
    t = gate * fuzzy

    def per_b(x):  # reduce over the [Lq, Lk] map, keep dims for broadcasting
        return x.flatten(1)

    e_orig = torch.linalg.vector_norm(per_b(mean), dim=1) + 1e-4
    e_t = torch.linalg.vector_norm(per_b(t), dim=1) + 1e-4
    t = (e_orig / e_t).clamp(0.8, 1.2).view(B, 1, 1) * t

    t_mean = per_b(t).mean(1).view(B, 1, 1)
    o_mean = per_b(mean).mean(1).view(B, 1, 1)
    t_var = per_b((t - t_mean) ** 2).mean(1).clamp(min=1e-2)
    o_var = per_b((mean - o_mean) ** 2).mean(1).clamp(min=1e-2)
    gamma_dyn = (o_var.sqrt() / t_var.sqrt()).clamp(0.8, 1.2)
    avail = per_b(mean.abs()).amax(1).clamp(1.0, 10.0)
    std_mult = (0.3 * (1.0 / torch.log(1.0 + avail))).clamp(0.1, 0.5)
    spread = t_mean + (std_mult * gamma_dyn).view(B, 1, 1) * (t - t_mean)
    norm_ent = per_b(ent).mean(1) / math.log(Lk)
    r = (0.4 + norm_ent.clamp(0.0, 0.4)).view(B, 1, 1)
    final = (1 - r) * spread + r * mean

    flat = per_b(final)
    score_range = (_quantile_last(flat, 0.75) - _quantile_last(flat, 0.25)).clamp(0.5, 5.0)
    adaptive_tau = (tau.clamp(1.0, 1.5) * (1.0 + 0.1 * torch.log1p(score_range))).clamp(1.0, 2.0)
    final = (final / adaptive_tau.view(B, 1, 1)).clamp(-15.0, 15.0)

    abnormal = (torch.isnan(final) | torch.isinf(final)).float().flatten(1).mean(1).view(B, 1, 1)
    final = torch.where(abnormal > 0.2, mean.clamp(-10.0, 10.0),
                        torch.nan_to_num(final, nan=0.0).clamp(-10.0, 10.0))

    out = (final.unsqueeze(1) + 0.2 * (s - mean.unsqueeze(1))).clamp(-15.0, 15.0)
    if attn_mask is not None:
        m = attn_mask
        if m.dim() == 2:
            m = m.view(1, 1, Lq, Lk)
        elif m.dim() == 3:
            m = m.unsqueeze(1)
        out = out + m
    return torch.nan_to_num(out, nan=0.0).clamp(-30.0, 30.0)


def autopoietic_transform_loop(scores, attn_mask, w1, b1, w2, b2, tau, sync_stats: bool = False,
                               debug_lines: list | None = None):
    """Reference: the same math, one batch element and one head at a time. With ``sync_stats`` it
    also reads statistics back to the host (``.item()``) as the users' version does on every call."""
    B, H, Lq, Lk = scores.shape

    def stats(tag, x):
        if sync_stats:
            line = (f"[{tag}] min={x.min().item():.4f} max={x.max().item():.4f} mean={x.mean().item():.4f} "
                    f"std={x.std().item():.4f} nan={torch.isnan(x).any().item()} inf={torch.isinf(x).any().item()}")
            if debug_lines is not None:
                debug_lines.append(line)

    stats("input", scores)
    s = torch.nan_to_num(scores, nan=0.0, posinf=10.0, neginf=-10.0).clamp(-15.0, 15.0)
    outs = []
    for b in range(B):
        heads = s[b]
        mean = heads.mean(dim=0)
        stats(f"batch {b}", heads)
        scaled = (mean.clamp(-8.0, 8.0) * torch.tensor(0.05, dtype=s.dtype, device=s.device)).clamp(-10.0, 10.0)
        hidden = F.conv2d(scaled.view(1, 1, Lq, Lk), w1, b1)
        hidden = F.relu(hidden.clamp(-5.0, 5.0))
        ap = F.conv2d(hidden, w2, b2).view(Lq, Lk).clamp(-5.0, 5.0)
        if torch.isnan(ap).any() or torch.isinf(ap).any():
            ap = torch.nan_to_num(ap, nan=0.0, posinf=2.0, neginf=-2.0).clamp(-5.0, 5.0)
        flags = None
        if attn_mask is not None:
            flags = attn_mask if attn_mask.dim() == 2 else attn_mask[b] if attn_mask.dim() == 3 else attn_mask[b, 0]
            flags = flags.to(torch.bool)
        taylor = (1.0 + 0.05 * (ap * 50.0)).clamp(0.5, 1.5)
        if flags is not None:
            taylor = torch.where(flags, torch.ones_like(taylor), taylor)
        gate = torch.sigmoid(taylor)
        probs = F.softmax(mean.clamp(-10.0, 10.0), dim=-1)
        ent = -probs * torch.log(probs + 1e-6)
        fuzzy = torch.nan_to_num(F.softmax(3.0 * ent, dim=-1), nan=1.0 / Lk)
        t = gate * fuzzy
        gamma = ((torch.norm(mean, p="fro") + 1e-4) / (torch.norm(t, p="fro") + 1e-4)).clamp(0.8, 1.2)
        t = gamma * t
        t_mean, o_mean = t.mean(), mean.mean()
        t_std = ((t - t_mean) ** 2).mean().clamp(min=1e-2).sqrt()
        o_std = ((mean - o_mean) ** 2).mean().clamp(min=1e-2).sqrt()
        gamma_dyn = (o_std / t_std).clamp(0.8, 1.2)
        avail = mean.abs().max().clamp(1.0, 10.0)
        std_mult = (0.3 * (1.0 / torch.log(1.0 + avail))).clamp(0.1, 0.5)
        spread = t_mean + std_mult * gamma_dyn * (t - t_mean)
        norm_ent = ent.mean() / -torch.log(torch.tensor(1.0 / Lk, dtype=s.dtype, device=s.device))
        r = 0.4 + norm_ent.clamp(0.0, 0.4)
        final = (1 - r) * spread + r * mean
        values = final.reshape(-1)
        score_range = (torch.quantile(values, 0.75) - torch.quantile(values, 0.25)).clamp(0.5, 5.0)
        adaptive_tau = (tau.clamp(1.0, 1.5) * (1.0 + 0.1 * torch.log1p(score_range))).clamp(1.0, 2.0)
        final = (final / adaptive_tau).clamp(-15.0, 15.0)
        abnormal_ratio = (torch.isnan(final) | torch.isinf(final)).float().mean()
        if sync_stats:
            abnormal_ratio = abnormal_ratio.item()
        if abnormal_ratio > 0.2:
            final = mean.clamp(-10.0, 10.0)
        else:
            final = torch.nan_to_num(final, nan=0.0).clamp(-10.0, 10.0)
        per_head = [(final + 0.2 * (heads[h] - mean)).clamp(-15.0, 15.0) for h in range(H)]
        outs.append(torch.stack(per_head))
    out = torch.stack(outs)
    if attn_mask is not None:
        m = attn_mask
        if m.dim() == 2:
            m = m.unsqueeze(0).unsqueeze(0).expand(B, H, -1, -1)
        elif m.dim() == 3:
            m = m.unsqueeze(1).expand(-1, H, -1, -1)
        out = out + m
    out = torch.nan_to_num(out, nan=0.0).clamp(-30.0, 30.0)
    stats("output", out)
    return out
