"""The fast path learns what the eager path learns: same weights, same batches, same losses.

On CPU the fast path is forced with speed.compile=true and the aot_eager backend (traced, no code
generation: seconds). It exercises what the GPU's captured step runs: batches padded to length
buckets and filled to speed.batch_size rows, the head over every row with padding masked, the chunk
math compiled, and core's TrainStep. The GPU bench (`mt-nllb bench --only fast-vs-eager`) repeats the
comparison with CUDA graphs on the full-size model.
"""

import json

import pytest
from mt_nllb.cli import main

STEPS = 4
COMMON = ["--profile", "cpu-debug", "--no-progress", "speed.batch_size=8", f"max_steps={STEPS}", "log_every_steps=1",
          "eval_every_steps=0", "save_every_steps=0", "data.test="]


def _losses(run_dir):
    return [r["loss"] for r in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if "loss" in r]


def test_fast_path_losses_equal_the_eager_path(tmp_path, capsys):
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    assert main(["train", "--run-dir", str(tmp_path / "eager"), *COMMON, cache]) == 0
    eager_out = capsys.readouterr().out
    assert main(["train", "--run-dir", str(tmp_path / "fast"), *COMMON, cache, "speed.compile=true",
                 "speed.compile_backend=aot_eager"]) == 0
    fast_out = "".join(capsys.readouterr())  # the recompile warning goes to the log (stderr)
    assert "speed: compile off, CUDA graphs off (CPU)" in eager_out
    assert "real tokens only, chunk math eager" in eager_out
    assert "speed: compile on, CUDA graphs off, length buckets 16,32,48,64 (CPU)" in fast_out
    assert "every row, padding masked (fixed shapes), chunk math compiled" in fast_out
    assert "recompiled" not in fast_out
    eager, fast = _losses(tmp_path / "eager"), _losses(tmp_path / "fast")
    assert len(eager) == len(fast) == STEPS
    assert fast == pytest.approx(eager, abs=1e-5)
    assert eager[-1] < eager[0]  # it learns at all


@pytest.mark.parametrize("symbolic", ["true", "false"])
def test_compiled_layers_learn_what_eager_layers_learn(tmp_path, capsys, symbolic):
    """speed.compile_layers compiles each encoder and decoder layer (dynamic lengths; with
    speed.symbolic_widths=false only the sizes that change); traced with aot_eager on CPU, the logged
    losses equal the eager run's."""
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    assert main(["train", "--run-dir", str(tmp_path / "eager"), *COMMON, cache]) == 0
    capsys.readouterr()
    assert main(["train", "--run-dir", str(tmp_path / "layers"), *COMMON, cache, "speed.compile_layers=true",
                 "speed.compile_backend=aot_eager", f"speed.symbolic_widths={symbolic}"]) == 0
    out = "".join(capsys.readouterr())
    assert "chunk math eager, layers compiled" in out
    assert _losses(tmp_path / "layers") == pytest.approx(_losses(tmp_path / "eager"), abs=1e-5)


def test_batches_grouped_by_each_side_learn_alike_on_both_paths(tmp_path, capsys):
    """speed.group_by=each_side: the eager and the fast path cut the same batches (grouped by both
    sides' length buckets) and log the same losses."""
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    group = "speed.group_by=each_side"
    assert main(["train", "--run-dir", str(tmp_path / "eager"), *COMMON, cache, group]) == 0
    assert main(["train", "--run-dir", str(tmp_path / "fast"), *COMMON, cache, group, "speed.compile=true",
                 "speed.compile_backend=aot_eager"]) == 0
    capsys.readouterr()
    assert _losses(tmp_path / "fast") == pytest.approx(_losses(tmp_path / "eager"), abs=1e-5)
    off = tmp_path / "off"
    assert main(["train", "--run-dir", str(off), *COMMON, cache, group, "speed.length_buckets=off"]) == 2
    assert "'speed.group_by': each_side groups rows by speed.length_buckets, which is off" in capsys.readouterr().err
    assert not off.exists()  # refused before anything is written


def test_gathered_head_rows_learn_what_the_eager_path_learns(tmp_path, capsys):
    """speed.head_row_multiple: the fast path's head runs over the real target tokens the collate
    gathered (padded to a multiple of 8 rows with ignored ones) instead of every position; the logged
    losses equal the eager run's."""
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    assert main(["train", "--run-dir", str(tmp_path / "eager"), *COMMON, cache, "speed.head_row_multiple=8"]) == 0
    assert "real tokens only, chunk math eager" in capsys.readouterr().out  # eager: no gather, real rows
    assert main(["train", "--run-dir", str(tmp_path / "fast"), *COMMON, cache, "speed.head_row_multiple=8",
                 "speed.compile=true", "speed.compile_backend=aot_eager"]) == 0
    assert "real tokens gathered, padded to a multiple of 8 rows (fixed shapes)" in "".join(capsys.readouterr())
    assert _losses(tmp_path / "fast") == pytest.approx(_losses(tmp_path / "eager"), abs=1e-5)
