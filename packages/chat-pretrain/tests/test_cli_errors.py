"""Bad input through the real entry point: one line on stderr naming the file, key, model or directory,
exit 2, within seconds, and nothing written (no run directory, no config.yaml, no checkpoint)."""

import signal
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chat_pretrain.cli import main
from chat_pretrain.synth import make_parquet


@pytest.fixture
def watchdog():
    """Turns a hang (the old zero-usable-rows spin) into a failure instead of a stuck test run."""

    def hung(*_):
        raise TimeoutError("chat-pretrain train still running after 60 s")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _train(tmp_path, *args):
    return main(["train", "--profile", "cpu-tiny", f"run_dir={tmp_path / 'run'}", *args])


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("chat-pretrain: error:"), err
    return lines[0]


def _rows(path, prompts, responses):
    pq.write_table(pa.table({"prompt": pa.array(prompts, pa.string()),
                             "response": pa.array(responses, pa.string())}), path)
    return path


@pytest.mark.parametrize("rows", ["0 rows", "all null", "null or empty"])
@pytest.mark.parametrize("max_steps", [0, 5])
def test_zero_usable_rows_exits_2_in_seconds_and_saves_nothing(tmp_path, chatlm_dir, capsys, watchdog, rows,
                                                               max_steps):
    data = tmp_path / "train.parquet"
    n = 3000
    if rows == "0 rows":
        _rows(data, [], [])
    elif rows == "all null":
        _rows(data, [None] * n, [None] * n)
    else:
        _rows(data, ["问题", None, ""] * (n // 3), [None, "回答", "回答"] * (n // 3))
    start = time.monotonic()
    rc = _train(tmp_path, f"data.train_files=[{data}]", f"tokenizer.path={chatlm_dir}", f"max_steps={max_steps}")
    assert rc == 2 and time.monotonic() - start < 20
    line = _one_line(capsys.readouterr().err)
    assert "nothing to train on" in line and str(data) in line
    assert ("no rows" if rows == "0 rows" else "3,000 rows, none with a non-empty 'prompt' and 'response'") in line
    assert not (tmp_path / "run").exists()  # no config.yaml, no random-init checkpoint


@pytest.mark.parametrize("case", ["truncated parquet", "JSON saved as .parquet", "truncated validation file"])
def test_unreadable_parquet_is_one_line_naming_the_file(tmp_path, chatlm_dir, capsys, case):
    good = make_parquet(tmp_path / "good.parquet", 200, median_chars=10)
    bad = tmp_path / "bad.parquet"
    if case == "JSON saved as .parquet":
        bad.write_text('{"prompt": "问题", "response": "回答"}\n', encoding="utf-8")
    else:
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    files = [f"data.train_files=[{bad}]"] if case != "truncated validation file" else \
        [f"data.train_files=[{good}]", f"data.valid_files=[{bad}]"]
    assert _train(tmp_path, *files, f"tokenizer.path={chatlm_dir}") == 2
    line = _one_line(capsys.readouterr().err)
    assert f"{bad}: not a readable parquet file" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_missing_tokenizer_names_the_path_and_how_to_get_one(tmp_path, capsys, where):
    data = make_parquet(tmp_path / "train.parquet", 20, median_chars=10)
    path = tmp_path / "no-tokenizer-here"
    assert _train(tmp_path, f"data.train_files=[{data}]", f"tokenizer.path={path if where == 'missing' else ''}") == 2
    line = _one_line(capsys.readouterr().err)
    assert "chat-pretrain tokenizer train" in line and "tokenizer.path" in line
    if where == "missing":
        assert f"tokenizer.path={path}: no tokenizer.json there" in line
    assert not (tmp_path / "run").exists()


def test_hub_model_name_is_one_line_saying_what_to_do(tmp_path, chatlm_dir, capsys):
    data = make_parquet(tmp_path / "train.parquet", 20, median_chars=10)
    assert _train(tmp_path, f"data.train_files=[{data}]", f"tokenizer.path={chatlm_dir}",
                  "model.name=google-t5/t5-small") == 2
    line = _one_line(capsys.readouterr().err)
    assert "model 'google-t5/t5-small' is not in the local Hugging Face cache" in line
    assert "HF_HUB_OFFLINE=1" in line and "pass a local directory (model.name=PATH)" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("where", ["a file", "under a file", "read-only"])
def test_unusable_run_dir_is_one_line_and_writes_nothing(tmp_path, chatlm_dir, capsys, where, request):
    data = make_parquet(tmp_path / "train.parquet", 20, median_chars=10)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    run_dir = {"a file": blocker, "under a file": blocker / "run"}.get(where)
    if where == "read-only":
        run_dir = request.getfixturevalue("read_only_dir") / "run"
    assert main(["train", "--profile", "cpu-tiny", f"data.train_files=[{data}]", f"tokenizer.path={chatlm_dir}",
                 f"run_dir={run_dir}"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"run_dir={run_dir}" in line
    assert ("a file is in the way" if where != "read-only" else "cannot write there") in line
    assert blocker.read_text() == "mine"


@pytest.mark.parametrize("flag", ["--resume", "--is_keep_training=True"])
def test_resume_on_a_missing_dir_is_an_error_not_a_fresh_start(tmp_path, chatlm_dir, capsys, flag):
    data = make_parquet(tmp_path / "train.parquet", 20, median_chars=10)
    assert _train(tmp_path, f"data.train_files=[{data}]", f"tokenizer.path={chatlm_dir}", flag) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"--resume: no checkpoint in {tmp_path / 'run' / 'checkpoints'}" in line
    assert not (tmp_path / "run").exists()


def test_double_ctrl_c_exits_130_in_one_line(tmp_path, chatlm_dir, capsys, monkeypatch):
    import os

    import chat_pretrain.train as train_mod

    real = train_mod.make_loss_fn

    def ctrl_c_twice_at_the_second_micro_batch():
        fn, calls = real(), [0]

        def loss_fn(model, batch):
            calls[0] += 1
            if calls[0] == 2:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
            return fn(model, batch)

        return loss_fn

    monkeypatch.setattr(train_mod, "make_loss_fn", ctrl_c_twice_at_the_second_micro_batch)
    data = make_parquet(tmp_path / "train.parquet", 64, median_chars=10)
    try:
        rc = _train(tmp_path, f"data.train_files=[{data}]", f"tokenizer.path={chatlm_dir}", "data.max_batch_rows=8")
    except KeyboardInterrupt:  # escaping would end the whole pytest session, not fail this test
        pytest.fail("KeyboardInterrupt escaped chat-pretrain's main")
    assert rc == 130
    err = [x for x in capsys.readouterr().err.strip().splitlines() if not x.startswith("train:")]  # tqdm
    assert len(err) == 1 and err[0].startswith("chat-pretrain: interrupted twice: stopped without saving"), err
    assert not list((tmp_path / "run" / "checkpoints").glob("step-*"))
