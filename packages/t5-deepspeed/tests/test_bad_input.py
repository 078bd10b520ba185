"""Bad input fails at start-up with one line naming the file, key or name (exit code 2)."""

import json

import pytest
from t5_deepspeed.cli import main


@pytest.fixture
def base(data_dir, tmp_path):
    return ["--config_name", "tiny-t5", "--train_file", str(data_dir / "en-ro.train.jsonl"), "--source_lang", "en",
            "--target_lang", "ro", "--do_train", "--output_dir", str(tmp_path / "out")]


def _one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("t5-deepspeed: error: ") and "\n" not in err, err
    return err


def test_unknown_deepspeed_config_name(base, capsys):
    err = _one_line_error(capsys, base + ["--deepspeed", "zero4"])
    assert "unknown DeepSpeed config 'zero4'" in err and "zero2-offload" in err


def test_malformed_deepspeed_json(base, capsys, tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text('{"zero_optimization": {"stage": 2}')
    err = _one_line_error(capsys, base + ["--deepspeed", str(bad)])
    assert str(bad) in err and "malformed JSON" in err


def test_dataset_without_language_keys(base, capsys, tmp_path):
    f = tmp_path / "de.jsonl"
    f.write_text(json.dumps({"translation": {"en": "The book.", "de": "Das Buch."}}) + "\n")
    argv = base.copy()
    argv[argv.index("--train_file") + 1] = str(f)
    err = _one_line_error(capsys, argv)
    assert f"{f}:1" in err and '"translation.ro" missing' in err


def test_model_path_that_does_not_exist(base, capsys, tmp_path):
    argv = ["--model_name_or_path", str(tmp_path / "no-such-model")] + base[2:]
    err = _one_line_error(capsys, argv)
    assert "model path does not exist" in err and "no-such-model" in err


def test_removed_argument(base, capsys):
    err = _one_line_error(capsys, base + ["--fp16_backend", "amp"])
    assert "removed in transformers 5" in err


def test_fp16_on_cpu_for_non_t5_is_refused_clearly(base, capsys):
    err = _one_line_error(capsys, base + ["--fp16", "--force_fp16"])
    assert "fp16 is not supported on CPU" in err


# Issue 12, item 7: each of these was a traceback; now one line, exit 2, nothing written.

@pytest.mark.parametrize("flag,value,says", [
    ("--per_device_train_batch_size", "-4", "--per_device_train_batch_size must be a positive integer, got -4"),
    ("--learning_rate", "-0.001", "--learning_rate must be > 0, got -0.001"),
    ("--learning_rate=-1e-3", None, "--learning_rate must be > 0, got -0.001"),
])
def test_negative_batch_size_or_lr(base, capsys, tmp_path, flag, value, says):
    err = _one_line_error(capsys, base + ([flag, value] if value is not None else [flag]))
    assert says in err and not (tmp_path / "out").exists()


def test_non_utf8_training_file_names_file_line_and_byte(base, capsys, tmp_path):
    f = tmp_path / "latin1.jsonl"
    good = json.dumps({"translation": {"en": "The book.", "ro": "Cartea."}}).encode() + b"\n"
    latin1 = b'{"translation": {"en": "The table.", "ro": "Mas\xe3."}}\n'  # "Masă" in Latin-1/CP1250
    f.write_bytes(good + latin1)
    argv = base.copy()
    argv[argv.index("--train_file") + 1] = str(f)
    err = _one_line_error(capsys, argv)
    offset = len(good) + latin1.index(b"\xe3")
    assert f"{f}:2: not UTF-8 (byte 0xe3 at byte offset {offset} of the file)" in err
    assert not (tmp_path / "out").exists()


def test_unknown_hardware_profile_lists_the_shipped_ones(base, capsys, tmp_path):
    err = _one_line_error(capsys, base + ["--hardware_profile", "rtx9090-64g"])
    assert "unknown profile 'rtx9090-64g'" in err and all(p in err for p in ("cpu", "rtx4080s-16g", "h100-80g"))
    assert not (tmp_path / "out").exists()


def test_output_dir_that_is_a_file(base, capsys, tmp_path):
    f = tmp_path / "out"
    f.write_text("a file")
    err = _one_line_error(capsys, base)
    assert f"--output_dir={f}: a file is in the way" in err and f.read_text() == "a file"


def test_read_only_output_dir(base, capsys, read_only_dir):
    argv = base.copy()
    argv[argv.index("--output_dir") + 1] = str(read_only_dir / "out")
    err = _one_line_error(capsys, argv)
    assert f"--output_dir={read_only_dir / 'out'}: cannot write there ({read_only_dir} is read-only)" in err
    assert list(read_only_dir.iterdir()) == []


def test_hub_model_and_dataset_while_offline_are_one_line(base, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    argv = ["--model_name_or_path", "google-t5/t5-small"] + base[2:]
    err = _one_line_error(capsys, argv)
    assert "model config 'google-t5/t5-small' is not in the local Hugging Face cache" in err
    assert "pass a local directory (--model_name_or_path DIR)" in err
    argv = base.copy()
    i = argv.index("--train_file")
    argv[i:i + 2] = ["--dataset_name", "wmt16", "--dataset_config", "ro-en"]
    err = _one_line_error(capsys, argv)
    assert "dataset 'wmt16' is not in the local Hugging Face cache" in err and "--train_file" in err
    assert not (tmp_path / "out").exists()


def test_profiles_version_and_a_bad_profile(capsys, tmp_path):
    assert main(["--version"]) == 0 and capsys.readouterr().out.startswith("t5-deepspeed ")
    assert main(["profiles"]) == 0 and "rtx4080s-16g" in capsys.readouterr().out
    mine = tmp_path / "mine.yaml"
    mine.write_text("requires: {}\nsettings:\n  learning_rat: 0.1\n")
    assert main(["profiles", "validate", "cpu", str(mine)]) == 2
    out = capsys.readouterr().out
    assert "OK   cpu" in out and "FAIL mine" in out and "'learning_rat' is not an argument" in out
