"""The T5 model: from a shipped size (`chatlm-0.2b`, `tiny`), a local directory, or a hub name.

Attention: transformers 5 implements SDPA for T5 (the relative position bias is passed to
scaled_dot_product_attention as an additive mask; `T5PreTrainedModel._supports_sdpa`). We check that
flag at run time rather than assume it, and fall back to eager attention where it is missing.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

SHIPPED = ("chatlm-0.2b", "tiny")
EMBEDDING_ROWS_MULTIPLE = 128
"""A new model's embedding (tied to the output layer) has a multiple of this many rows, as T5's own
has (32,128 rows for 32,100 tokens): the output matmuls' vocabulary side is then aligned for tensor
cores, and Inductor's matmul padding pass has nothing to pad. On an unaligned side that pass compares
sizes to decide, which under dynamic shapes guards the graph on the batch's tokens: on an H200 the
0.2B step (29,298 tokens) compiled a second graph, 128 s, for batches above 29,298 target tokens."""


def embedding_rows(vocab_size: int) -> int:
    return -(-vocab_size // EMBEDDING_ROWS_MULTIPLE) * EMBEDDING_ROWS_MULTIPLE


def sdpa_supported() -> bool:
    from transformers.models.t5.modeling_t5 import T5PreTrainedModel

    return bool(getattr(T5PreTrainedModel, "_supports_sdpa", False))


def resolve_attention(requested: str = "auto") -> tuple[str, str]:
    """(implementation, reason) printed at start-up."""
    import transformers

    ok = sdpa_supported()
    if requested == "eager":
        return "eager", "eager attention as asked"
    if requested == "sdpa" and not ok:
        raise ValueError(f"attn_implementation=sdpa asked but transformers {transformers.__version__} "
                         f"has no SDPA for T5; use auto or eager")
    if ok:
        return "sdpa", f"SDPA attention (transformers {transformers.__version__} supports it for T5)"
    return "eager", f"eager attention: transformers {transformers.__version__} has no SDPA for T5"


def shipped_config(name: str) -> dict:
    text = files("chat_pretrain.models").joinpath(f"{name}.json").read_text(encoding="utf-8")
    spec = json.loads(text)
    spec.pop("_comment", None)
    return spec


def build_model(name: str, vocab_size: int, pad_id: int, eos_id: int, attn: str = "auto", dropout_rate: float = 0.1):
    """Returns (model, description). A directory with weights is loaded; a config-only directory or a
    shipped name builds a randomly initialised model."""
    from transformers import T5Config, T5ForConditionalGeneration

    impl, reason = resolve_attention(attn)
    path = Path(name)

    def pretrained(source):
        model = T5ForConditionalGeneration.from_pretrained(source, attn_implementation=impl)
        if model.config.vocab_size < vocab_size:
            raise ValueError(f"{source}: model vocab {model.config.vocab_size} < tokenizer vocab {vocab_size}")
        return model

    if name not in SHIPPED and path.is_dir():
        has_weights = any((path / f).exists() for f in ("model.safetensors", "pytorch_model.bin",
                                                         "model.safetensors.index.json"))
        if has_weights:
            return pretrained(path), f"T5 loaded from {path}; {reason}"
        config = T5Config.from_pretrained(path)
        config.vocab_size = embedding_rows(vocab_size)
    elif name in SHIPPED:
        config = T5Config(vocab_size=embedding_rows(vocab_size), dropout_rate=dropout_rate, **shipped_config(name))
    elif path.exists() or name.startswith(("/", ".", "~")) or name.count("/") > 1:
        raise ValueError(f"model {name!r}: not a shipped config ({', '.join(SHIPPED)}) nor a directory")
    else:  # a hub name (the upstream ChatLM checkpoints are published there); offline: one line, exit 2
        from trainstack.hub import loading

        with loading(name, what="model", key="model.name"):
            model = pretrained(name)
        return model, f"T5 {name} from the Hugging Face hub; {reason}"
    config.pad_token_id = pad_id
    config.eos_token_id = eos_id
    config.decoder_start_token_id = pad_id
    config._attn_implementation = impl
    model = T5ForConditionalGeneration(config)
    # Generation defaults: the transformers default max length (20 tokens) would truncate BLEU hypotheses.
    model.generation_config.decoder_start_token_id = pad_id
    model.generation_config.pad_token_id = pad_id
    model.generation_config.eos_token_id = eos_id
    # The rows past the tokenizer's ids are never generated (their logits are set to -inf).
    model.generation_config.suppress_tokens = list(range(vocab_size, config.vocab_size)) or None
    return model, f"T5 {name} (random init); {reason}"


def count_params(model) -> int:
    # Tied embeddings are one tensor: parameters() already yields it once.
    return sum(p.numel() for p in model.parameters())


def flops_per_token(model, seq_len: int) -> float:
    """Training FLOPs per (target) token, approximating encoder and decoder tokens as equal in number:
    6N per token for the weights, plus attention (self + cross)."""
    from trainstack.metrics import transformer_flops_per_token

    cfg = model.config
    layers = cfg.num_layers + cfg.num_decoder_layers * 2  # decoder: self- and cross-attention
    return transformer_flops_per_token(count_params(model), layers, cfg.d_model, seq_len)
