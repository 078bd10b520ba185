"""Model and tokenizer: NLLB by hub name or local dir, or a shipped architecture with random init.

The target language is forced through ``generation_config.forced_bos_token_id`` (generate() ignores
the same key on ``model.config``: BLEU ~2-5), and the generation length comes from our config
instead of transformers' default of 20 tokens.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

SHIPPED_ARCHS = ("nllb-600m", "tiny")
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3, as in NLLB


def shipped_config_path(name: str):
    return resources.files("mt_nllb") / "model_configs" / f"{name}.json"


def load_arch_config(name: str, vocab_size: int | None = None, dropout: float | None = None,
                     attention_dropout: float | None = None):
    from transformers import M2M100Config

    data = json.loads(shipped_config_path(name).read_text(encoding="utf-8"))
    data = {k: v for k, v in data.items() if not k.startswith("_") and k not in ("model_type", "architectures")}
    if vocab_size is not None:
        data["vocab_size"] = vocab_size
    if dropout is not None:
        data["dropout"] = dropout
    if attention_dropout is not None:
        data["attention_dropout"] = attention_dropout
    return M2M100Config(**data)


def build_sample_tokenizer(texts, lang_codes):
    """A small, honest stand-in for the NLLB SentencePiece tokenizer when no hub is reachable: a BPE
    over Metaspace pieces trained on ``texts`` (Chinese falls out as characters), NLLB's special ids
    0..3 and the language codes as added tokens. Decoding restores spaces exactly."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(),
        # One piece per CJK character: Chinese has no spaces, so Metaspace alone would glue sentences.
        pre_tokenizers.Split(r"[\u3000-\u303f\u4e00-\u9fff\uff00-\uffef]", behavior="isolated"),
    ])
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=1200, min_frequency=2, special_tokens=SPECIAL_TOKENS + list(lang_codes),
                                  show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", additional_special_tokens=list(lang_codes))
    return fast


def hub_or_dir(load, name: str, key: str, what: str = "model"):
    """``load(name)`` for a hub name or a local directory; when that fails (offline, no such model, a
    directory without the files), a one-line ConfigError naming it, ``key`` and what to do."""
    from trainstack.hub import loading

    with loading(name, what=what, key=key):
        return load(name)


def load_tokenizer(source: str, key: str = "model.tokenizer"):
    from transformers import AutoTokenizer

    return hub_or_dir(AutoTokenizer.from_pretrained, source, key, what="tokenizer")


def lang_id(tokenizer, code: str) -> int:
    idx = tokenizer.convert_tokens_to_ids(code)
    if idx is None or idx == tokenizer.unk_token_id:
        raise ValueError(f"language code {code!r} is not a token of the tokenizer ({type(tokenizer).__name__})")
    return int(idx)


def build_model(cfg, tokenizer, device=None):
    """The model for ``cfg.model`` (a ModelConfig): pretrained weights from a hub name / dir, or a
    shipped architecture with random init (vocab resized to the tokenizer for "tiny"; the shipped
    vocab when ``tokenizer`` is None). ``device``: where a random init runs (seconds on a GPU instead
    of ~10 s on the host for 600M); pretrained weights load on the host, the caller moves them."""
    import contextlib

    import torch
    from transformers import AutoModelForSeq2SeqLM, M2M100ForConditionalGeneration

    name = cfg.name_or_path
    if name in SHIPPED_ARCHS:
        vocab = len(tokenizer) if name == "tiny" and tokenizer is not None else None
        config = load_arch_config(name, vocab_size=vocab, dropout=cfg.dropout, attention_dropout=cfg.attention_dropout)
        if tokenizer is not None and len(tokenizer) > config.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens but {name} has vocab_size {config.vocab_size}")
        config._attn_implementation = cfg.attn_implementation
        with torch.device(device) if device is not None else contextlib.nullcontext():
            model = M2M100ForConditionalGeneration(config)
    else:
        kwargs = {"attn_implementation": cfg.attn_implementation, "dtype": torch.float32}
        for key in ("dropout", "attention_dropout"):
            if getattr(cfg, key) is not None:
                kwargs[key] = getattr(cfg, key)
        model = hub_or_dir(lambda n: AutoModelForSeq2SeqLM.from_pretrained(n, **kwargs), name, "model.name_or_path")
    return model


def set_generation(model, tokenizer, tgt_lang: str, num_beams: int, max_new_tokens: int) -> None:
    gc = model.generation_config
    gc.forced_bos_token_id = lang_id(tokenizer, tgt_lang)
    gc.decoder_start_token_id = model.config.decoder_start_token_id
    gc.num_beams = num_beams
    gc.max_new_tokens = max_new_tokens
    gc.max_length = None
    gc.pad_token_id = model.config.pad_token_id
    gc.eos_token_id = model.config.eos_token_id
    gc.bos_token_id = model.config.bos_token_id


def enable_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing (transformers >= 5.20 renamed the method)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def save_model_and_tokenizer(model, tokenizer, directory: Path) -> None:
    directory = Path(directory)
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    model.save_pretrained(directory / "hf")
    if tokenizer is not None:
        tokenizer.save_pretrained(directory / "hf")


def load_for_inference(checkpoint: str | Path, attn_implementation: str = "sdpa"):
    """(model, tokenizer) from a checkpoint dir (our ``<ckpt>/hf``), an HF model dir, or a hub name."""
    from transformers import AutoModelForSeq2SeqLM

    path = Path(checkpoint)
    if (path / "hf" / "config.json").exists():
        path = path / "hf"
    source = str(path) if path.exists() else str(checkpoint)
    model = hub_or_dir(lambda n: AutoModelForSeq2SeqLM.from_pretrained(n, attn_implementation=attn_implementation),
                       source, "checkpoint")
    tokenizer = load_tokenizer(source, "checkpoint")
    return model, tokenizer


def pair_train_flops(config, src_len: int, tgt_len: int) -> float:
    """Training FLOPs (forward + backward = 3x forward) of one sentence pair, LM head included.

    Encoder: 2*P_layer*S + attention 4*S^2*d per layer. Decoder: 2*P_layer*T + self-attention 4*T^2*d
    + cross-attention 4*T*S*d per layer. LM head: 2*V*d*T. Embedding lookups are not matmuls."""
    d, v = config.d_model, config.vocab_size
    enc_layer = 4 * d * d + 2 * d * config.encoder_ffn_dim
    dec_layer = 8 * d * d + 2 * d * config.decoder_ffn_dim  # self + cross attention projections
    s, t = float(src_len), float(tgt_len)
    enc = config.encoder_layers * (2 * enc_layer * s + 4 * s * s * d)
    dec = config.decoder_layers * (2 * dec_layer * t + 4 * t * t * d + 4 * t * s * d)
    head = 2 * v * d * t
    return 3.0 * (enc + dec + head)
