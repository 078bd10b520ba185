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
