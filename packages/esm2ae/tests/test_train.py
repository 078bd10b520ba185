"""The real entry point on CPU with a tiny ESM-2: MLM and AE train on the shipped FASTA,
perplexity falls, resume continues, embed writes latents."""
import json

import pyarrow.parquet as pq
import pytest
from esm2ae.cli import main
from esm2ae.train import SAMPLE_FASTA
from trainstack.testing import failed_run_text

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


def _losses(run, after=0):
    return {r["step"]: r["loss"] for r in _log(run) if "loss" in r and r["step"] > after}


def _eval_at(run, step):
    return [r for r in _log(run) if r["step"] == step and "eval_perplexity" in r][-1]


def _interrupt_at_micro_step(monkeypatch, n):
    """SIGINT to this process while micro-batch ``n`` is being computed, the way Ctrl-C arrives."""
    import os
    import signal

    import esm2ae.train as train_mod
    real, calls = train_mod.compute_loss, [0]

    def compute_loss(*a, **k):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)
    monkeypatch.setattr(train_mod, "compute_loss", compute_loss)


def test_sigint_saves_exits_130_and_resume_matches(mlm_run, tmp_path, capsys, monkeypatch):
    run = tmp_path / "i"
    args = ["train", "--profile", "cpu-debug", *TINY, "max_steps=30", "eval_every_steps=30",
            "save_every_steps=15", f"run_dir={run}"]
    with monkeypatch.context() as m:
        _interrupt_at_micro_step(m, 10)
        assert main(args) == 130
    assert "continue with --resume auto" in capsys.readouterr().out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-10"]
    assert not (run / "final").exists()          # a half-trained model is not exported as final
    assert max(_losses(run)) == 10
    assert main([*args, "--resume", "auto"]) == 0
    assert "at step 10" in capsys.readouterr().out
    # same data order, crops, masks, optimizer state and RNG: every loss logged after the resume
    # point and the final eval equal the uninterrupted run's bit for bit (fp32 CPU is deterministic)
    assert list(_losses(run, after=10)) == [15, 20, 25, 30]
    assert _losses(run, after=10) == _losses(mlm_run, after=10)
    assert _eval_at(run, 30)["eval_perplexity"] == _eval_at(mlm_run, 30)["eval_perplexity"]
    assert (run / "final" / "config.json").exists()


def test_a_used_run_dir_is_refused_and_resume_checks_max_length(mlm_run, tmp_path, capsys):
    import shutil

    args = ["train", "--profile", "cpu-debug", *TINY, "max_steps=30", "eval_every_steps=30", "save_every_steps=15"]
    before = (mlm_run / "config.yaml").read_text()
    capsys.readouterr()
    assert main([*args, f"run_dir={mlm_run}", "seed=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds checkpoints" in err and "overwrite=true" in err, err
    assert (mlm_run / "config.yaml").read_text() == before  # nothing written
    copy = tmp_path / "copy"
    shutil.copytree(mlm_run, copy)
    assert main([*args, f"run_dir={copy}", "data.max_length=64", "max_steps=31", "--resume", "auto"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot resume: max_length is 64 now but 128" in err, err


@pytest.fixture
def one_rank_deepspeed(monkeypatch):
    """DeepSpeed on CPU (gloo), one rank, without building its shared-memory all-reduce op (a
    30 s C++ build that only speeds up multi-process CPU runs)."""
    ds_comm = pytest.importorskip("deepspeed.comm.torch")
    monkeypatch.setattr(ds_comm, "build_shm_op", lambda: None)
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    yield
    # a run keeps its one-rank group for the process; the next test starts without one
    from trainstack.deepspeed_engine import destroy_process_group
    destroy_process_group()


DS = ["deepspeed.enabled=true", "deepspeed.offload_optimizer=cpu", "deepspeed.cpu_adam=false",
      "batch.tokens_per_step=2048", "max_steps=6", "log_every_steps=1", "eval_every_steps=6", "save_every_steps=3"]


def _spy_on_fit(monkeypatch) -> list[bool]:
    """Record, for each call of core's fit, whether it trained through a DeepSpeed engine."""
    import trainstack.loop as loop
    from trainstack.deepspeed_engine import uses_deepspeed

    real, calls = loop.fit, []

    def fit(**kw):
        calls.append(kw["accelerator"] is not None and uses_deepspeed(kw["accelerator"]))
        return real(**kw)
    monkeypatch.setattr(loop, "fit", fit)
    return calls


def test_deepspeed_zero2_offload_trains_through_fit_stops_and_resumes_exactly(one_rank_deepspeed, tmp_path, capsys,
                                                                            monkeypatch):
    # the code path of the 8-10 GB profiles (ZeRO-2, optimizer on the CPU), without a launcher
    ref, run = tmp_path / "ref", tmp_path / "int"
    fit_calls = _spy_on_fit(monkeypatch)
    assert main(["train", "--profile", "cpu-debug", *TINY, *DS, f"run_dir={ref}"]) == 0
    assert fit_calls == [True]          # one loop: core's fit, driving the DeepSpeed engine
    out = capsys.readouterr().out
    assert "deepspeed: ZeRO-2, optimizer offload cpu" in out
    assert (ref / "final" / "config.json").exists()
    step6 = ref / "checkpoints" / "step-6"
    files = {p.relative_to(step6).as_posix() for p in step6.rglob("*") if p.is_file()}
    # core's checkpoint (manifest last), with the engine's ZeRO partitions in place of optimizer.pt
    assert {"manifest.json", "model.pt", "scheduler.pt", "rng.pt", "extra.pt", "trainer_state.json",
            "deepspeed/engine/zero_pp_rank_0_mp_rank_00_optim_states.pt"} <= files and "optimizer.pt" not in files
    assert set(json.loads((step6 / "manifest.json").read_text())["files"]) == files - {"manifest.json"}
    train_records = [r for r in _log(ref) if "loss" in r]
    assert [r["step"] for r in train_records] == [1, 2, 3, 4, 5, 6]
    assert all(r["grad_norm"] > 0 for r in train_records)   # the engine's norm, logged by fit

    with monkeypatch.context() as m:
        # 9 micro-batches an epoch, 2 a step: steps 1-4, step 5 (the epoch's last, alone), then micro-batch
        # 10 opens step 6 in the second epoch
        _interrupt_at_micro_step(m, 10)
        assert main(["train", "--profile", "cpu-debug", *TINY, *DS, f"run_dir={run}"]) == 130
    # fit drops the open window and saves the state after step 5, while the engine is mid-window
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-3", "step-5"]
    assert not (run / "final").exists()
    assert main(["train", "--profile", "cpu-debug", *TINY, *DS, f"run_dir={run}", "--resume", "auto"]) == 0
    assert "at step 5" in capsys.readouterr().out
    assert fit_calls == [True, True, True]
    assert list(_losses(run, after=3)) == [4, 5, 6]
    assert _losses(run) == _losses(ref)
    assert _eval_at(run, 6)["eval_perplexity"] == _eval_at(ref, 6)["eval_perplexity"]


class _CreatesFile:
    """Unpickling it creates a file: the stand-in for any code a planted pickle would run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_planted_in_the_deepspeed_state_does_not_run_on_resume(one_rank_deepspeed, tmp_path, capsys):
    import torch

    run = tmp_path / "run"
    args = ["train", "--profile", "cpu-debug", *TINY, *DS, "max_steps=1", "eval_every_steps=0", f"run_dir={run}"]
    assert main(args) == 0
    ckpt = run / "checkpoints" / "step-1"
    planted = ckpt / "deepspeed" / "engine" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    marker = tmp_path / "code-ran"
    torch.save({"optimizer_state_dict": _CreatesFile(marker)}, planted)
    # a forger can rewrite the manifest too: the check must not rely on it
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["files"]["deepspeed/engine/zero_pp_rank_0_mp_rank_00_optim_states.pt"] = planted.stat().st_size
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main([*args, "max_steps=2", "--resume", "auto"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "zero_pp_rank_0_mp_rank_00_optim_states.pt asks to unpickle" in err and "could run code" in err, err
    assert not marker.exists()


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
               "max_steps=40", "optim.lr=5e-3", "save_every_steps=0", "eval_every_steps=0",
               f"run_dir={tmp_path / 'o'}"])
    assert rc == 0
    losses = [r["loss"] for r in _log(tmp_path / "o") if "loss" in r]
    assert losses[-1] < losses[0] - 0.5


def test_bad_records_are_counted_and_training_goes_on(tmp_path, capsys):
    # invalid characters and sequences longer than the crop are reported with counts and ids at
    # start-up; the run trains on the rest and finishes
    recs = (SAMPLE_FASTA.read_text().split(">")[1:])[:20]
    f = tmp_path / "mixed.fasta"
    f.write_text("".join(">" + r for r in recs) + ">bad1 desc\nMKV1LA\n>bad2\nMK@@\n>long1\n" + "MKVLA" * 60 + "\n")
    # an edited copy of a shipped profile, passed by path
    from esm2ae.profiles import get_profile
    mine = tmp_path / "my-cpu.yaml"
    mine.write_text(open(get_profile("cpu-debug").path).read().replace("max_length: 256", "max_length: 200"))
    rc = main(["train", "--profile", str(mine), *TINY, f"data.train={f}", "max_steps=2", "eval_every_steps=0",
               "save_every_steps=0", f"run_dir={tmp_path / 'run'}"])
    assert rc == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("data: "))
    assert "23 records, 21 kept; 2 skipped (invalid characters: bad1 (1), bad2 (@))" in line
    n_long = sum(len("".join(r.split("\n")[1:]).strip()) + 2 > 128 for r in recs) + 1
    assert f"{n_long} longer than max_length" in line
    assert "done: 2 steps" in out and f"profile: my-cpu ({mine})" in out


def test_corrupt_gzip_stops_at_start_with_one_line(tmp_path, capsys):
    import gzip
    good = tmp_path / "p.fasta.gz"
    with gzip.open(good, "wt") as fh:
        fh.write(SAMPLE_FASTA.read_text())
    bad = tmp_path / "cut.fasta.gz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    rc = main(["train", "--profile", "cpu-debug", *TINY, f"data.train={bad}", f"run_dir={tmp_path / 'run'}"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cut.fasta.gz: unreadable (corrupt or truncated gzip?)" in err[0], err
    assert "records read before the error" in err[0]
    assert not (tmp_path / "run" / "checkpoints").exists()     # stopped before any training


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
    def ids_and_labels(b):
        return b.input_ids.tolist(), b.labels.tolist()
    full = [ids_and_labels(b) for b in StreamingMLMBatches(str(p), 128, 1024, seed=0, shuffle_buffer=16)]
    assert len(full) >= 5
    # resume mid-stream: the rest (same rows, crops and masks) matches an uninterrupted pass
    for consumed in (1, 2, len(full) - 1):
        a = StreamingMLMBatches(str(p), 128, 1024, seed=0, shuffle_buffer=16)
        it = iter(a)
        for _ in range(consumed):
            next(it)
        b = StreamingMLMBatches(str(p), 128, 1024, seed=0, shuffle_buffer=16)
        b.load_state_dict(a.state_dict())
        assert [ids_and_labels(x) for x in b] == full[consumed:], consumed
    rc = main(["train", "--profile", "cpu-debug", *TINY, "data.streaming=true", f"data.train={p}",
               f"data.val={SAMPLE_FASTA}", "data.max_val_sequences=8", "max_steps=4", "eval_every_steps=0",
               "save_every_steps=0", f"run_dir={tmp_path / 's'}"])
    assert rc == 0


def test_ddp_two_cpu_processes_cross_epochs(tmp_path):
    # torchrun, 2 ranks on gloo: every rank takes the same number of micro-batches (4 per epoch
    # here, 3 per optimizer step), so the steps that end inside an accumulation window at each
    # epoch end happen on both ranks and no rank waits in an all-reduce. The final step is kept
    # off the save cadence: core's fit (c3cf2b2) decides the final save from a rank-0-only value.
    import os
    import subprocess
    import sys
    run = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "esm2ae", "train", "--profile", "cpu-debug", *TINY, "batch.tokens_per_step=6144",
           "max_steps=8", "log_every_steps=1", "eval_every_steps=4", "save_every_steps=3", f"run_dir={run}"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, failed_run_text(p.stdout or '', p.stderr)
    steps = [(r["step"], r["epoch"]) for r in _log(run) if "loss" in r]
    assert [s for s, _ in steps] == list(range(1, 9))
    assert [e for s, e in steps if e == int(e)] == [1.0, 2.0, 3.0, 4.0]     # a step at every epoch end
    # (not asserting step-6: it ends an epoch inside an accumulation window, where core's fit
    # does not apply the save cadence)
    assert "step-8" in {x.name for x in (run / "checkpoints").iterdir()}
    assert (run / "final" / "config.json").exists()
