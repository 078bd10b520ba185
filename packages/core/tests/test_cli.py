import json
import os
import subprocess
import sys

import pytest
from trainstack.cli import main

FAKE_PROFILES = {
    "cpu.yaml": "description: CPU, tiny batch\nrequires:\n  min_ram_gib: 1\nsettings:\n  batch: 2\n",
    "rtx2080s-8g.yaml": 'requires:\n  gpu_count: 1\n  min_gpu_memory_gib: 7.5\n  min_compute_capability: "7.5"\nsettings: {}\n',
    "h100-80g.yaml": 'requires:\n  gpu_count: 1\n  min_gpu_memory_gib: 79\n  min_compute_capability: "9.0"\nsettings: {}\n',
}


@pytest.fixture
def fake_site(tmp_path):
    """A site dir holding two task packages registered under `trainstack.tasks`: one good, one broken,
    and one whose profiles need a GPU."""
    site = tmp_path / "site"
    for pkg, profiles in [("faketask", FAKE_PROFILES), ("gpuonly", {"h100-80g.yaml": FAKE_PROFILES["h100-80g.yaml"]})]:
        (site / pkg / "profiles").mkdir(parents=True)
        (site / pkg / "__init__.py").write_text("")
        (site / pkg / "profiles" / "__init__.py").write_text(
            "from pathlib import Path\n\ndef profile_dir():\n    return Path(__file__).parent\n")
        for name, text in profiles.items():
            (site / pkg / "profiles" / name).write_text(text)
    entry_points = {
        "faketask": "faketask = faketask.profiles:profile_dir\nbrokentask = faketask.missing:profile_dir\n",
        "gpuonly": "gpuonly = gpuonly.profiles:profile_dir\n",
    }
    for dist, eps in entry_points.items():
        info = site / f"{dist}-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
        (info / "entry_points.txt").write_text(f"[trainstack.tasks]\n{eps}")
    return site


def _run(args, site=None):
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    env.pop("TRAINSTACK_PRECISION", None)
    return subprocess.run([sys.executable, "-m", "trainstack", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_help():
    r = _run(["--help"])
    assert r.returncode == 0 and "doctor" in r.stdout and "report" in r.stdout


def test_doctor_simulated_turing_with_task_packages(fake_site):
    r = _run(["doctor", "--simulate", "rtx2080s-8g"], site=fake_site)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "RTX 2080 SUPER (sm_75" in out
    assert "precision: fp16 autocast + GradScaler" in out and "no bf16" in out
    assert "faketask (faketask 0.1.0): profile rtx2080s-8g" in out
    assert "brokentask (faketask 0.1.0): cannot load profiles: ModuleNotFoundError" in out
    assert "gpuonly (gpuonly 0.1.0): no profile fits" in out
    assert "h100-80g: GPU 0 has 7.8 GiB, needs 79 GiB" in out


def test_doctor_on_this_machine(fake_site):
    r = _run(["doctor"], site=fake_site)
    assert r.returncode == 0, r.stderr
    assert "hardware:" in r.stdout and "precision:" in r.stdout
    if "no GPU" in r.stdout:
        assert "precision: fp32 on CPU" in r.stdout
        assert "faketask (faketask 0.1.0): profile cpu - CPU, tiny batch" in r.stdout


def _write_log(run_dir, steps=20):
    rows = []
    for s in range(1, steps + 1):
        rows.append({"step": s, "epoch": 0, "loss": 5.0 / s, "lr": 1e-3 * min(1, s / 5), "grad_norm": 1.0,
                     "tokens_per_s": 1000.0 + s, "samples_per_s": 10.0, "mfu": None,
                     "memory": {"rss_gib": 1.0 + s / 100, "gpu_peak_gib": 0.0}})
        if s % 10 == 0:
            rows.append({"step": s, "eval_loss": 4.0 / s, "eval_bleu": 10.0 + s})
    with open(run_dir / "log.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.write('{"step": 21, "loss": 0.2')  # a partial last line, as a killed run leaves


def test_report_writes_pngs_and_markdown(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    _write_log(run)
    (run / "config.yaml").write_text("optim:\n  lr: 0.001\n")
    assert main(["report", str(run)]) == 0
    for name in ("loss.png", "lr.png", "tokens_per_s.png", "memory.png"):
        data = (run / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    md = (run / "report.md").read_text()
    assert "- steps: 1 to 20" in md and "loss: first 5, last 0.25, min 0.25" in md
    assert "- eval_bleu: 30" in md and "- eval_loss: 0.2" in md
    assert "- tokens/s: median 1,011 (first interval left out)" in md  # median of 1002..1020
    assert "- rss_gib: max 1.20" in md and "![loss](loss.png)" in md
    captured = capsys.readouterr()
    assert "log.jsonl:23: not JSON, skipped" in captured.err


def test_report_missing_log_and_out_dir(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no log at" in capsys.readouterr().err
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text(json.dumps({"step": 1, "eval_acc": 0.5}) + "\n")
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    assert "No data for: loss.png, lr.png, tokens_per_s.png, memory.png" in md and "eval_acc: 0.5" in md


def test_report_draws_each_step_once_after_a_resume(tmp_path):
    """A run killed after logging steps 4-6 resumed from its step-3 checkpoint and logged 4-6 again."""
    from trainstack.report import _series, read_log, write_report

    run = tmp_path / "run"
    run.mkdir()
    first = [{"step": s, "loss": 10.0 - s} for s in range(1, 7)]
    again = [{"step": s, "loss": 20.0 - s} for s in range(4, 9)]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in first + again))
    xs, ys = _series(read_log(run / "log.jsonl"), "loss")
    assert xs == list(range(1, 9)) and ys == [9.0, 8.0, 7.0, 16.0, 15.0, 14.0, 13.0, 12.0]
    md = write_report(run).read_text()
    assert "3 training rows repeat an earlier step" in md and "loss: first 9, last 12" in md


def test_doctor_reports_an_impossible_precision(capsys, monkeypatch):
    monkeypatch.delenv("TRAINSTACK_PRECISION", raising=False)
    assert main(["doctor", "--simulate", "rtx2080s-8g", "--precision", "bf16"]) == 0
    assert "precision: error: bf16 asked for but NVIDIA GeForce RTX 2080 SUPER, sm_75 has no bf16" in capsys.readouterr().out
    assert main(["doctor", "--simulate", "h100-80g"]) == 0
    assert "precision: bf16 autocast: auto, NVIDIA H100 80GB HBM3, sm_90 supports bf16 | TF32 on" in capsys.readouterr().out


class _FakeEntryPoint:
    def __init__(self, name, directory):
        self.name, self.dist, self._dir = name, None, directory

    def load(self):
        return lambda: self._dir


def test_doctor_exits_1_when_the_picked_profile_needs_a_missing_package(tmp_path, monkeypatch, capsys):
    from trainstack import doctor

    (tmp_path / "cpu.yaml").write_text("requires:\n  packages: [yaml]\nsettings: {}\n")
    (tmp_path / "rtx4080s-16g.yaml").write_text(
        "requires:\n  gpu_count: 1\n  min_gpu_memory_gib: 15\n  packages: [yaml, no_such_module_for_doctor]\n"
        "settings: {}\n")
    monkeypatch.setattr(doctor, "task_entry_points", lambda: [_FakeEntryPoint("faketask", tmp_path)])
    assert main(["doctor", "--simulate", "rtx4080s-16g"]) == 1
    out = capsys.readouterr().out
    assert "faketask: profile rtx4080s-16g" in out and "MISSING no_such_module_for_doctor" in out
    assert "problem: faketask profile rtx4080s-16g needs no_such_module_for_doctor: pip install" in out
    assert "MISSING yaml" not in out
    # the CPU profile is the one picked without a GPU: it has what it needs
    assert main(["doctor", "--simulate", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "faketask: profile cpu" in out and "MISSING" not in out and "problem:" not in out


def test_doctor_reports_optional_packages_hub_and_disk(tmp_path, monkeypatch, capsys):
    from trainstack import doctor

    monkeypatch.setattr(doctor, "task_entry_points", lambda: [])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    (tmp_path / "hf" / "hub" / "models--org--name").mkdir(parents=True)
    assert main(["doctor", "--simulate", "cpu"]) == 0
    out = capsys.readouterr().out
    for module in ("tensorboard", "bitsandbytes", "flash_attn", "liger_kernel", "deepspeed", "datasets"):
        assert f"\n  {module} " in out, module
    assert "hub: offline (HF_HUB_OFFLINE=1" in out
    assert f"hub cache: {tmp_path / 'hf' / 'hub'}: 1 model(s), 0 dataset(s)" in out
    assert "GiB free in the working directory" in out


def test_trainstack_profiles_and_usage_errors(tmp_path, monkeypatch, capsys):
    from trainstack import doctor

    (tmp_path / "cpu.yaml").write_text("description: tiny\nrequires: {}\nsettings: {}\n")
    monkeypatch.setattr(doctor, "task_entry_points", lambda: [_FakeEntryPoint("faketask", tmp_path)])
    assert main(["profiles"]) == 0
    assert "faketask:\n  cpu" in capsys.readouterr().out
    monkeypatch.setattr(doctor, "task_entry_points", lambda: [])
    assert main(["profiles"]) == 0
    assert "no task packages installed" in capsys.readouterr().out
    assert main(["doctor", "--simulate", "tpu-v9"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "invalid choice: 'tpu-v9'" in err
    assert main([]) == 2


def test_report_without_matplotlib_names_the_extra_and_writes_nothing(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    _write_log(run)
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails as if not installed
    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["trainstack: error: trainstack report needs matplotlib, which is not installed: "
                   "pip install 'trainstack-core[report]'"]
    assert not (tmp_path / "out").exists()


def test_report_overlays_several_runs_one_line_each_with_eval_plots(tmp_path, capsys):
    from trainstack.report import draw, load_runs, plan_plots

    runs = []
    for name in ("lr-1e-3", "lr-3e-3"):
        run = tmp_path / name
        run.mkdir()
        _write_log(run)
        runs.append(run)
    out = tmp_path / "compare"
    assert main(["report", *map(str, runs)]) == 2  # several runs: where the report goes must be said
    assert "pass --out DIR" in capsys.readouterr().err
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    summary = json.loads((out / "report.json").read_text())
    assert [r["name"] for r in summary["runs"]] == ["lr-1e-3", "lr-3e-3"]
    for plot in ("lr.png", "tokens_per_s.png", "eval_bleu.png"):
        series = summary["plots"][plot]["series"]
        assert [(s["run"], s["label"]) for s in series] == [("lr-1e-3", "lr-1e-3"), ("lr-3e-3", "lr-3e-3")], plot
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
    assert [s["points"] for s in summary["plots"]["eval_bleu.png"]["series"]] == [2, 2]
    assert summary["plots"]["eval_bleu.png"]["series"][0]["last"] == 30.0
    labels = [s["label"] for s in summary["plots"]["loss.png"]["series"]]
    assert labels == ["lr-1e-3: train loss", "lr-1e-3: eval loss", "lr-3e-3: train loss", "lr-3e-3: eval loss"]
    # CPU logs: GPU memory is 0.0 and left out; what is drawn says it is the host's RSS
    assert [s["label"] for s in summary["plots"]["memory.png"]["series"]] == ["lr-1e-3: host RSS", "lr-3e-3: host RSS"]
    md = (out / "report.md").read_text()
    assert "# Runs compared: lr-1e-3, lr-3e-3" in md and "## lr-3e-3" in md and "![eval_bleu](eval_bleu.png)" in md

    # The figures themselves: one line per run, a legend naming the runs, ticks without offsets
    plots = plan_plots(load_runs(runs))
    fig = draw(plots["eval_bleu.png"], {"lr-1e-3": "C0", "lr-3e-3": "C1"})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["lr-1e-3", "lr-3e-3"]
    fig.canvas.draw()
    assert all(t.get_text().isdigit() for t in ax.get_xticklabels() if t.get_text())
    assert plots["loss.png"].logy and not plots["lr.png"].logy  # loss falls 5 -> 0.25: a log axis


def test_report_tells_apart_runs_of_the_same_name(tmp_path):
    from trainstack.report import load_runs

    for parent in ("a", "b"):
        (tmp_path / parent / "seed-1").mkdir(parents=True)
        (tmp_path / parent / "seed-1" / "log.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    runs = load_runs([tmp_path / "a" / "seed-1", tmp_path / "b" / "seed-1"])
    assert [r.name for r in runs] == ["a/seed-1", "b/seed-1"]
