"""The token embeddings' weight gradient added as rows into ``weight.grad`` instead of as dense matrices.

NLLB's encoder and decoder embeddings and its LM head share one 256k x 1024 matrix. Autograd's
embedding backward forms a dense fp32 gradient of the whole matrix for each of the two lookups (a
1 GB zero fill and a sort of the ids) and then sums the three contributions (two more passes over
1 GB each), although only the few thousand rows looked up are non-zero. Here each lookup's backward
adds its rows straight into the shared weight's ``.grad`` (``index_add_``): the same sum, without the
dense passes.

It needs gradients that are read after the whole backward, as core's TrainStep reads them (its
all-reduce under several processes runs after the backward too); a DistributedDataParallel wrapper
reduces a weight's gradient from a hook as soon as autograd has it, which would miss rows added
later, so `train` turns this on for one process only (speed.embedding_row_grads).
"""

from __future__ import annotations

import torch


class _LookupAddingRowsToGrad(torch.autograd.Function):
    """embedding(ids) * scale whose backward adds scale * grad rows into ``weight.grad``. The weight
    enters detached, so autograd forms no dense gradient for it; ``anchor`` (a scalar that requires
    grad) keeps this node in the backward graph."""

    @staticmethod
    def forward(ctx, ids, anchor, weight, scale: float, padding_idx: int | None):
        ctx.save_for_backward(ids)
        ctx.weight, ctx.scale, ctx.padding_idx = weight, scale, padding_idx
        return torch.nn.functional.embedding(ids, weight.detach(), padding_idx) * scale

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        weight = ctx.weight
        flat_ids = ids.reshape(-1)
        rows = grad.reshape(-1, grad.shape[-1]) * ctx.scale
        if ctx.padding_idx is not None:
            # nn.Embedding leaves the padding row's gradient at zero.
            rows = torch.where(flat_ids.unsqueeze(1) == ctx.padding_idx, 0.0, rows)
        if weight.grad is None:
            # The LM head's gradient usually arrives first and becomes .grad; either order sums the same.
            weight.grad = torch.zeros_like(weight)
        weight.grad.index_add_(0, flat_ids, rows.to(weight.grad.dtype))
        return None, None, None, None, None


def add_embedding_rows_to_grad(model) -> int:
    """Route the encoder's and decoder's token lookups of an M2M100 model through
    _LookupAddingRowsToGrad (in place; parameters and state_dict unchanged). Returns the number of
    lookups changed."""
    core = getattr(model, "_orig_mod", model).model
    changed = 0
    for stack in (core.encoder, core.decoder):
        embed = stack.embed_tokens
        if getattr(embed, "_adds_rows_to_grad", False):
            continue  # one module serving both stacks
        anchor = torch.zeros((), device=embed.weight.device, requires_grad=True)
        scale = float(getattr(embed, "embed_scale", 1.0))

        def forward(input_ids, embed=embed, anchor=anchor, scale=scale):
            return _LookupAddingRowsToGrad.apply(input_ids, anchor, embed.weight, scale, embed.padding_idx)

        embed.forward = forward
        embed._adds_rows_to_grad = True
        changed += 1
    return changed
