"""The real entry point on CPU: tiny T5, fp32, the shared tokenizer; stop mid-epoch, resume, and check
the resumed run trains on exactly the rows the first run had not seen."""

import json

import pytest

import chat_pretrain.train as train_mod
from chat_pretrain.cli import main, parse_train_args
from chat_pretrain.synth import make_parquet


@pytest.fixture
def seen_rows(monkeypatch):
    seen: list[list[int]] = []
    real = train_mod.make_loss_fn

    def recording():
        fn = real()

        def loss_fn(model, batch):
            seen[-1].extend(batch["row_ids"])
            return fn(model, batch)

        return loss_fn

    monkeypatch.setattr(train_mod, "make_loss_fn", recording)
    return seen


def test_train_resume_mid_epoch_sees_exactly_the_unseen_rows(tmp_path, chatlm_dir, seen_rows):
    train = make_parquet(tmp_path / "train.parquet", 120, median_chars=10, row_group_rows=50, task="copy")
    valid = make_parquet(tmp_path / "valid.parquet", 20, median_chars=10, seed=9, task="copy")
    common = ["--config", "cpu-tiny", f"data.train_files=[{train}]", f"data.valid_files=[{valid}]",
              f"tokenizer.path={chatlm_dir}", f"run_dir={tmp_path / 'run'}", "data.id_column=id",
              "data.bucket_rows=64", "data.max_batch_rows=8", "grad_accum_steps=2", "log_every_steps=1", "eval.max_new_tokens=8"]

    seen_rows.append([])
    assert main(["train", *common, "max_steps=3"]) == 0
    first = seen_rows[-1]
    assert 0 < len(first) < 120  # stopped mid-epoch
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and (run / "summary.json").is_file()
    ckpts = sorted((run / "checkpoints").glob("step-*"))
    assert ckpts and (ckpts[-1] / "config.json").is_file() and (ckpts[-1] / "tokenizer.json").is_file()

    seen_rows.append([])
    assert main(["train", *common, "--is_keep_training=True"]) == 0
    second = seen_rows[-1]
    assert not set(first) & set(second)
    assert sorted(first + second) == list(range(120))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] > 3 and summary["last_loss"] == summary["last_loss"]  # not NaN


def test_train_needs_data_and_tokenizer():
    cfg, _ = parse_train_args(["--config", "cpu-tiny"])
    with pytest.raises(SystemExit, match="train_files"):
        train_mod.run(train_mod.Job(cfg))
