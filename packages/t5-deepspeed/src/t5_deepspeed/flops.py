"""Model FLOPs of a training step of an encoder-decoder, for the bench's MFU figure.

Each linear layer costs 2 x in x out FLOPs per token it sees forward and twice that backward (6 per
weight per token in all). Encoder layers and the decoder's cross-attention keys and values see the
source tokens; the rest of the decoder and the LM head see the target tokens. Attention's own
score/softmax products (which grow with length) are left out, as in the usual 6N count: the figure is
a slight underestimate, never an overestimate. Read from the modules' shapes, so a ZeRO-3 model
whose weights are partitioned away counts the same.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFlops:
    per_source_token: int
    """forward multiply-adds x 2 per real source token"""
    per_target_token: int

    def train_flops(self, source_tokens: int, target_tokens: int) -> float:
        return 3.0 * (self.per_source_token * source_tokens + self.per_target_token * target_tokens)


def _sees_source(name: str) -> bool:
    if name.startswith("encoder."):
        return True
    # T5's cross-attention projects the encoder's output into keys and values
    return "EncDecAttention." in name and name.rsplit(".", 1)[-1] in ("k", "v")


def model_flops(model) -> ModelFlops:
    import torch

    source = target = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        forward = 2 * module.in_features * module.out_features
        if _sees_source(name):
            source += forward
        else:
            target += forward
    return ModelFlops(source, target)
