"""Greedy decoding, exact match and chrF; loading a trained checkpoint.

    model, tok, info = load_checkpoint("runs/hlbd")          # a run dir or a checkpoints/step-N dir
    print(generate(model, tok, ["<emoji>🌧️"]))
    print(evaluate_pairs(model, tok, pairs))                   # {"exact_match": ..., "chrf": ...}
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from trainstack.checkpoint import latest_checkpoint, load_model_state
from trainstack.metrics import chrf

from hlbd.model import APTConfig, APTModel
from hlbd.tokenizer import BOS, EOS, PAD, CharTokenizer


def pad_batch(seqs: list[list[int]], device, width: int | None = None) -> torch.Tensor:
    width = width or max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s[:width], dtype=torch.long)
    return out.to(device)


@torch.no_grad()
def greedy_decode(model: APTModel, src: torch.Tensor, max_new_tokens: int) -> list[list[int]]:
    """Batched greedy decoding; the decoder re-reads its prefix each step (targets are short)."""
    was_training = model.training
    model.eval()
    memory, src_pad = model.encode(src)
    out = torch.full((src.shape[0], 1), BOS, dtype=torch.long, device=src.device)
    done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    for step in range(max_new_tokens):
        logits = model.decode(out, memory, src_pad)[:, -1]
        nxt = logits.argmax(-1).masked_fill(done, PAD)
        out = torch.cat([out, nxt[:, None]], dim=1)
        done |= nxt == EOS
        if step % 8 == 7 and bool(done.all()):  # an occasional check, not one sync per token
            break
    model.train(was_training)
    return [row[1:] for row in out.tolist()]


def generate(model, tok: CharTokenizer, sources: list[str], max_new_tokens: int | None = None,
             batch_size: int = 256) -> list[str]:
    device = next(model.parameters()).device
    limit = model.cfg.max_len
    max_new_tokens = max_new_tokens or limit - 1
    texts = []
    for i in range(0, len(sources), batch_size):
        src = pad_batch([tok.encode(s)[:limit] for s in sources[i:i + batch_size]], device)
        texts += [tok.decode(ids) for ids in greedy_decode(model, src, max_new_tokens)]
    return texts


def evaluate_pairs(model, tok: CharTokenizer, pairs, batch_size: int = 256) -> dict:
    """Greedy-decode every pair's source; exact match (fraction) and corpus chrF against the targets."""
    max_target = max(len(tok.encode_target(p.target)) for p in pairs)
    hyps = generate(model, tok, [p.source for p in pairs], max_new_tokens=min(model.cfg.max_len - 1, max_target + 2),
                    batch_size=batch_size)
    refs = [p.target for p in pairs]
    exact = sum(h == r for h, r in zip(hyps, refs, strict=True)) / len(refs)
    score = chrf(hyps, refs)
    wrong = [{"source": p.source, "expected": p.target, "got": h} for p, h in zip(pairs, hyps, strict=True)
             if h != p.target]
    return {"exact_match": exact, "chrf": score.score, "chrf_signature": score.signature, "n": len(refs),
            "wrong_examples": wrong[:5]}


def resolve_checkpoint(path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint or run directory")
    if (path / "trainer_state.json").exists():
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    latest = latest_checkpoint(root)  # complete ones only (manifest.json written last)
    if latest is None:
        raise FileNotFoundError(f"{path}: no complete checkpoint inside (expected checkpoints/step-N/manifest.json)")
    return latest


def load_checkpoint(path, device="cpu"):
    ckpt = resolve_checkpoint(path)
    tok = CharTokenizer.load(ckpt / "tokenizer.json")
    cfg = APTConfig(**json.loads((ckpt / "model_config.json").read_text()))
    model = APTModel(cfg)
    load_model_state(model, torch.load(ckpt / "model.pt", map_location="cpu", weights_only=True))
    model.to(device).eval()
    info = json.loads((ckpt / "trainer_state.json").read_text())
    return model, tok, {"checkpoint": str(ckpt), **info}
