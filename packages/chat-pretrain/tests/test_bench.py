"""`chat-pretrain bench` on CPU: every arm runs through the real entry point, each in its own process, and
one run reports comparable figures, the ratios and the fast-vs-eager losses."""

import dataclasses
import json

import pytest
from chat_pretrain.cli import main
from chat_pretrain.synth import make_parquet

# The fast path forced on the CPU: compiled (traced, no code generation), once per shape. Shape-
# specialised graphs take ~6 s each to trace on 2 cores; the one graph for every shape (the shipped
# speed.compile_dynamic=true) ~40 s, and the ours and fast-vs-eager arms each trace it in a process of
# their own. The dynamic graph is checked through `train` (test_fast_path.py: one compilation, no
# recompiles, over several shapes, also under DDP); here a compilation per new shape also checks that
# warm-up covers every compilation and the timed steps see none. The warm-up's rule for a new shape
# that compiles nothing (the dynamic graph on CPU) is checked directly below.
FAST_ON_CPU = ["speed.compile=true", "speed.compile_backend=aot_eager", "speed.compile_dynamic=false",
               "speed.length_buckets=16,32"]


def test_bench_runs_every_arm_in_one_run(tmp_path, chatlm_dir, capsys):
    data = make_parquet(tmp_path / "b.parquet", 400, median_chars=8, row_group_rows=100)
    out = tmp_path / "res" / "bench.json"
    argv = ["bench", "--tokenizer", str(chatlm_dir), "--data", str(data), "--profile", "cpu-tiny",
            "--users-profile", "cpu-tiny", "--steps", "2", "--warmup", "1", "--max-warmup", "3", "--compare-steps", "3",
            "--json-out", str(out), "grad_accum_steps=2", "data.max_batch_rows=8", "data.batch_size=4", *FAST_ON_CPU]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads(out.read_text())
    results = {r["name"]: r for r in summary["results"]}
    assert list(results) == ["users-eager", "users-sdpa", "ours", "ours-eager"] and not summary["errors"]
    for r in results.values():
        assert r["steps"] == 2 and r["real_tokens"] > 0 and r["tokens_per_s"] > 0
        assert r["extra"]["peak_host_rss_gib"] > 0 and r["extra"]["grad_accum"] == 2
        assert (out.parent / f"bench-{r['name']}.json").is_file()  # each arm's own file beside it
    assert results["users-eager"]["extra"]["attn"] == "eager" and results["users-sdpa"]["extra"]["attn"] == "sdpa"
    # Users: fixed 4-row micro-batches; ours: a token budget of 4 x 32 per side, at most 8 rows.
    assert results["users-eager"]["samples"] == 2 * 2 * 4
    assert results["ours"]["samples"] >= results["users-eager"]["samples"]
    ours, eager = results["ours"], results["ours-eager"]
    assert ours["extra"]["speed"].startswith("speed: compile on, CUDA graphs off, length buckets 16,32")
    assert eager["extra"]["speed"].startswith("speed: compile off, CUDA graphs off")
    # ours warms up until a step brings no new shape (at least 2 steps here, at most --max-warmup)
    assert eager["extra"]["warmup_steps"] == 1 and 2 <= ours["extra"]["warmup_steps"] <= 3
    assert 1 <= ours["extra"]["shapes"] <= 4  # buckets 16,32 on both sides
    # one compilation per shape, none twice, and none left for the timed steps
    assert ours["extra"]["compiled_graphs"] == ours["extra"]["shapes"] and ours["extra"]["recompiles"] == 0
    assert ours["extra"]["compilations_in_timed_steps"] == 0 and ours["extra"]["new_shapes_in_timed_steps"] >= 0
    assert set(summary["ratios"]) == {"ours_vs_users_eager", "ours_vs_users_sdpa", "ours_vs_ours_eager"}
    assert summary["ratios"]["ours_vs_users_eager"] == pytest.approx(
        ours["tokens_per_s"] / results["users-eager"]["tokens_per_s"])
    assert "CPU figures" in printed and "ours_vs_users_sdpa:" in printed

    cmp = summary["fast_vs_eager"]
    assert cmp["fast"].startswith("speed: compile on") and cmp["eager"].startswith("speed: compile off")
    assert len(cmp["fast_losses"]) == len(cmp["eager_losses"]) == 3
    assert cmp["fast_losses"] == pytest.approx(cmp["eager_losses"], abs=1e-5) and cmp["max_abs_loss_diff"] < 1e-5


def test_bench_arm_names_unknown_and_earlier(tmp_path, chatlm_dir, capsys):
    data = make_parquet(tmp_path / "b.parquet", 20, median_chars=8)
    argv = ["bench", "--tokenizer", str(chatlm_dir), "--data", str(data), "--profile", "cpu-tiny",
            "--users-profile", "cpu-tiny"]
    assert main([*argv, "--arms", "ours,users"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown arm(s) users" in err and "users-eager" in err
    # the earlier spelling of one users' arm still runs it
    out = tmp_path / "users.json"
    assert main([*argv, "--arm", "users", "--users-attn", "eager", "--steps", "1", "--warmup", "1",
                 "--json-out", str(out)]) == 0
    assert json.loads(out.read_text())["name"] == "users-eager"


def test_arm_variants_change_one_part_of_ours(tmp_path):
    """ours-one-micro: the profile's micro-batches of one optimizer step as one (a larger batch per
    kernel, one graph replay per step), the same token budget per step; ours-ddp-graphs: CUDA graphs
    asked for (what differs under DDP); the users' arms as they are."""
    from types import SimpleNamespace

    from chat_pretrain.bench import arm_config

    args = SimpleNamespace(profile="large", users_profile="large", data=str(tmp_path / "d.parquet"),
                           tokenizer=str(tmp_path))
    ours, one = arm_config(args, [], "ours"), arm_config(args, [], "ours-one-micro")
    assert (ours.data.batch_size, ours.grad_accum_steps) == (32, 2) and (one.data.batch_size, one.grad_accum_steps) == (64, 1)
    assert one.data.max_seq_len == ours.data.max_seq_len and one.optim == ours.optim
    users = arm_config(args, [], "users-eager")
    assert (users.data.batch_size, users.grad_accum_steps) == (32, 2)
    # ours-ddp-graphs: ours with the captured step asked for (under DDP: instead of DDP's compiled step)
    ddp_graphs = arm_config(args, [], "ours-ddp-graphs")
    assert ddp_graphs.speed.cuda_graphs is True and ours.speed.cuda_graphs == "auto"
    assert dataclasses.replace(ddp_graphs.speed, cuda_graphs="auto") == ours.speed and ddp_graphs.data == ours.data


def test_warm_up_waits_for_shapes_compilations_and_captures_to_stop():
    """bench's warm-up on the fast path: a step that brings a new shape is not quiet even when it
    compiles nothing (one graph for every shape, no CUDA graphs: the dynamic graph on CPU), nor one
    that compiles or captures; it stops after `min_steps` quiet steps in a row, or at `max_steps`."""
    from types import SimpleNamespace

    from chat_pretrain.bench import _warm_up
    from trainstack.speed.step import StepStats

    def run(events, min_steps, max_steps):
        """events[i]: (new shape, compiled, captured) of step i + 1; returns the steps warm-up ran."""
        stats, calls = StepStats(), []

        def step():
            shape, compiled, captured = events[len(calls)] if len(calls) < len(events) else (False, 0, 0)
            calls.append(1)
            if shape:
                stats.shapes.append(f"shape-{len(stats.shapes)}")
            stats.compiled_graphs += compiled
            stats.captured_graphs += captured

        return _warm_up(step, SimpleNamespace(stats=stats), min_steps, max_steps)

    dynamic = [(True, 1, 0), (True, 0, 0), (True, 0, 0)]  # shapes 2 and 3 compile nothing
    assert run(dynamic, 1, 10) == 4 and run(dynamic, 2, 10) == 5
    assert run(dynamic, 1, 3) == 3  # --max-warmup
    assert run([(True, 1, 0), (False, 1, 0)], 1, 10) == 3  # a compilation without a new shape
    assert run([(True, 1, 0), (False, 0, 1)], 1, 10) == 3  # a capture
    assert run([(True, 1, 0)], 1, 10) == 2
    calls = []
    assert _warm_up(lambda: calls.append(1), None, 2, 10) == 2 == len(calls)  # eager: --warmup steps


def test_memory_cap_needs_cuda_and_reaches_every_arms_process(tmp_path, chatlm_dir, capsys, monkeypatch):
    """--memory-cap-gib (a smaller card on a larger GPU): on a CPU one line, exit 2, nothing run; with a
    GPU each arm's own process gets the cap."""
    import subprocess
    from types import SimpleNamespace

    import chat_pretrain.bench as B

    data = make_parquet(tmp_path / "b.parquet", 20, median_chars=8)
    argv = ["bench", "--tokenizer", str(chatlm_dir), "--data", str(data), "--profile", "cpu-tiny",
            "--users-profile", "cpu-tiny", "--arms", "users-eager,ours", "--json-out", str(tmp_path / "b.json")]
    monkeypatch.setattr(B.torch.cuda, "is_available", lambda: False)
    assert main([*argv, "--memory-cap-gib", "15.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--memory-cap-gib" in err and "CUDA" in err
    assert not (tmp_path / "b.json").exists()

    commands = []
    monkeypatch.setattr(B.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("trainstack.bench.device_banner", lambda: "a GPU")
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: commands.append(cmd) or SimpleNamespace(returncode=1))
    assert main([*argv, "--memory-cap-gib", "15.5"]) == 1  # every (stubbed) arm failed
    assert [c[c.index("--arm") + 1] for c in commands] == ["users-eager", "ours"]
    assert all(c[c.index("--memory-cap-gib") + 1] == "15.5" for c in commands)
