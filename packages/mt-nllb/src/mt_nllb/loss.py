"""Label-smoothed cross-entropy over the LM head without materializing full fp32 logits.

With a 256,206-token vocabulary, HF's path keeps (tokens x vocab) logits in bf16, an fp32 copy for
log_softmax, and its gradient: at 12k tokens per micro-batch that is ~37 GB. Here the head runs in
chunks of rows: each chunk's logits are formed, reduced to the loss, turned into their gradient
right away (softmax - (1-eps)*onehot - eps/V), multiplied into the hidden-state and weight
gradients, and freed. Eager, only pad-free rows (labels != -100) enter, so padding costs nothing.
With ``fixed_shapes`` (the CUDA-graph fast path) every row enters and padded rows are masked
instead: picking the real rows would give a data-dependent shape and read a count back to the host,
which a captured graph cannot do.

The value equals transformers' ``LabelSmoother`` (the Seq2SeqTrainer's label_smoothing_factor):
    (1 - eps) * mean(nll) + eps * mean over tokens of (sum over vocab of -log p) / V
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def _smoothed_rows(logits32, lse, y, epsilon: float, vocab: int):
    """Per-row label-smoothed CE (n, 1) from fp32 logits (their first ``vocab`` columns are the
    vocabulary; any further ones are alignment padding) and the vocabulary's logsumexp."""
    nll = lse - logits32.gather(1, y.clamp(min=0))
    smooth = lse * vocab - logits32[:, :vocab].sum(dim=-1, keepdim=True)
    return (1.0 - epsilon) * nll + (epsilon / vocab) * smooth


def _chunk_loss(logits, y, epsilon: float, masked: bool, vocab: int):
    """Summed label-smoothed CE of one chunk of logits (any dtype), computed in fp32. ``masked``: rows
    whose label is IGNORE_INDEX count zero (torch.where, so even a non-finite padded row adds nothing)."""
    logits32 = logits.float()
    lse = torch.logsumexp(logits32[:, :vocab], dim=-1, keepdim=True)
    rows = _smoothed_rows(logits32, lse, y, epsilon, vocab)
    if masked:
        rows = torch.where(y.ne(IGNORE_INDEX), rows, 0.0)
    return rows.sum()


def _chunk_loss_and_grad(logits, y, epsilon: float, masked: bool, vocab: int):
    """The chunk's summed loss and d(loss)/d(logits) = softmax - (1-eps)*onehot - eps/V (zero on
    masked rows and padding columns), in the logits' dtype. Written as one elementwise expression
    (the one-hot a comparison, not a scatter) so that compiled it is two passes over the chunk: one
    reduction (logsumexp, the row sums) and one pointwise pass writing the gradient. A scatter split it
    into three kernels with an fp32 intermediate (H200 profile: 11 ms of an 80 ms step)."""
    logits32 = logits.float()
    lse = torch.logsumexp(logits32[:, :vocab], dim=-1, keepdim=True)
    rows = _smoothed_rows(logits32, lse, y, epsilon, vocab)
    column = torch.arange(logits32.shape[1], device=logits.device)
    grad = torch.exp(logits32 - lse) - epsilon / vocab - (1.0 - epsilon) * (column == y).float()
    keep = column < vocab
    if masked:
        real = y.ne(IGNORE_INDEX)
        rows, keep = torch.where(real, rows, 0.0), keep & real
    return rows.sum(), torch.where(keep, grad, 0.0).to(logits.dtype)


def _chunk_loss_and_grad_inplace(logits, y, epsilon: float, masked: bool, vocab: int):
    """Eager form of _chunk_loss_and_grad that reuses the chunk's fp32 buffer (one fp32 copy at a time)."""
    logits32 = logits.float()
    lse = torch.logsumexp(logits32[:, :vocab], dim=-1, keepdim=True)
    rows = _smoothed_rows(logits32, lse, y, epsilon, vocab)
    logits32[:, :vocab].sub_(lse).exp_().sub_(epsilon / vocab)
    logits32[:, vocab:] = 0.0
    grad = logits32
    grad.scatter_add_(1, y.clamp(min=0), torch.full_like(lse, -(1.0 - epsilon)))
    if masked:
        padded = y.eq(IGNORE_INDEX)
        rows = rows.masked_fill(padded, 0.0)
        grad.masked_fill_(padded, 0.0)
    return rows.sum(), grad.to(logits.dtype)


def aligned_rows(vocab: int) -> int:
    """The head's rows rounded up to a multiple of 128. With NLLB's 256,206 (not a multiple of 8) the
    logits' row stride is misaligned and cuBLAS falls back to slower pre-Hopper kernels for the three
    head matmuls (H200 profile: ~290 TFLOP/s); zero rows up to 256,256 cost 0.02% more work."""
    return -(-vocab // 128) * 128


def _accumulate_weight_grad(grad_w, g, h, shape):
    """grad_w (fp32, or None before the first chunk) + g.t() @ h, in place. On CUDA with bf16/fp16
    chunk gradients the matmul accumulates and writes fp32 itself (``out_dtype``; mm for the first
    chunk, addmm into the same buffer after): the other form (a zeroed fp32 buffer, the product in
    bf16, cast, added) writes and reads the 256k x 1024 gradient four more times per chunk (~1 GB
    each), and most steps are one chunk. CPU has no such matmul."""
    if g.is_cuda and g.dtype in (torch.bfloat16, torch.float16):
        h = h.to(g.dtype)  # what autocast does to the product's input (the decoder's output is fp32)
        with torch.autocast("cuda", enabled=False):
            if grad_w is None:
                return torch.mm(g.t(), h, out_dtype=torch.float32)
            return torch.addmm(grad_w, g.t(), h, out_dtype=torch.float32, out=grad_w)
    if grad_w is None:
        grad_w = torch.zeros(shape, dtype=torch.float32, device=g.device)
    return grad_w.add_((g.t() @ h).float())


_CHUNK_FNS = (_chunk_loss, _chunk_loss_and_grad_inplace)
"""(loss, loss-and-gradient) per chunk; configure(compile_loss=True) swaps in compiled ones, and
configure(triton_kernel=True) the Triton kernel for the second."""
_COMPILED: dict[bool, tuple] = {}


def configure(compile_loss: bool, dynamic: bool = True, triton_kernel: bool = False) -> None:
    """Choose the per-chunk math once, before any step: a choice made inside a traced step would be
    a guard that changes, and recompile it. ``dynamic`` (speed.symbolic_widths): True compiles once
    with every size symbolic; False compiles the first chunk as it is and then makes symbolic only the
    sizes that change (the row count), so the vocabulary stays a constant in the kernels' index math.
    ``triton_kernel`` (speed.triton_ce, CUDA): loss and gradient by ce_kernel, the gradient written
    over the chunk's logits; the loss alone (evaluation) stays as compile_loss chose."""
    global _CHUNK_FNS
    if not compile_loss:
        fns = (_chunk_loss, _chunk_loss_and_grad_inplace)
    else:
        if dynamic not in _COMPILED:
            from trainstack.speed import one_graph_for_all_sizes

            one_graph_for_all_sizes()
            mode = True if dynamic else None  # None: Dynamo's automatic dynamic shapes
            _COMPILED[dynamic] = (torch.compile(_chunk_loss, dynamic=mode),
                                  torch.compile(_chunk_loss_and_grad, dynamic=mode))
        fns = _COMPILED[dynamic]
    if triton_kernel:
        from .ce_kernel import chunk_loss_and_grad_

        fns = (fns[0], chunk_loss_and_grad_)
    _CHUNK_FNS = fns


def _chunk_fn(with_grad: bool, tracing: bool = False):
    """The chosen chunk math. ``tracing`` (a whole step under torch.compile) takes the torch ops,
    which Dynamo folds into the step's graph, instead of a kernel writing over its input."""
    if with_grad and tracing:
        return _chunk_loss_and_grad
    return _CHUNK_FNS[1] if with_grad else _CHUNK_FNS[0]


def _compute_dtype(weight) -> torch.dtype:
    """The dtype the head's matmuls run in: autocast's where it is on. The aligned copy of the weight
    is made in it once per call; an fp32 copy (the decoder's output is fp32 under autocast) was then
    cast again before each of the chunk's matmuls (autocast caches casts of parameters only), and held
    2.5 GiB more at the peak on an H200 (BENCHMARKS.md, run 8)."""
    device = weight.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


class _ChunkedLinearSmoothedCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, epsilon: float, chunk_rows: int, denominator, masked: bool):
        n, _ = hidden.shape
        vocab = weight.shape[0]
        w = weight.new_empty((aligned_rows(vocab), weight.shape[1]), dtype=_compute_dtype(weight))
        w[:vocab] = weight  # cast to the compute dtype once, and aligned (zero rows; masked in the chunk math)
        w[vocab:] = 0
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # Eagerly the gradients accumulate in place (one fp32 weight-gradient buffer); a compiled step
        # (speed.compile) traces the functional form, since dynamo cannot keep in-place buffers made
        # inside an autograd.Function.
        tracing = torch.compiler.is_compiling()
        grad_h = torch.empty_like(hidden) if need_h and not tracing else None
        grad_h_chunks = []
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=weight.device) if need_w and tracing else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk_rows):
            h = hidden[start:start + chunk_rows]
            y = labels[start:start + chunk_rows].unsqueeze(1)
            if need_h or need_w:
                # The bf16 logits are passed, not kept: the chunk's only fp32 copy lives inside.
                chunk_loss, g = _chunk_fn(True, tracing)(h @ w.t(), y, epsilon, masked, vocab)
                if need_h and tracing:
                    grad_h_chunks.append(g @ w)
                elif need_h:
                    grad_h[start:start + chunk_rows] = g @ w
                if need_w and tracing:
                    grad_w = grad_w + (g.t() @ h).float()
                elif need_w:
                    grad_w = _accumulate_weight_grad(grad_w, g, h, w.shape)
                del g
            else:
                chunk_loss = _chunk_fn(False)(h @ w.t(), y, epsilon, masked, vocab)
            total = total + chunk_loss
        if grad_h_chunks:
            grad_h = torch.cat(grad_h_chunks)
        loss = total / denominator
        if need_w and grad_w is None:  # no rows
            grad_w = torch.zeros(w.shape, dtype=torch.float32, device=weight.device)
        if grad_w is not None:
            grad_w = grad_w[:vocab]
        ctx.save_for_backward(grad_h if need_h else None, grad_w if need_w else None, denominator)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, denominator = ctx.saved_tensors
        scale = grad_out / denominator
        dh = (grad_h * scale.to(grad_h.dtype)) if grad_h is not None else None
        dw = (grad_w * scale).to(ctx.weight_dtype) if grad_w is not None else None
        return dh, dw, None, None, None, None, None


def head_rows(hidden, labels, fixed_shapes: bool = False, gather=None):
    """(rows of hidden (N, D), their labels (N,), number of real tokens as a tensor) that enter the
    LM head's loss. Eager, the real rows only; ``fixed_shapes``: all B*T rows, padded ones zeroed, so
    shapes depend on (B, T) alone and nothing syncs the host; ``gather`` (fixed shapes too): the
    batch's (head_positions, head_labels) from the collate, the real rows padded to a fixed count."""
    if gather is not None:
        positions, y = gather
        mask = y.ne(IGNORE_INDEX)
        h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
        return torch.where(mask.reshape(-1, 1), h, 0.0), y, mask.sum()  # zeroed: see below
    mask = labels.ne(IGNORE_INDEX)
    if fixed_shapes:
        # Padded rows zeroed too: their zero gradient times a non-finite hidden state would still
        # reach the weight gradient as NaN.
        h = torch.where(mask.reshape(-1, 1), hidden.reshape(-1, hidden.shape[-1]), 0.0)
        y = labels.reshape(-1)
    else:
        h, y = hidden[mask], labels[mask]
    return h, y, mask.sum()


def chunked_smoothed_ce(hidden, weight, labels, epsilon: float = 0.1, chunk_rows: int = 2048,
                        fixed_shapes: bool = False, gather=None):
    """hidden (B, T, D) decoder output, weight (V, D) LM head, labels (B, T) with -100 for padding.
    Returns (mean loss over real tokens, number of real tokens as a tensor). ``fixed_shapes`` and
    ``gather``: see head_rows."""
    h, y, count = head_rows(hidden, labels, fixed_shapes, gather)
    denominator = count.clamp(min=1).to(torch.float32)
    masked = fixed_shapes or gather is not None
    loss = _ChunkedLinearSmoothedCE.apply(h, weight, y, float(epsilon), int(chunk_rows), denominator, masked)
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


def seq2seq_loss(model, batch, epsilon: float, chunked: bool = True, chunk_rows: int = 2048,
                 fixed_shapes: bool = False, head_loss=None):
    """(loss, real target tokens) of an M2M100ForConditionalGeneration on a batch with input_ids,
    attention_mask, decoder_input_ids, labels. The body runs once; the head is ours, or ``head_loss``
    with chunked_smoothed_ce's signature (fused_ce.liger_smoothed_ce under speed.liger_ce).
    ``fixed_shapes``: see head_rows (the unchunked form is shape-fixed already)."""
    core = getattr(model, "_orig_mod", model)
    outputs = core.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         decoder_input_ids=batch["decoder_input_ids"], use_cache=False)
    hidden = outputs.last_hidden_state
    head = core.lm_head.weight
    if head_loss is not None:
        return head_loss(hidden, head, batch["labels"], epsilon, chunk_rows, fixed_shapes)
    if chunked:
        gather = (batch["head_positions"], batch["head_labels"]) if "head_positions" in batch else None
        return chunked_smoothed_ce(hidden, head, batch["labels"], epsilon, chunk_rows, fixed_shapes, gather)
    return full_logits_smoothed_ce(torch.nn.functional.linear(hidden, head.to(hidden.dtype)), batch["labels"], epsilon)
