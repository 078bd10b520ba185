"""The real entry point on CPU with a tiny ESM-2: MLM and AE train on the shipped FASTA,
perplexity falls, resume continues, embed writes latents."""
import json

import pyarrow.parquet as pq
import pytest
from esm2ae.cli import main
from esm2ae.train import SAMPLE_FASTA

TINY = ["model.name=esm2_tiny", "data.max_length=128", "batch.max_tokens_per_batch=1024",
        "batch.tokens_per_step=1024", "optim.lr=3e-3", "optim.warmup_steps=3", "log_every_steps=5",
        "data.val_fraction=0.1"]


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("mlm")
    rc = main(["train", "--profile", "cpu-debug", *TINY, "max_steps=30", "eval_every_steps=30",
               "save_every_steps=15", f"run_dir={run}"])
    assert rc == 0
    return run


def test_mlm_perplexity_falls_and_files_exist(mlm_run):
    evals = [r for r in _log(mlm_run) if "eval_perplexity" in r]
    train = [r for r in _log(mlm_run) if "loss" in r]
    assert train[-1]["loss"] < train[0]["loss"] - 0.3
    # random init on 25 residues scores ~25-33; residue composition alone gives ~18
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 30
    assert evals[-1]["eval_perplexity"] < evals[0]["eval_perplexity"] - 3, evals
    assert (mlm_run / "config.yaml").exists()
    ck = sorted(p.name for p in (mlm_run / "checkpoints").iterdir())
    assert ck == ["step-15", "step-30"]
    files = {p.name for p in (mlm_run / "checkpoints" / "step-30").iterdir()}
    assert {"optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json"} <= files
    assert files & {"model.pt", "model.safetensors"}
    assert (mlm_run / "final" / "config.json").exists() and (mlm_run / "final" / "ae.pt").exists()


def test_resume_continues_from_checkpoint(mlm_run, tmp_path, capsys):
    import shutil
    run = tmp_path / "r"
    shutil.copytree(mlm_run, run)
    shutil.rmtree(run / "checkpoints" / "step-30")
    (run / "log.jsonl").write_text("")
    rc = main(["train", "--profile", "cpu-debug", *TINY, "max_steps=30", "eval_every_steps=30",
               "save_every_steps=15", f"run_dir={run}", "--resume", "auto"])
    assert rc == 0
    assert "at step 15" in capsys.readouterr().out
    steps = [r["step"] for r in _log(run) if "loss" in r]
    assert steps[0] == 20 and steps[-1] == 30
    # same data order, masks and RNG: the resumed run ends where the uninterrupted one did
    a = [r for r in _log(mlm_run) if r.get("step") == 30 and "loss" in r][0]["loss"]
    b = [r for r in _log(run) if r.get("step") == 30 and "loss" in r][0]["loss"]
    assert a == pytest.approx(b, rel=1e-4)


def test_ae_on_frozen_backbone_then_embed(mlm_run, tmp_path):
    run = tmp_path / "ae"
    rc = main(["train", "--profile", "cpu-debug", *TINY, "task=ae", f"model.name={mlm_run / 'final'}",
               "model.pretrained=true", "ae.widths=[32,16,8]", "max_steps=20", "eval_every_steps=20",
               "optim.lr=1e-2", "save_every_steps=0", f"run_dir={run}"])
    assert rc == 0
    ae = [r["eval_ae_loss"] for r in _log(run) if "eval_ae_loss" in r]
    assert len(ae) >= 2 and ae[-1] < 0.5 * ae[0], ae
    out = tmp_path / "z.parquet"
    assert main(["embed", str(run / "final"), str(SAMPLE_FASTA), "-o", str(out)]) == 0
    t = pq.read_table(out)
    assert t.num_rows == 80 and len(t.column("latent")[0]) == 8 and len(t.column("embedding")[0]) == 64


def test_joint_fast_dev_run_and_overfit(tmp_path):
    rc = main(["train", "--profile", "cpu-debug", *TINY, "task=joint", "ae.widths=[16]", "fast_dev_run=true",
               f"run_dir={tmp_path / 'j'}"])
    assert rc == 0
    log = _log(tmp_path / "j")
    assert log[0]["step"] == 1 and "loss" in log[0]
    assert any("eval_ae_loss" in r and "eval_perplexity" in r for r in log)
    rc = main(["train", "--profile", "cpu-debug", *TINY, "overfit_batches=1", "batch.tokens_per_step=1024",
               "max_steps=20", "optim.lr=5e-3", "save_every_steps=0", "eval_every_steps=0",
               f"run_dir={tmp_path / 'o'}"])
    assert rc == 0
    losses = [r["loss"] for r in _log(tmp_path / "o") if "loss" in r]
    assert losses[-1] < losses[0] - 0.5


def test_bad_inputs_fail_with_one_line(tmp_path, capsys):
    empty = tmp_path / "e.fasta"
    empty.write_text("")
    assert main(["train", "--profile", "cpu-debug", *TINY, f"data.train={empty}", f"run_dir={tmp_path}"]) == 2
    assert "e.fasta: no usable sequences" in capsys.readouterr().err
    assert main(["train", "--profile", "cpu-debug", "optim.lrr=1", f"run_dir={tmp_path}"]) == 2
    assert "optim.lrr" in capsys.readouterr().err
    assert main(["train", "--profile", "cpu-debug", "data.max_length=2000", f"run_dir={tmp_path}"]) == 2
    assert "max_length" in capsys.readouterr().err


def test_streaming_parquet_trains_and_counts_bad_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from esm2ae.data import StreamingMLMBatches, read_sequences
    recs, _ = read_sequences(SAMPLE_FASTA)
    seqs = [r.sequence for r in recs] + ["MK#V"]
    p = tmp_path / "train.parquet"
    pq.write_table(pa.table({"sequence": seqs}), p, row_group_size=20)
    s = StreamingMLMBatches(str(p), 128, 1024, seed=0, shuffle_buffer=16)
    n = sum(b.num_seqs for b in s)
    assert n == 80 and s.report.kept == 80 and "invalid characters" in s.report.summary()
    # resume mid-stream: the rest matches an uninterrupted pass
    full = [b.input_ids.tolist() for b in StreamingMLMBatches(str(p), 128, 1024, seed=0, shuffle_buffer=16)]
    a = StreamingMLMBatches(str(p), 128, 1024, seed=0, shuffle_buffer=16)
    it = iter(a)
    next(it), next(it)
    b = StreamingMLMBatches(str(p), 128, 1024, seed=0, shuffle_buffer=16)
    b.load_state_dict(a.state_dict())
    assert sum(x.num_seqs for x in b) > 0
    assert len(full) >= 3
    rc = main(["train", "--profile", "cpu-debug", *TINY, "data.streaming=true", f"data.train={p}",
               f"data.val={SAMPLE_FASTA}", "data.max_val_sequences=8", "max_steps=4", "eval_every_steps=0",
               "save_every_steps=0", f"run_dir={tmp_path / 's'}"])
    assert rc == 0
