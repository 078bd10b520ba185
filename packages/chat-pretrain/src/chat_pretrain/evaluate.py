"""Validation: loss over the whole validation set and corpus BLEU-4 (sacrebleu, tokenize="zh").

Each rank scores its share of the rows (row i -> rank i % world). Losses are reduced as sums of
token losses and token counts; hypotheses and references are gathered from every rank and BLEU is
computed once over the whole set. Corpus BLEU sums n-gram counts over sentences, so the result does
not depend on how rows were split or ordered: 2 processes give the single-process value.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from chat_pretrain.config import DataConfig, EvalConfig
from chat_pretrain.data import SkipCounts, collate, read_valid_pairs


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
