"""Validation: loss over the whole validation set and corpus BLEU-4 (sacrebleu, tokenize="zh").

Each rank scores its share of the rows (row i -> rank i % world). Losses are reduced as sums of
token losses and token counts; hypotheses and references are gathered from every rank and BLEU is
computed once over the whole set. Corpus BLEU sums n-gram counts over sentences, so the result does
not depend on how rows were split or ordered: 2 processes give the single-process value.

    chat-pretrain eval runs/chat-pretrain/checkpoints/step-5000 --data valid.parquet
    chat-pretrain generate runs/chat-pretrain/checkpoints/step-5000 "在地球上为什么没有感觉到重力的作用？"
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from chat_pretrain.config import DataConfig, EvalConfig, TrainConfig
from chat_pretrain.data import SkipCounts, collate, expand_files, read_valid_pairs, tokenize_pairs


def _dist():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _unwrap(model):
    while hasattr(model, "module"):
        model = model.module
    return model


@torch.no_grad()
def evaluate_model(model, tokenizer, files, data_cfg: DataConfig, eval_cfg: EvalConfig, precision=None,
                   progress: bool = False) -> dict:
    """Returns {"loss", "bleu", "rows", "skipped_rows", "bleu_signature"}; identical on every rank.
    Null or empty validation rows are skipped and counted in "skipped_rows"."""
    from trainstack.metrics import bleu

    m = _unwrap(model)
    was_training = m.training
    m.eval()
    device = next(m.parameters()).device
    rank, world = _dist()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    tokens = torch.zeros((), dtype=torch.float64, device=device)
    hyps: list[str] = []
    refs: list[str] = []
    max_new = eval_cfg.max_new_tokens or data_cfg.max_seq_len
    autocast = precision.autocast(device.type) if precision is not None else torch.autocast(device.type, enabled=False)

    def run(batch_rows):
        nonlocal loss_sum, tokens
        # Sorting a window by length keeps padding small; corpus BLEU does not care about order.
        batch_rows.sort(key=lambda r: len(r[0]))
        for i in range(0, len(batch_rows), eval_cfg.batch_size):
            chunk = batch_rows[i: i + eval_cfg.batch_size]
            b = collate([c[0] for c in chunk], [c[1] for c in chunk], tokenizer.pad_id)
            b = {k: v.to(device) for k, v in b.items()}
            with autocast:
                logits = m(**b).logits
            loss_sum += F.cross_entropy(logits.float().flatten(0, 1), b["labels"].flatten(), ignore_index=-100,
                                        reduction="sum").double()
            tokens += (b["labels"] != -100).sum().double()
            if eval_cfg.bleu:
                with autocast:
                    out = m.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                     max_new_tokens=max_new, num_beams=eval_cfg.num_beams, do_sample=False)
                hyps.extend(tokenizer.decode_batch(out.tolist()))
                refs.extend(tokenizer.decode_batch([c[1] for c in chunk]))

    window: list = []
    skipped = SkipCounts()
    rows = read_valid_pairs(files, data_cfg, rank, world, eval_cfg.max_rows, tokenizer.tokenizer, tokenizer.eos_id,
                            skipped)
    for row in rows:
        window.append(row)
        if len(window) >= eval_cfg.batch_size * 16:
            run(window)
            window = []
    if window:
        run(window)

    n_rows = torch.tensor([float(len(refs) if eval_cfg.bleu else 0)], dtype=torch.float64, device=device)
    if world > 1:
        stats = torch.stack([loss_sum, tokens, n_rows[0]])
        torch.distributed.all_reduce(stats)
        loss_sum, tokens, n_rows = stats[0], stats[1], stats[2:]
        gathered: list = [None] * world
        torch.distributed.all_gather_object(gathered, (hyps, refs))
        hyps = [h for part in gathered for h in part[0]]
        refs = [r for part in gathered for r in part[1]]
    result = {"loss": float(loss_sum / tokens.clamp(min=1)), "rows": len(refs) if eval_cfg.bleu else None,
              "skipped_rows": skipped.total}
    if eval_cfg.bleu:
        # References are the decoded (truncated) target ids, so that BLEU measures the model against
        # what it was trained to produce, decoded by the same tokenizer.
        score = bleu(hyps, refs, tokenize="zh")
        result.update(bleu=score.score, bleu_signature=score.signature)
    if was_training:
        m.train()
    return result


def _device(device: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)


def load_checkpoint(checkpoint, device: str = "auto"):
    """(model, tokenizer, the run's TrainConfig) from RUN_DIR/checkpoints/step-N, which is an HF model
    directory with the run's tokenizer.json; the config comes from RUN_DIR/config.yaml when present."""
    from trainstack.config import ConfigError, load_config
    from transformers import T5ForConditionalGeneration

    from chat_pretrain.tokenizer import load_tokenizer

    path = Path(checkpoint)
    if not ((path / "config.json").is_file() and (path / "tokenizer.json").is_file()):
        raise ConfigError(f"{checkpoint}: not a chat-pretrain checkpoint (expected config.json, the weights and "
                          f"tokenizer.json, as in RUN_DIR/checkpoints/step-N)")
    tok = load_tokenizer(path)
    model = T5ForConditionalGeneration.from_pretrained(path).to(_device(device))
    saved = path.parent.parent / "config.yaml"
    cfg = load_config(TrainConfig, saved) if saved.is_file() else TrainConfig()
    return model, tok, cfg


def evaluate_checkpoint(checkpoint, files, max_rows: int = 0, device: str = "auto") -> dict:
    """`chat-pretrain eval`: validation loss and BLEU-4 of a checkpoint on parquet files, with the run's
    data and eval settings (max_seq_len, columns, beams)."""
    from dataclasses import replace

    from trainstack.precision import resolve_precision

    files = expand_files(files)  # a missing file: DataError before the model loads
    model, tok, cfg = load_checkpoint(checkpoint, device)
    dev = next(model.parameters()).device
    precision = resolve_precision("auto" if dev.type == "cuda" else "fp32")
    result = evaluate_model(model, tok, files, cfg.data, replace(cfg.eval, max_rows=max_rows), precision)
    return {"checkpoint": str(checkpoint), **result}


@torch.no_grad()
def generate_from_checkpoint(checkpoint, prompts: list[str], max_new_tokens: int = 64,
                             device: str = "auto") -> list[str]:
    """`chat-pretrain generate`: greedy responses, prompts truncated as in training."""
    model, tok, cfg = load_checkpoint(checkpoint, device)
    model.eval()
    src, _ = tokenize_pairs(tok.tokenizer, prompts, prompts, cfg.data.max_seq_len, tok.eos_id)
    batch = collate(src, src, tok.pad_id)
    dev = next(model.parameters()).device
    out = model.generate(input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev),
                         max_new_tokens=max_new_tokens, num_beams=1, do_sample=False)
    return tok.decode_batch(out.tolist())
