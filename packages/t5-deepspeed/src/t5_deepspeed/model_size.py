"""The size of the model a config builds (parameters, layers, parameter tensors), read on the meta
device: no GPU and no weights needed. Used by `plan` and by `train` (gradient bucket sizes)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    params: int
    largest_module_params: int
    layers: int
    """T5 blocks, encoder and decoder"""
    tensors: int
    """parameter tensors (what ZeRO handles one by one)"""


def model_shape(config) -> ModelShape:
    """Parameter counts, layers and tensors of the model a config builds, on the meta device."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    with torch.device("meta"):
        model = AutoModelForSeq2SeqLM.from_config(config)
    # the same rule as deepspeed's model_to_params: tied weights counted once, largest own-params module
    unique = {id(p): p.numel() for p in model.parameters()}
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    layers = (getattr(config, "num_layers", 0) or 0) + (getattr(config, "num_decoder_layers", 0) or 0)
    return ModelShape(sum(unique.values()), largest, layers, len(unique))


def count_params(config) -> tuple[int, int]:
    """(total parameters, parameters of the largest single module) from a config, on the meta device."""
    shape = model_shape(config)
    return shape.params, shape.largest_module_params
