"""Beam-search translation, BLEU / chrF++ with sacrebleu signatures, predictions files.

    mt-nllb eval runs/x/checkpoints/step-2000 --data newstest2018.tsv --num-beams 4
    mt-nllb translate runs/x/checkpoints/step-2000 < zh.txt > en.txt

(the command-line options are declared in cli.py; run_evaluate / run_translate do the work)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def translate_texts(model, tokenizer, texts, *, src_lang: str, tgt_lang: str, num_beams: int = 4,
                    max_new_tokens: int = 256, batch_size: int = 32, max_length: int = 256, progress: bool = False):
    """Batched beam search, longest-first (less padding), outputs in input order."""
    import torch

    from .model import lang_id, set_generation

    set_generation(model, tokenizer, tgt_lang, num_beams, max_new_tokens)
    src_id, eos = lang_id(tokenizer, src_lang), model.config.eos_token_id
    pad = model.config.pad_token_id
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = [""] * len(texts)
    starts = range(0, len(order), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="translate", unit="batch", file=sys.stderr)
    was_training = model.training
    model.eval()
    for start in starts:
        idx = order[start:start + batch_size]
        pieces = tokenizer([texts[i] for i in idx], add_special_tokens=False)["input_ids"]
        seqs = [[src_id, *p[:max_length - 2], eos] for p in pieces]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, s in enumerate(seqs):
            ids[r, :len(s)] = torch.tensor(s)
            mask[r, :len(s)] = 1
        with torch.no_grad():
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 generation_config=model.generation_config)
        for i, text in zip(idx, tokenizer.batch_decode(gen, skip_special_tokens=True), strict=True):
            out[i] = text.strip()
    model.train(was_training)
    return out


def score(hypotheses, references, bleu_tokenize: str = "13a") -> dict:
    from trainstack.metrics import bleu, chrf

    b = bleu(hypotheses, references, tokenize=bleu_tokenize)
    c = chrf(hypotheses, references, word_order=2)
    return {"bleu": b.score, "chrf": c.score, "bleu_signature": b.signature, "chrf_signature": c.signature}


def write_predictions(path: Path, sources, hypotheses, references) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for s, h, r in zip(sources, hypotheses, references, strict=True):
            f.write(json.dumps({"src": s, "hyp": h, "ref": r}, ensure_ascii=False) + "\n")


def evaluate_pairs(model, tokenizer, pairs, *, src_lang, tgt_lang, num_beams, max_new_tokens, batch_size,
                   predictions: Path | None = None, bleu_tokenize="13a", progress=False) -> dict:
    sources = [p[0] for p in pairs]
    refs = [p[1] for p in pairs]
    hyps = translate_texts(model, tokenizer, sources, src_lang=src_lang, tgt_lang=tgt_lang, num_beams=num_beams,
                           max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    if predictions is not None:
        write_predictions(predictions, sources, hyps, refs)
    return score(hyps, refs, bleu_tokenize)


def _langs_from(checkpoint: Path, src_lang, tgt_lang):
    """Language pair saved with the run (trainer_state / config.yaml), unless given."""
    for cand in (checkpoint / "mt_nllb.json", checkpoint.parent / "mt_nllb.json"):
        if cand.exists():
            saved = json.loads(cand.read_text())
            return src_lang or saved["src_lang"], tgt_lang or saved["tgt_lang"]
    return src_lang or "zho_Hans", tgt_lang or "eng_Latn"


def add_inference_options(p) -> None:
    """The options `eval` and `translate` share."""
    p.add_argument("checkpoint", help="checkpoint dir (…/checkpoints/step-N), HF model dir, or hub name")
    p.add_argument("--num-beams", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--src-lang", default="")
    p.add_argument("--tgt-lang", default="")
    p.add_argument("--device", default="auto")


def add_eval_options(p) -> None:
    add_inference_options(p)
    p.add_argument("--data", required=True, metavar="FILE",
                   help="test pairs: .tsv / .jsonl / .parquet, or wmt19 (newstest2018)")
    p.add_argument("--src-key", default="zh")
    p.add_argument("--tgt-key", default="en")
    p.add_argument("--predictions", default="", help="JSONL of src/hyp/ref (default: next to the checkpoint)")
    p.add_argument("--bleu-tokenize", default="13a")


def _load(args):
    import torch

    from .model import load_for_inference

    model, tokenizer = load_for_inference(args.checkpoint)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model.to(device)
    if device == "cuda":
        model.to(torch.bfloat16) if torch.cuda.is_bf16_supported() else model.half()
    src, tgt = _langs_from(Path(args.checkpoint), args.src_lang, args.tgt_lang)
    return model, tokenizer, src, tgt


def run_evaluate(args) -> None:
    """BLEU and chrF++ of a checkpoint on a test file. Bad data or a checkpoint that cannot be loaded
    raise DataError / ConfigError (one line, exit 2) before any work."""
    from .data import DataError, read_pairs

    # No length filter or dedup on a test set: every row counts (bad rows are still reported).
    pairs, reports = read_pairs([args.data], [0], args.src_key, args.tgt_key, 1, 10**9, dedup=False, split="test")
    for r in reports:
        print(r.line(), file=sys.stderr)
    if not pairs:
        raise DataError(f"{args.data}: no usable pairs")
    model, tokenizer, src, tgt = _load(args)
    ckpt = Path(args.checkpoint)
    pred = Path(args.predictions) if args.predictions else (ckpt if ckpt.is_dir() else Path(".")) / "predictions.test.jsonl"
    metrics = evaluate_pairs(model, tokenizer, pairs, src_lang=src, tgt_lang=tgt, num_beams=args.num_beams,
                             max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, predictions=pred,
                             bleu_tokenize=args.bleu_tokenize, progress=True)
    print(f"BLEU {metrics['bleu']:.2f}  {metrics['bleu_signature']}")
    print(f"chrF++ {metrics['chrf']:.2f}  {metrics['chrf_signature']}")
    print(f"predictions: {pred}")
    print(json.dumps({"test": args.data, "rows": len(pairs), **metrics}))


def run_translate(args) -> None:
    """stdin (one sentence a line) -> stdout, line for line."""
    lines = [line.rstrip("\n") for line in sys.stdin]
    model, tokenizer, src, tgt = _load(args)
    # Empty lines stay empty lines so the output aligns with the input.
    keep = [i for i, line in enumerate(lines) if line.strip()]
    hyps = translate_texts(model, tokenizer, [lines[i] for i in keep], src_lang=src, tgt_lang=tgt,
                           num_beams=args.num_beams, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    out = [""] * len(lines)
    for i, h in zip(keep, hyps, strict=True):
        out[i] = h
    sys.stdout.write("".join(line + "\n" for line in out))
