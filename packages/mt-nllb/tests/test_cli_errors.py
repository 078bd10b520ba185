"""Bad input through the real entry point: one line on stderr naming the file, key, model or directory,
exit 2, and nothing written (no run directory, no config.yaml, no data cache)."""

import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mt_nllb.cli import main


def _train(tmp_path, *extra, run_dir=None):
    run_dir = run_dir or tmp_path / "run"
    return main(["train", "--profile", "cpu-debug", "--run-dir", str(run_dir), "--no-progress",
                 f"data.cache_dir={tmp_path / 'cache'}", *extra])


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mt-nllb: error:"), err
    return lines[0]


def _nothing_written(tmp_path):
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def _good_parquet(path):
    pq.write_table(pa.table({"translation": [{"zh": f"这是第{i}个足够长的中文句子。", "en": f"This is long sentence {i}."}
                                             for i in range(40)]}), path)


def _bad_data(tmp_path, case):
    if case == "truncated parquet":
        path = tmp_path / "pairs.parquet"
        _good_parquet(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return path, "not a readable parquet file"
    if case == "JSON saved as .parquet":
        path = tmp_path / "pairs.parquet"
        path.write_text(json.dumps({"translation": {"zh": "这是一个足够长的中文句子。", "en": "A long sentence."}}) + "\n")
        return path, "not a readable parquet file"
    if case == "all-null parquet":
        path = tmp_path / "pairs.parquet"
        pq.write_table(pa.table({"translation": pa.array([None] * 5, pa.struct([("zh", pa.string()),
                                                                                ("en", pa.string())]))}), path)
        return path, "only 0 usable pairs"
    if case == "0-row parquet":
        path = tmp_path / "pairs.parquet"
        pq.write_table(pa.table({"zh": pa.array([], pa.string()), "en": pa.array([], pa.string())}), path)
        return path, "only 0 usable pairs"
    path = tmp_path / "pairs.tsv"  # no row has two tab-separated columns
    path.write_text("一列而已的数据行\n另一行也只有一列\n", encoding="utf-8")
    return path, "only 0 usable pairs"


@pytest.mark.parametrize("case", ["truncated parquet", "JSON saved as .parquet", "all-null parquet",
                                  "0-row parquet", "no usable tsv row"])
def test_bad_data_file_is_one_line_naming_it_and_writes_nothing(tmp_path, capsys, case):
    path, expect = _bad_data(tmp_path, case)
    assert _train(tmp_path, f"data.train=[{path}]") == 2
    line = _one_line(capsys.readouterr().err)
    assert expect in line and str(path) in line
    _nothing_written(tmp_path)


@pytest.mark.parametrize("override, key", [
    ("speed.batch_size=-4", "speed.batch_size"),
    ("speed.max_tokens_per_batch=0", "speed.max_tokens_per_batch"),
    ("optim.lr=0", "optim.lr"),
    ("optim.lr=-8e-5", "optim.lr"),
    ("max_steps=-5", "max_steps"),
    ("data.max_length=0", "data.max_length"),
])
def test_bad_numbers_are_refused_with_the_dotted_key(tmp_path, capsys, override, key):
    assert _train(tmp_path, override) == 2
    assert f"config key '{key}': must be" in _one_line(capsys.readouterr().err)
    _nothing_written(tmp_path)


@pytest.mark.parametrize("overrides, key", [
    (["model.name_or_path=facebook/nllb-200-distilled-600M", "model.tokenizer="], "model.name_or_path"),
    (["model.name_or_path=facebook/nllb-200-distilled-600M"], "model.name_or_path"),  # sample tokenizer
    (["model.tokenizer=facebook/nllb-200-distilled-600M"], "model.tokenizer"),
])
def test_hub_model_while_offline_is_one_line_naming_it(tmp_path, capsys, monkeypatch, overrides, key):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _train(tmp_path, *overrides) == 2
    line = _one_line(capsys.readouterr().err)
    assert "'facebook/nllb-200-distilled-600M' is not in the local Hugging Face cache" in line
    assert f"pass a local directory ({key}=PATH)" in line and "HF_HUB_OFFLINE=1" in line
    _nothing_written(tmp_path)


def test_hub_dataset_while_offline_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert _train(tmp_path, "data.train=[wmt19]") == 2
    line = _one_line(capsys.readouterr().err)
    assert "dataset 'wmt/wmt19' is not in the local Hugging Face cache" in line
    assert "pass a local file (data.train=PATH)" in line
    _nothing_written(tmp_path)


def test_hub_dataset_without_the_datasets_package_says_what_to_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` fails as if it were not installed
    assert _train(tmp_path, "data.train=[wmt19]") == 2
    line = _one_line(capsys.readouterr().err)
    assert "dataset 'wmt/wmt19'" in line and "pip install 'mt-nllb[hub]'" in line
    _nothing_written(tmp_path)


@pytest.mark.parametrize("where", ["a file", "under a file", "read-only"])
def test_unusable_run_dir_is_one_line_and_writes_nothing(tmp_path, capsys, where, request):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    run_dir = {"a file": blocker, "under a file": blocker / "run"}.get(where)
    if where == "read-only":
        run_dir = request.getfixturevalue("read_only_dir") / "run"
    assert _train(tmp_path, run_dir=run_dir) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"--run-dir={run_dir}" in line
    assert ("a file is in the way" if where != "read-only" else "cannot write there") in line
    assert blocker.read_text() == "mine" and not (tmp_path / "cache").exists()


def test_read_only_cache_dir_is_found_before_the_run_dir_is_written(tmp_path, capsys, read_only_dir):
    assert main(["train", "--profile", "cpu-debug", "--run-dir", str(tmp_path / "run"), "--no-progress",
                 f"data.cache_dir={read_only_dir / 'cache'}"]) == 2
    assert "data.cache_dir=" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("resume, expect", [
    ([], "--resume: no checkpoint in"),                          # latest, in a run dir that does not exist
    (["/no/such/run/checkpoints/step-6"], "not a checkpoint"),  # a mistyped checkpoint path
])
def test_resume_on_a_missing_dir_is_an_error_not_a_fresh_start(tmp_path, capsys, resume, expect):
    assert _train(tmp_path, "--resume", *resume) == 2
    line = _one_line(capsys.readouterr().err)
    assert expect in line and (str(tmp_path / "run") in line or resume[0] in line)
    _nothing_written(tmp_path)


def test_double_ctrl_c_exits_130_in_one_line(tmp_path, capsys, monkeypatch):
    import os
    import signal

    from mt_nllb import loss as loss_mod

    real, calls = loss_mod.seq2seq_loss, [0]

    def ctrl_c_twice(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(loss_mod, "seq2seq_loss", ctrl_c_twice)
    try:
        rc = _train(tmp_path)
    except KeyboardInterrupt:  # escaping would end the whole pytest session, not fail this test
        pytest.fail("KeyboardInterrupt escaped mt-nllb's main")
    assert rc == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mt-nllb train: interrupted twice: stopped without saving"), err
    assert not list((tmp_path / "run" / "checkpoints").glob("step-*"))
