"""BLEU and validation loss over 2 gloo processes equal the single-process values."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.multiprocessing as mp
from chat_pretrain.config import DataConfig, EvalConfig
from chat_pretrain.evaluate import evaluate_model
from chat_pretrain.model import build_model
from chat_pretrain.synth import sentence_pool
from chat_pretrain.tokenizer import load_tokenizer

DATA = DataConfig(max_seq_len=24, read_batch_rows=7)
EVAL = EvalConfig(batch_size=5, max_new_tokens=12)


def _model(tok):
    torch.manual_seed(0)
    model, _ = build_model("tiny", tok.vocab_size, tok.pad_id, tok.eos_id, "sdpa", dropout_rate=0.0)
    # This untrained model's likeliest token is the pad id for most prompts, which decodes to nothing: BLEU
    # over empty hypotheses says nothing about how it is reduced. Without pad, greedy output is text.
    model.generation_config.suppress_tokens = [*model.generation_config.suppress_tokens, tok.pad_id]
    return model.eval()


def _worker(rank, world, init_file, tok_dir, weights, valid, out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        tok = load_tokenizer(tok_dir)
        model = _model(tok)
        model.load_state_dict(torch.load(weights, weights_only=True))
        r = evaluate_model(model, tok, [valid], DATA, EVAL)
        if rank == 0:
            with open(out, "w") as f:
                json.dump(r, f)
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def valid_set(tmp_path_factory, chatlm_dir):
    """Responses that partly match what the (untrained) tiny model generates, so BLEU is neither 0
    nor 100 and a wrong reduction (one rank's rows, the last batch) would give another value."""
    tmp = tmp_path_factory.mktemp("eval")
    tok = load_tokenizer(chatlm_dir)
    model = _model(tok)
    prompts = sentence_pool(23, 10, seed=3)  # 23 rows: uneven split over 2 ranks, several batches
    from chat_pretrain.data import collate, tokenize_pairs

    src, _ = tokenize_pairs(tok.tokenizer, prompts, prompts, DATA.max_seq_len, tok.eos_id)
    b = collate(src, src, tok.pad_id)
    with torch.no_grad():
        gen = model.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"], max_new_tokens=12,
                             do_sample=False)
    outs = tok.decode_batch(gen.tolist())
    noise = sentence_pool(23, 8, seed=4)
    responses = [o if i % 3 else n for i, (o, n) in enumerate(zip(outs, noise, strict=True))]
    responses = [r if r else n for r, n in zip(responses, noise, strict=True)]
    path = tmp / "valid.parquet"
    pq.write_table(pa.table({"prompt": prompts, "response": responses}), path)
    weights = tmp / "w.pt"
    torch.save(model.state_dict(), weights)
    return tmp, path, weights


def test_bleu_two_gloo_processes_equals_single(valid_set, chatlm_dir):
    tmp, valid, weights = valid_set
    tok = load_tokenizer(chatlm_dir)
    model = _model(tok)
    model.load_state_dict(torch.load(weights, weights_only=True))
    single = evaluate_model(model, tok, [valid], DATA, EVAL)
    assert single["rows"] == 23
    assert 5 < single["bleu"] < 95, single

    out = tmp / "two.json"
    mp.spawn(_worker, args=(2, str(tmp / "init"), str(chatlm_dir), str(weights), str(valid), str(out)), nprocs=2,
             join=True)
    two = json.loads(out.read_text())
    assert two["rows"] == 23
    assert two["bleu"] == pytest.approx(single["bleu"], abs=1e-9)
    assert two["loss"] == pytest.approx(single["loss"], rel=1e-6)


@pytest.mark.parametrize("eval_cfg", [EVAL, EvalConfig(batch_size=4, max_new_tokens=12, num_beams=2, max_rows=7)],
                         ids=["greedy-all-rows", "beam2-first-7-rows"])
def test_bleu_matches_sacrebleu_zh_directly(valid_set, chatlm_dir, eval_cfg):
    """The number is corpus BLEU-4 with sacrebleu's zh tokenizer over all rows (not one batch), greedy or
    beam search, against generation one row at a time (no padding, no batching)."""
    import sacrebleu
    from chat_pretrain.data import collate, read_valid_pairs

    tmp, valid, weights = valid_set
    tok = load_tokenizer(chatlm_dir)
    model = _model(tok)
    model.load_state_dict(torch.load(weights, weights_only=True))
    got = evaluate_model(model, tok, [valid], DATA, eval_cfg)
    rows = list(read_valid_pairs([valid], DATA, tokenizer=tok.tokenizer, eos_id=tok.eos_id,
                                 max_rows=eval_cfg.max_rows))
    assert got["rows"] == len(rows) == (eval_cfg.max_rows or 23) and got["skipped_rows"] == 0
    hyps, refs = [], []
    for s, t, _ in rows:
        b = collate([s], [t], tok.pad_id)
        with torch.no_grad():
            g = model.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"], max_new_tokens=12,
                               num_beams=eval_cfg.num_beams, do_sample=False)
        hyps += tok.decode_batch(g.tolist())
        refs += tok.decode_batch([t])
    expected = sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh").score
    assert got["bleu"] == pytest.approx(expected, abs=1e-6)
