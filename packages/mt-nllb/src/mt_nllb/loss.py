"""Label-smoothed cross-entropy over the LM head without materializing full fp32 logits.

With a 256,206-token vocabulary, HF's path keeps (tokens x vocab) logits in bf16, an fp32 copy for
log_softmax, and its gradient: at 12k tokens per micro-batch that is ~37 GB. Here the head runs in
chunks of rows: each chunk's logits are formed, reduced to the loss, turned into their gradient
right away (softmax - (1-eps)*onehot - eps/V), multiplied into the hidden-state and weight
gradients, and freed. Only pad-free rows (labels != -100) enter, so padding costs nothing.

The value equals transformers' ``LabelSmoother`` (the Seq2SeqTrainer's label_smoothing_factor):
    (1 - eps) * mean(nll) + eps * mean over tokens of (sum over vocab of -log p) / V
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def _chunk_loss(logits, y, epsilon: float):
    """Summed label-smoothed CE of one chunk of logits (any dtype), computed in fp32."""
    logits = logits.float()
    vocab = logits.shape[-1]
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)
    nll = lse - logits.gather(1, y)
    smooth = lse * vocab - logits.sum(dim=-1, keepdim=True)
    return (1.0 - epsilon) * nll.sum() + (epsilon / vocab) * smooth.sum()


def _chunk_loss_and_grad(logits, y, epsilon: float):
    """The chunk's summed loss and d(loss)/d(logits) = softmax - (1-eps)*onehot - eps/V, in the logits'
    dtype. Compiled, this fuses into ~2 kernels over the chunk (BENCHMARKS.md: 2.8x faster steps)."""
    logits32 = logits.float()
    vocab = logits32.shape[-1]
    lse = torch.logsumexp(logits32, dim=-1, keepdim=True)
    target = logits32.gather(1, y)
    loss = (1.0 - epsilon) * (lse - target).sum() + (epsilon / vocab) * (lse * vocab - logits32.sum(dim=-1, keepdim=True)).sum()
    grad = torch.exp(logits32 - lse) - epsilon / vocab
    grad = grad.scatter_add(1, y, torch.full_like(target, -(1.0 - epsilon)))
    return loss, grad.to(logits.dtype)


def _chunk_loss_and_grad_inplace(logits, y, epsilon: float):
    """Eager form of _chunk_loss_and_grad that reuses the chunk's fp32 buffer (one fp32 copy at a time)."""
    logits32 = logits.float()
    vocab = logits32.shape[-1]
    lse = torch.logsumexp(logits32, dim=-1, keepdim=True)
    target = logits32.gather(1, y)
    loss = (1.0 - epsilon) * (lse - target).sum() + (epsilon / vocab) * (lse * vocab - logits32.sum(dim=-1, keepdim=True)).sum()
    grad = logits32.sub_(lse).exp_().sub_(epsilon / vocab)
    grad.scatter_add_(1, y, torch.full_like(target, -(1.0 - epsilon)))
    return loss, grad.to(logits.dtype)


COMPILE_CHUNK = False
"""Set by configure(compile_loss=True): the per-chunk math runs through torch.compile."""
_compiled: dict = {}


def configure(compile_loss: bool) -> None:
    global COMPILE_CHUNK
    COMPILE_CHUNK = bool(compile_loss)


def _chunk_fn(with_grad: bool):
    if not COMPILE_CHUNK:
        return _chunk_loss_and_grad_inplace if with_grad else _chunk_loss
    fn = _chunk_loss_and_grad if with_grad else _chunk_loss
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=True)
    return _compiled[fn]


class _ChunkedLinearSmoothedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, epsilon: float, chunk_rows: int, denominator):
        n, _ = hidden.shape
        w = weight.to(hidden.dtype)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk_rows):
            h = hidden[start:start + chunk_rows]
            y = labels[start:start + chunk_rows].unsqueeze(1)
            if need_h or need_w:
                # The bf16 logits are passed, not kept: the chunk's only fp32 copy lives inside.
                chunk_loss, g = _chunk_fn(True)(h @ w.t(), y, epsilon)
                if need_h:
                    grad_h[start:start + chunk_rows] = g @ w
                if need_w:
                    grad_w += (g.t() @ h).float()
                del g
            else:
                chunk_loss = _chunk_fn(False)(h @ w.t(), y, epsilon)
            total += chunk_loss
        loss = total / denominator
        ctx.save_for_backward(grad_h if need_h else None, grad_w if need_w else None, denominator)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, denominator = ctx.saved_tensors
        scale = grad_out / denominator
        dh = (grad_h * scale.to(grad_h.dtype)) if grad_h is not None else None
        dw = (grad_w * scale).to(ctx.weight_dtype) if grad_w is not None else None
        return dh, dw, None, None, None, None


def chunked_smoothed_ce(hidden, weight, labels, epsilon: float = 0.1, chunk_rows: int = 2048):
    """hidden (B, T, D) decoder output, weight (V, D) LM head, labels (B, T) with -100 for padding.
    Returns (mean loss over real tokens, number of real tokens as a tensor)."""
    mask = labels.ne(IGNORE_INDEX)
    h = hidden[mask]
    y = labels[mask]
    count = mask.sum()
    denominator = count.clamp(min=1).to(torch.float32)
    loss = _ChunkedLinearSmoothedCE.apply(h, weight, y, float(epsilon), int(chunk_rows), denominator)
    return loss, count


def full_logits_smoothed_ce(logits, labels, epsilon: float = 0.1):
    """The unchunked form (HF LabelSmoother's math), for speed.chunked_ce=false and for checks."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    mask = labels.ne(IGNORE_INDEX)
    y = labels.clamp(min=0).unsqueeze(-1)
    nll = -logp.gather(-1, y).squeeze(-1)
    smooth = -logp.sum(dim=-1)
    count = mask.sum()
    denom = count.clamp(min=1)
    nll = (nll * mask).sum() / denom
    smooth = (smooth * mask).sum() / (denom * logits.shape[-1])
    return (1.0 - epsilon) * nll + epsilon * smooth, count


def seq2seq_loss(model, batch, epsilon: float, chunked: bool = True, chunk_rows: int = 2048):
    """(loss, real target tokens) of an M2M100ForConditionalGeneration on a batch with input_ids,
    attention_mask, decoder_input_ids, labels. The body runs once; the head is ours."""
    core = getattr(model, "_orig_mod", model)
    outputs = core.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         decoder_input_ids=batch["decoder_input_ids"], use_cache=False)
    hidden = outputs.last_hidden_state
    head = core.lm_head.weight
    if chunked:
        return chunked_smoothed_ce(hidden, head, batch["labels"], epsilon, chunk_rows)
    return full_logits_smoothed_ce(torch.nn.functional.linear(hidden, head.to(hidden.dtype)), batch["labels"], epsilon)
