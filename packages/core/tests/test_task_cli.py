"""The shared command-line grammar, on a toy task package: verbs, --profile/--resume/--help-config,
profiles list/show/validate/pick, quiet aliases, and exit codes with one-line errors."""

from dataclasses import dataclass, field

import pytest
from trainstack.config import ConfigError
from trainstack.hardware import GPUInfo, Hardware
from trainstack.task_cli import TaskCLI


@dataclass
class OptimConfig:
    lr: float = 1e-3
    """Peak learning rate."""


@dataclass
class ToyConfig:
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 10
    """Optimizer steps to run."""
    data: str = ""


class ToyDataError(ValueError):
    pass


PROFILES = {
    "cpu.yaml": "description: CPU, a few steps\nrequires:\n  gpu_count: 0\n  min_ram_gib: 1\nsettings:\n  steps: 3\n",
    "big-gpu.yaml": "description: one 40 GB GPU\nrequires:\n  gpu_count: 1\n  min_gpu_memory_gib: 38\n"
                    "settings:\n  steps: 1000\n  optim: {lr: 3.0e-4}\n",
    "broken.yaml": "requires: {}\nsettings:\n  stepz: 3\n",
}


@pytest.fixture
def toy(tmp_path):
    directory = tmp_path / "profiles"
    directory.mkdir()
    for name, text in PROFILES.items():
        (directory / name).write_text(text)
    seen = {}

    def train(args, overrides):
        cfg, profile = cli.load_config(args.profile, overrides)
        seen.update(cfg=cfg, profile=profile.name, resume=args.resume)
        if cfg.data == "missing":
            raise ToyDataError("data=missing: no such file; pass data=PATH")
        if cfg.data == "crash":
            raise RuntimeError("a bug in the run")
        if cfg.data == "ctrl-c":
            raise KeyboardInterrupt
        if cfg.data == "no-gpu":
            raise SystemExit("toy needs a CUDA GPU")
        return 130 if cfg.data == "stopped" else 0

    def evaluate(args, overrides):
        seen.update(eval=(args.checkpoint, args.data))

    cli = TaskCLI("toy", version="1.2.3", description="toy: a task package for tests", profile_dir=lambda: directory,
                  config_class=ToyConfig, default_profile="auto", usage_errors=(ToyDataError,),
                  command_aliases={"evaluate": "eval", "configs": "profiles"},
                  flag_aliases={"--config": "--profile", "--test": "--data"})
    cli.add_train(train, help="train the toy")
    ev = cli.add_command("eval", evaluate, help="score a checkpoint")
    ev.add_argument("checkpoint")
    ev.add_argument("--data")
    return cli, seen, directory


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_version_and_help_at_every_level(toy, capsys):
    cli, _, _ = toy
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("toy 1.2.3 (trainstack-core ")
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "    train " in out and "    eval " in out and "    profiles " in out
    assert "evaluate " not in out and "configs" not in out  # the old spellings work but stay quiet
    for argv in (["train", "-h"], ["eval", "--help"], ["profiles", "-h"]):
        assert cli.main(argv) == 0, argv
        assert "usage: toy" in capsys.readouterr().out
    assert cli.main([]) == 2  # no command: the help, as an error


def test_help_config_lists_every_key_with_default_and_doc(toy, capsys):
    cli, _, _ = toy
    assert cli.main(["train", "--help-config"]) == 0
    out = capsys.readouterr().out
    assert "optim.lr = 0.001  (float)\n    Peak learning rate." in out
    assert "steps = 10  (int)\n    Optimizer steps to run." in out
    assert "data = ''  (str)" in out


def test_train_profile_overrides_and_resume(toy, monkeypatch):
    cli, seen, directory = toy
    assert cli.main(["train", "--profile", "cpu", "optim.lr=0.5"]) == 0
    assert seen["cfg"].steps == 3 and seen["cfg"].optim.lr == 0.5 and seen["resume"] is None
    assert cli.main(["train", "--config=big-gpu", "--resume"]) == 0  # old flag spelling, quietly
    assert seen["profile"] == "big-gpu" and seen["resume"] == "auto"
    assert cli.main(["train", "--profile", str(directory / "cpu.yaml"), "--resume", "latest"]) == 0
    assert seen["resume"] == "auto"
    assert cli.main(["train", "--profile", "cpu", "--resume", "runs/x/checkpoints/step-4"]) == 0
    assert seen["resume"] == "runs/x/checkpoints/step-4"
    # auto: the profile this machine fits
    from trainstack import hardware

    monkeypatch.setattr(hardware, "detect_hardware", lambda: Hardware((GPUInfo("Big", (8, 0), 39.4),), 8, 64.0))
    assert cli.main(["train"]) == 0 and seen["profile"] == "big-gpu"


def test_auto_refuses_the_cpu_on_a_gpu_that_fits_no_profile(toy, monkeypatch, capsys):
    cli, seen, _ = toy
    from trainstack import hardware

    monkeypatch.setattr(hardware, "detect_hardware", lambda: Hardware((GPUInfo("Small", (7, 5), 7.8),), 8, 32.0))
    seen.clear()
    assert cli.main(["train"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("toy: error: no GPU profile fits this machine's Small")
    assert "closest: big-gpu (GPU 0 has 7.8 GiB, needs 38 GiB)" in err and "--profile cpu" in err
    assert "cfg" not in seen
    assert cli.main(["train", "--profile", "cpu"]) == 0 and seen["profile"] == "cpu"  # asked for: fine


@pytest.mark.parametrize(("argv", "expected"), [
    (["train", "--profile", "cpu", "optim.lrr=1"], "toy: error: unknown key 'optim.lrr' (did you mean 'optim.lr'?)"),
    (["train", "--profile", "cpu", "data=missing"], "toy: error: data=missing: no such file; pass data=PATH"),
    (["train", "--profile", "nope"], "toy: error: unknown profile 'nope'; shipped: big-gpu, broken, cpu"),
    (["train", "--profile", "cpu", "--bogus"], "toy: error: unrecognized arguments: --bogus"),
    (["fly"], "toy: error: argument COMMAND: invalid choice: 'fly'"),
])
def test_bad_usage_is_one_line_and_exit_2(toy, capsys, argv, expected):
    cli, _, _ = toy
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert _one_line(captured.err).startswith(expected)
    assert "Traceback" not in captured.err


def test_interrupted_is_130_and_a_crash_is_not_hidden(toy, capsys):
    cli, _, _ = toy
    assert cli.main(["train", "--profile", "cpu", "data=stopped"]) == 130
    assert cli.main(["train", "--profile", "cpu", "data=ctrl-c"]) == 130
    assert "toy: interrupted" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="a bug in the run"):  # a run's failure: traceback, exit 1
        cli.main(["train", "--profile", "cpu", "data=crash"])


def test_a_handlers_exit_with_a_message_keeps_the_message(toy, capsys):
    cli, _, _ = toy
    assert cli.main(["train", "--profile", "cpu", "data=no-gpu"]) == 2
    assert _one_line(capsys.readouterr().err) == "toy: error: toy needs a CUDA GPU"


def test_command_and_flag_aliases(toy):
    cli, seen, _ = toy
    assert cli.main(["evaluate", "ckpt", "--test", "t.tsv"]) == 0
    assert seen["eval"] == ("ckpt", "t.tsv")


def test_profiles_list_show_validate_pick(toy, capsys, tmp_path):
    cli, seen, _ = toy
    assert cli.main(["profiles"]) == 0 and cli.main(["configs", "list"]) == 0
    out = capsys.readouterr().out
    assert "cpu              CPU" in out and "big-gpu          1 GPU >= 38 GiB" in out
    assert "not here: needs 1 GPU(s), found 0" in out or "fits here" in out
    assert cli.main(["profiles", "list", "--simulate", "a100-40g"]) == 0
    assert "one 40 GB GPU  [fits here]" in capsys.readouterr().out
    assert cli.main(["profiles", "pick", "--simulate", "a100-40g"]) == 0
    assert capsys.readouterr().out.strip() == "big-gpu"
    assert cli.main(["profiles", "pick", "--simulate", "rtx2080s-8g"]) == 2
    assert "closest: big-gpu" in _one_line(capsys.readouterr().err)

    # show prints YAML to edit and pass back with --profile PATH
    assert cli.main(["profiles", "show", "big-gpu"]) == 0
    mine = tmp_path / "mine.yaml"
    mine.write_text(capsys.readouterr().out.replace("steps: 1000", "steps: 7"))
    assert cli.main(["train", "--profile", str(mine)]) == 0
    assert seen["profile"] == "mine" and seen["cfg"].steps == 7 and seen["cfg"].optim.lr == 3e-4
    assert cli.main(["profiles", "show"]) == 2
    assert "name a profile" in _one_line(capsys.readouterr().err)

    assert cli.main(["profiles", "validate", "cpu", "big-gpu", str(mine)]) == 0
    assert cli.main(["profiles", "validate"]) == 2  # broken.yaml has an unknown key
    out = capsys.readouterr().out
    assert "FAIL broken" in out and "unknown key 'stepz' (did you mean 'steps'?)" in out and "OK   cpu" in out


def test_validate_profile_hook(toy, capsys):
    cli, _, _ = toy
    cli.validate_profile = lambda p: ([] if p.name != "big-gpu" else ["too big"], [f"checked {p.name}"])
    assert cli.main(["profiles", "validate", "cpu"]) == 0
    assert cli.main(["profiles", "validate", "big-gpu"]) == 2
    out = capsys.readouterr().out
    assert "checked cpu" in out and "FAIL big-gpu" in out and "error: too big" in out


def test_default_command_and_raw_commands(tmp_path, capsys):
    got = {}
    cli = TaskCLI("raw", version="0.1", default_command="train")
    cli.add_command("train", lambda argv: got.update(argv=argv), help="train", raw=True)
    assert cli.main(["--model_name_or_path", "x", "--fp16"]) == 0
    assert got["argv"] == ["--model_name_or_path", "x", "--fp16"]
    assert cli.main(["--version"]) == 0 and "raw 0.1" in capsys.readouterr().out

    def bad(argv):
        raise ConfigError("--source_lang is required")

    cli = TaskCLI("raw", version="0.1", default_command="train")
    cli.add_command("train", bad, help="train", raw=True)
    assert cli.main(["--x"]) == 2
    assert _one_line(capsys.readouterr().err) == "raw: error: --source_lang is required"


@pytest.mark.parametrize("outcome", ["returns", "raises"])
def test_a_command_ends_the_process_group_its_run_made(tmp_path, outcome):
    """A run's process group is destroyed when the command returns, whatever the outcome, so the
    interpreter's exit does not tear gloo down under a finished rank."""
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")

    def run(argv):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
        assert dist.is_initialized()
        if outcome == "raises":
            raise ConfigError("bad key")

    cli = TaskCLI("ranks", version="0.1")
    cli.add_command("train", run, help="train", raw=True)
    assert cli.main(["train"]) == (0 if outcome == "returns" else 2)
    assert not dist.is_initialized()
