"""hlbd's log speaks core's language: the same field names as core's fit, TensorBoard beside it,
and `trainstack report` compares two real runs, eval metrics included."""

import json

import pytest
from hlbd.cli import main
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from trainstack.cli import main as trainstack_main

CORE_TRAINING_FIELDS = ("step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "samples_per_s", "mfu",
                        "rss_gib", "gpu_allocated_gib", "gpu_reserved_gib", "gpu_peak_gib")


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_two_hlbd_runs_log_core_fields_and_trainstack_report_compares_them(tmp_path, tiny, capsys):
    runs = []
    for lr in ("1e-3", "3e-3"):
        run = tmp_path / f"lr-{lr}"
        # 100% exact match is out of reach in 3 epochs: the check runs after every epoch, the run goes on
        # to the end and exits 1 ("did not learn", as documented)
        assert main(["train", "--no-progress", *tiny("epochs=3", "stop_at_exact_match=1.0", "eval_every_epochs=1",
                                                    f"optim.lr={lr}", f"run_dir={run}")]) == 1
        runs.append(run)
    capsys.readouterr()

    rows = _records(runs[0])
    train, final = rows[:-1], rows[-1]
    assert [r["epoch"] for r in train] == [1, 2, 3]
    for record in train:
        assert set(CORE_TRAINING_FIELDS) <= record.keys(), record
        assert record["tokens_per_s"] > 0 and record["samples_per_s"] > 0 and record["grad_norm"] > 0
        assert 0 <= record["eval_exact_match_tf"] < 1  # hlbd's own: teacher-forced exact match, every epoch
    assert final.keys() == {"step", "epoch", "eval_exact_match", "eval_chrf"} and final["step"] == train[-1]["step"]

    # TensorBoard holds the same numbers under the same names, as core's fit writes them
    events = EventAccumulator(str(runs[0] / "tb"))
    events.Reload()
    assert {"loss", "tokens_per_s", "grad_norm", "eval_exact_match_tf", "eval_chrf"} <= set(events.Tags()["scalars"])
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in train]

    out = tmp_path / "compare"
    assert trainstack_main(["report", *map(str, runs), "--out", str(out)]) == 0
    summary = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in summary["runs"]] == ["lr-1e-3", "lr-3e-3"]
    for plot in ("loss.png", "eval_exact_match_tf.png", "eval_chrf.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG", plot
        assert [s["run"] for s in summary["plots"][plot]["series"]] == ["lr-1e-3", "lr-3e-3"], plot
    series = summary["plots"]["eval_exact_match_tf.png"]["series"]
    assert [s["points"] for s in series] == [3, 3] and [s["label"] for s in series] == ["lr-1e-3", "lr-3e-3"]
    assert [s["last"] for s in series] == [_records(run)[-2]["eval_exact_match_tf"] for run in runs]
    assert "# Runs compared: lr-1e-3, lr-3e-3" in (out / "report.md").read_text()

