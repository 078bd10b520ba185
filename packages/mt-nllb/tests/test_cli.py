"""The real entry point on CPU: train the tiny model on the shipped sample, resume, evaluate, translate."""

import io
import json
import sys

import pytest
from mt_nllb.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt")
    run_dir = root / "run"
    rc = main(["train", "--profile", "cpu-debug", "--run-dir", str(run_dir), "--no-progress",
               f"data.cache_dir={root / 'cache'}"])
    assert rc == 0
    return root, run_dir


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_train_writes_checkpoints_logs_bleu_and_test_predictions(trained):
    root, run_dir = trained
    recs = _records(run_dir)
    assert [r["step"] for r in recs if "loss" in r][-1] == 12
    evals = [r for r in recs if "eval_bleu" in r]
    assert evals and all(0.0 <= r["eval_bleu"] <= 100.0 and 0.0 <= r["eval_chrf"] <= 100.0 for r in evals)
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert "step-12" in ckpts
    assert (run_dir / "checkpoints" / "step-12" / "hf" / "config.json").exists()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test"]["rows"] == 20
    assert summary["test"]["bleu_signature"].startswith("nrefs:1|case:mixed") and "tok:13a" in summary["test"]["bleu_signature"]
    assert "nw:2" in summary["test"]["chrf_signature"]  # chrF++
    preds = (run_dir / "predictions" / "test.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(preds) == 20 and set(json.loads(preds[0])) == {"src", "hyp", "ref"}
    report = json.loads((run_dir / "data_report.json").read_text())
    # The default selection is the users' recipe: the length filter is OPUS-100's, so a local file is
    # taken as it is, its two rows under 10 characters included.
    sample = report["sources"][0]
    assert sample["filtered"] == {} and sample["kept"] == sample["read"] == 141
    assert sample["rule"] == "no length filter, no dedup"
    # generation: target language forced through generation_config, length from our config
    from transformers import GenerationConfig

    gc = GenerationConfig.from_pretrained(run_dir / "checkpoints" / "step-12" / "hf")
    tok_dir = run_dir / "checkpoints" / "step-12" / "hf"
    from transformers import AutoTokenizer

    assert gc.forced_bos_token_id == AutoTokenizer.from_pretrained(tok_dir).convert_tokens_to_ids("eng_Latn")
    assert gc.max_new_tokens == 24


def test_sigint_saves_exits_130_and_resume_is_exact(trained, monkeypatch, capsys):
    """Ctrl-C at step 4 saves a checkpoint and exits 130; --resume then reaches step 12 with the same
    losses and bit-identical weights as the uninterrupted run."""
    import signal

    import torch
    from mt_nllb import loss as loss_mod

    root, straight = trained
    run_dir = root / "interrupted"
    real_loss, calls = loss_mod.seq2seq_loss, [0]

    def loss_then_ctrl_c(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 4:  # cpu-debug has no accumulation: micro-step 4 is optimizer step 4
            signal.raise_signal(signal.SIGINT)
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(loss_mod, "seq2seq_loss", loss_then_ctrl_c)
    args = ["train", "--profile", "cpu-debug", "--run-dir", str(run_dir), "--no-progress",
            f"data.cache_dir={root / 'cache'}"]
    capsys.readouterr()
    assert main(args) == 130
    assert "cache hit" in capsys.readouterr().out  # the tokenized data was reused, not rebuilt
    assert (run_dir / "checkpoints" / "step-4" / "trainer_state.json").exists()
    assert not (run_dir / "checkpoints" / "step-6").exists()
    monkeypatch.setattr(loss_mod, "seq2seq_loss", real_loss)
    assert main(args + ["--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    losses = {r["step"]: r["loss"] for r in _records(run_dir) if "loss" in r}
    reference = {r["step"]: r["loss"] for r in _records(straight) if "loss" in r}
    assert sorted(losses) == sorted(set(losses)) and max(losses) == 12
    for step in (9, 12):  # the window logged at step 6 is 5..6 here (step 4 was logged at the stop), 4..6 there
        assert losses[step] == reference[step], step
    a = torch.load(straight / "checkpoints" / "step-12" / "model.pt", map_location="cpu", weights_only=True)
    b = torch.load(run_dir / "checkpoints" / "step-12" / "model.pt", map_location="cpu", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # keep_last=2: the step-4 checkpoint of the stop was pruned once steps 6 and 12 were saved
    assert {p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step-")} == {"step-6", "step-12"}


def test_a_used_run_dir_is_refused_and_resume_checks_what_it_resumes(trained, capsys, tmp_path):
    import shutil

    root, run_dir = trained
    before = (run_dir / "config.yaml").read_text()
    args = ["train", "--profile", "cpu-debug", "--no-progress", f"data.cache_dir={root / 'cache'}"]
    capsys.readouterr()
    assert main([*args, "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds checkpoints" in err and "overwrite=true" in err, err
    assert "--resume" in err and (run_dir / "config.yaml").read_text() == before  # nothing written

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    assert main([*args, "--run-dir", str(copy), "data.max_length=24", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot resume: max_length is 24 now but" in err, err


def test_translate_stdin_to_stdout(trained, monkeypatch, capsys):
    _, run_dir = trained
    monkeypatch.setattr(sys, "stdin", io.StringIO("今天天气很好。\n\n我想去北京。\n"))
    capsys.readouterr()
    assert main(["translate", str(run_dir / "checkpoints" / "step-12"), "--num-beams", "2",
                 "--max-new-tokens", "8", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""  # aligned with the input, empty stays empty


def test_evaluate_command(trained, capsys, tmp_path):
    _, run_dir = trained
    pred = tmp_path / "p.jsonl"
    capsys.readouterr()
    assert main(["eval", str(run_dir / "checkpoints" / "step-12"), "--data", "sample-test", "--num-beams", "2",
                 "--max-new-tokens", "8", "--predictions", str(pred), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["rows"] == 20 and "bleu" in result and "chrF++" in out
    assert len(pred.read_text(encoding="utf-8").splitlines()) == 20
    # the earlier spelling still works: `evaluate CHECKPOINT --test FILE`
    assert main(["evaluate", str(run_dir / "checkpoints" / "step-12"), "--test", "sample-test", "--num-beams", "1",
                 "--max-new-tokens", "4", "--predictions", str(pred), "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"] == 20
    assert main(["eval", str(run_dir / "checkpoints" / "step-12"), "--data", str(tmp_path / "nope.tsv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data source not found" in err and "nope.tsv" in err


def test_profiles_and_config_errors(capsys):
    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    for name in ("rtx4080s-16g", "h100-80g", "a100-40g", "cpu-debug"):
        assert name in out
    assert main(["train", "--profile", "cpu-debug", "optim.lrr=1"]) == 2
    assert "unknown key 'optim.lrr'" in capsys.readouterr().err
    assert main(["bench", "--help"]) == 0 and "--fixed-length" in capsys.readouterr().out
    assert main(["nope"]) == 2
    assert "invalid choice: 'nope' (choose from 'train', 'eval', 'translate', 'bench', 'profiles')" in \
        capsys.readouterr().err


def test_every_shipped_profile_loads_into_the_config():
    from mt_nllb.config import TrainConfig
    from mt_nllb.profiles import profile_dir
    from trainstack.config import load_config
    from trainstack.hardware import load_profiles

    profiles = load_profiles(profile_dir())
    assert {p.name for p in profiles} == {"rtx4080s-16g", "rtx4090-24g", "h100-80g", "a100-40g", "v100-32g", "cpu-debug"}
    for p in profiles:
        cfg = load_config(TrainConfig, p.settings)
        if p.name != "cpu-debug":
            assert cfg.data.max_length == 256 and cfg.speed.batch_size * cfg.grad_accum_steps == 96
        assert (cfg.precision == "fp16") == (p.name == "v100-32g")  # Volta has no bf16


def test_nllb_600m_architecture_and_flops():
    from mt_nllb.model import load_arch_config, pair_train_flops

    c = load_arch_config("nllb-600m")
    assert (c.vocab_size, c.d_model, c.encoder_layers, c.decoder_layers) == (256206, 1024, 12, 12)
    assert (c.encoder_attention_heads, c.encoder_ffn_dim, c.scale_embedding, c.tie_word_embeddings) == (16, 4096, True, True)
    assert (c.pad_token_id, c.eos_token_id, c.decoder_start_token_id) == (1, 2, 2)
    # LM head FLOPs per target token (6 V d) exceed the decoder body's (6 * 12 * (8d^2 + 2 d ffn))
    head = 6 * c.vocab_size * c.d_model
    body = 6 * 12 * (8 * c.d_model**2 + 2 * c.d_model * c.decoder_ffn_dim)
    assert head > body
    f = pair_train_flops(c, 1, 1)
    assert f > 3 * 2 * (head / 6)


def test_best_by_bleu_is_kept_beside_the_last_n(trained, capsys):
    from trainstack.checkpoint import CheckpointManager

    root, _ = trained
    run_dir = root / "keep"
    assert main(["train", "--profile", "cpu-debug", "--run-dir", str(run_dir), "--no-progress",
                 f"data.cache_dir={root / 'cache'}", "data.test=", "max_steps=8", "eval_every_steps=2",
                 "save_every_steps=2", "keep_last=1", "keep_best=1", "eval.max_rows=4",
                 "eval.max_new_tokens=8"]) == 0
    evals = {r["step"]: r["eval_bleu"] for r in _records(run_dir) if "eval_bleu" in r}
    assert {2, 4, 6, 8} <= set(evals)  # (plus one at the epoch end, which saves nothing)
    best = CheckpointManager(run_dir / "checkpoints", metric="eval_bleu", mode="max").best()
    saved_bleu = max(evals[s] for s in (2, 4, 6, 8))
    assert json.loads((best / "trainer_state.json").read_text())["metrics"]["eval_bleu"] == saved_bleu
    kept = {p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step-")}
    assert kept == {"step-8", best.name}  # keep_last=1 plus the best by BLEU; the rest pruned


def test_generation_forces_the_target_language_and_takes_its_length_from_config(trained):
    import torch
    from mt_nllb.model import load_for_inference, set_generation

    _, run_dir = trained
    model, tok = load_for_inference(run_dir / "checkpoints" / "step-12")
    model.config.forced_bos_token_id = None  # only generation_config may carry it
    set_generation(model, tok, "eng_Latn", num_beams=2, max_new_tokens=30)
    ids = tok(["今天天气很好。"], add_special_tokens=False)["input_ids"][0]
    src = torch.tensor([[tok.convert_tokens_to_ids("zho_Hans"), *ids, 2]])
    with torch.no_grad():  # EOS suppressed so the length is the configured one, not transformers' 20
        out = model.generate(input_ids=src, generation_config=model.generation_config, suppress_tokens=[2])
    assert out[0, 0].item() == model.config.decoder_start_token_id
    assert out[0, 1].item() == tok.convert_tokens_to_ids("eng_Latn")
    assert out.shape[1] == 1 + 30


def test_scores_equal_sacrebleu_and_predictions_align():
    import sacrebleu
    from mt_nllb.evaluate import score

    hyps = ["The cat sat on the mat.", "He visits his grandparents every Sunday.", "It is raining"]
    refs = ["The cat sat on the mat.", "He visits his grandparents every weekend.", "It rains today."]
    m = score(hyps, refs)
    assert m["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score)
    assert m["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score)
    assert 20 < m["bleu"] < 100 and "nw:2" in m["chrf_signature"]


def test_16gb_profile_without_bitsandbytes_is_a_one_line_startup_error(monkeypatch, capsys):
    from trainstack import optim

    monkeypatch.setattr(optim, "HAS_BITSANDBYTES", False)
    assert main(["train", "--profile", "rtx4080s-16g", "--run-dir", "/nonexistent/never-created"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs bitsandbytes" in err[0] and "mt-nllb[bnb]" in err[0]


def test_saves_between_evaluations_evaluate_first(tmp_path):
    """The users' recipe evaluates every 2000 steps and saves every 3000: accepted, and a save between
    evaluations evaluates first, so every checkpoint has the BLEU best-checkpoint pruning ranks by."""
    run_dir = tmp_path / "run"
    assert main(["train", "--profile", "cpu-debug", "--run-dir", str(run_dir), "--no-progress",
                 f"data.cache_dir={tmp_path / 'cache'}", "data.test=", "max_steps=6", "eval_every_steps=4",
                 "save_every_steps=3", "keep_last=5"]) == 0
    rows = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    assert sorted({r["step"] for r in rows if "eval_bleu" in r}) == [3, 4, 6]
    for step in (3, 6):
        state = (run_dir / "checkpoints" / f"step-{step}" / "trainer_state.json").read_text()
        assert "eval_bleu" in state, step
