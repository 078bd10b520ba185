"""The real entry point on CPU: tiny T5, fp32, the shared tokenizer; stop mid-epoch, resume, and check
the resumed run trains on exactly the rows the first run had not seen."""

import json
import signal

import chat_pretrain.train as train_mod
import pytest
from chat_pretrain.cli import main
from chat_pretrain.synth import make_parquet
from trainstack.testing import failed_run_text


@pytest.fixture
def seen_rows(monkeypatch):
    """Records the row ids each run trains on; `interrupt_at[0] = k` sends SIGINT at the k-th micro-batch
    of the run."""
    seen: list[list[int]] = []
    interrupt_at = [0]
    real = train_mod.make_loss_fn

    def recording():
        fn = real()
        micro = [0]

        def loss_fn(model, batch):
            seen[-1].extend(batch["row_ids"])
            micro[0] += 1
            if micro[0] == interrupt_at[0]:
                signal.raise_signal(signal.SIGINT)
            return fn(model, batch)

        return loss_fn

    monkeypatch.setattr(train_mod, "make_loss_fn", recording)
    return seen, interrupt_at


def test_train_sigint_resume_mid_epoch_sees_exactly_the_unseen_rows(tmp_path, chatlm_dir, seen_rows):
    seen, interrupt_at = seen_rows
    train = make_parquet(tmp_path / "train.parquet", 120, median_chars=10, row_group_rows=50, task="copy")
    valid = make_parquet(tmp_path / "valid.parquet", 8, median_chars=10, seed=9, task="copy")
    run = tmp_path / "run"
    common = ["--profile", "cpu-tiny", f"data.train_files=[{train}]", f"data.valid_files=[{valid}]",
              f"tokenizer.path={chatlm_dir}", f"run_dir={run}", "data.id_column=id", "data.bucket_rows=64",
              "data.max_batch_rows=8", "grad_accum_steps=2", "log_every_steps=1", "eval.max_new_tokens=8"]

    # 1. Ctrl-C at the 6th micro-batch, the last of window 3: fit takes that optimizer step, saves, exit 130.
    # (Ctrl-C earlier in a window drops the window, which core's tests cover.)
    interrupt_at[0] = 6
    seen.append([])
    assert main(["train", *common, "memory_log_every_steps=1"]) == 130
    interrupt_at[0] = 0
    first = seen[-1]
    assert 0 < len(first) < 120
    ckpts = sorted((run / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-3"]
    assert (ckpts[0] / "config.json").is_file() and (ckpts[0] / "tokenizer.json").is_file()
    assert json.loads((run / "summary.json").read_text())["interrupted"] is True
    mem = [json.loads(line) for line in (run / "memory.rank0.jsonl").read_text().splitlines()]
    assert len(mem) == 3 and all(r["rss_gib"] > 0 for r in mem)  # every optimizer step (2 micro-batches)

    # 2. --resume PATH (the checkpoint named), stopping mid-epoch again at step 5.
    seen.append([])
    assert main(["train", *common, "--resume", str(ckpts[0]), "max_steps=5"]) == 0
    second = seen[-1]
    assert 0 < len(second) and len(first) + len(second) < 120

    # 3. The users' spelling, to the end of the epoch.
    seen.append([])
    assert main(["train", *common, "--is_keep_training=True"]) == 0
    third = seen[-1]
    assert sorted(first + second + third) == list(range(120))  # each row once: none repeated, none lost
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] > 5 and summary["last_loss"] == summary["last_loss"]  # not NaN
    assert summary["best_metric"] is not None  # best-by-BLEU bookkeeping ran
    evals = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any("eval_bleu" in r and "eval_loss" in r for r in evals)


def test_train_needs_data_and_tokenizer():
    from chat_pretrain.config import load_train_config
    from trainstack.config import ConfigError

    cfg = load_train_config("cpu-tiny")
    with pytest.raises(ConfigError, match="train_files"):
        train_mod.run(train_mod.Job(cfg))


def test_two_gloo_processes_train_an_epoch_in_step(tmp_path, chatlm_dir):
    """DDP on 2 CPU processes (torchrun, gloo) through the real entry point: token-budget batches differ
    in number per rank, so without equal per-rank micro-batch counts one rank would wait forever in an
    all-reduce at the epoch end. Both ranks finish the epoch, evaluation gathers across ranks, rank 0
    writes one checkpoint."""
    import os
    import socket
    import subprocess
    import sys

    train = make_parquet(tmp_path / "train.parquet", 150, median_chars=10, row_group_rows=50, task="copy")
    valid = make_parquet(tmp_path / "valid.parquet", 7, median_chars=10, seed=9, task="copy")
    run = tmp_path / "run"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "chat_pretrain", "train", "--profile", "cpu-tiny",
           f"data.train_files=[{train}]", f"data.valid_files=[{valid}]", f"tokenizer.path={chatlm_dir}",
           f"run_dir={run}", "data.bucket_rows=40", "data.max_batch_rows=8", "grad_accum_steps=2",
           "log_every_steps=1", "eval.max_new_tokens=4"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, failed_run_text(proc.stdout, proc.stderr)
    assert "processes: 2" in proc.stdout
    assert "distributed: collective timeout 1800 s; " in proc.stdout  # the users' NCCL settings, said once
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] is False and summary["best_metric"] is not None
    ckpts = sorted((run / "checkpoints").glob("step-*"))
    assert len(ckpts) == 1 and (ckpts[0] / "model.pt").is_file()
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any("eval_bleu" in r for r in records) and all(r.get("loss", 0) == r.get("loss", 0) for r in records)


def test_a_used_run_dir_is_refused_and_resume_checks_max_seq_len(tmp_path, chatlm_dir, capsys):
    train = make_parquet(tmp_path / "train.parquet", 24, median_chars=10, task="copy")
    run = tmp_path / "run"
    common = ["--profile", "cpu-tiny", f"data.train_files=[{train}]", f"tokenizer.path={chatlm_dir}",
              f"run_dir={run}", "max_steps=2", "data.max_batch_rows=8"]
    assert main(["train", *common]) == 0

    # the checkpoint evaluates and generates through the CLI
    ckpt = run / "checkpoints" / "step-2"
    capsys.readouterr()
    assert main(["eval", str(ckpt), "--data", str(train), "--max-rows", "4", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["rows"] == 4 and result["loss"] > 0 and 0 <= result["bleu"] <= 100
    assert main(["generate", str(ckpt), "你好", "今天天气很好", "--max-new-tokens", "4", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines[-2:]] == ["你好", "今天天气很好"]
    assert main(["eval", str(run), "--data", str(train)]) == 2
    assert "not a chat-pretrain checkpoint" in capsys.readouterr().err
    before = (run / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["train", *common, "seed=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds checkpoints" in err and "overwrite=true" in err, err
    assert (run / "config.yaml").read_text() == before  # nothing written
    assert main(["train", *common, "--resume", "max_steps=3", "data.max_seq_len=24"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot resume: max_seq_len is 24 now but" in err, err
