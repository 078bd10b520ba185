import dataclasses

import pytest
from chat_pretrain.cli import cli, main
from chat_pretrain.profiles import profile_dir


def parse_train_args(argv):
    """(config, resume) as `chat-pretrain train ARGV` reads them, through the real parser."""
    _, args, overrides = cli.parse(["train", *argv])
    cfg, _ = cli.load_config(args.profile, overrides, say=lambda *_: None)
    return cfg, args.resume is not None


def test_every_shipped_config_loads_through_the_cli():
    from trainstack.hardware import load_profiles

    names = [p.name for p in load_profiles(profile_dir())]
    assert {"small", "large", "low-ram-12g", "cpu-tiny"} <= set(names)
    for name in names:
        cfg, resume = parse_train_args(["--profile", name])
        assert cfg.data.max_seq_len >= 2 and not resume


def test_large_is_the_users_large_config():
    cfg, _ = parse_train_args(["--config", "large"])
    assert (cfg.data.batch_size, cfg.grad_accum_steps, cfg.data.max_seq_len, cfg.epochs) == (32, 2, 192, 3)
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.save_every_steps, cfg.log_every_steps, cfg.keep_best) == \
        (1e-4, 1024, 5000, 100, 5)
    assert cfg.optim.name == "adamw" and cfg.optim.schedule == "cosine"


def test_overrides_and_the_users_flags():
    cfg, resume = parse_train_args(["--use_large_config=True", "--is_keep_training=True", "--epochs=5",
                                    "--learn_rate=0.0002", "--batch_size_per_gpu=24",
                                    "--gradient_accumulation_steps=4", "--max_seq_len=128", "optim.name=adafactor"])
    assert resume and cfg.epochs == 5 and cfg.optim.lr == 2e-4 and cfg.data.batch_size == 24
    assert cfg.grad_accum_steps == 4 and cfg.data.max_seq_len == 128 and cfg.optim.name == "adafactor"
    cfg, resume = parse_train_args(["--profile", "small", "epochs=5", "optim.lr=2e-4", "--resume"])
    assert resume and cfg.epochs == 5 and cfg.optim.lr == 2e-4
    _, resume = parse_train_args(["--is_keep_training=False"])
    assert not resume
    _, resume = parse_train_args(["--is_keep_training"])
    assert resume


@pytest.mark.parametrize("argv, needle", [
    (["optim.lrr=1"], "optim.lrr"),
    (["epochs=abc"], "epochs"),
    (["optim.name=sgd"], "adafactor"),
    (["--profile", "nope"], "nope"),
    (["data.batch_size=-4"], "config key 'data.batch_size': must be >= 1, got -4"),
    (["--batch_size_per_gpu=0"], "config key 'data.batch_size': must be >= 1, got 0"),
    (["optim.lr=0"], "config key 'optim.lr': must be > 0, got 0.0"),
    (["--learn_rate=-1e-4"], "config key 'optim.lr': must be > 0, got -0.0001"),
    (["max_steps=-5"], "config key 'max_steps': must be >= 0, got -5"),
    (["data.max_seq_len=0"], "config key 'data.max_seq_len': must be >= 2, got 0"),
    (["stray"], "unrecognized arguments: stray"),
    (["--epochs"], "--epochs needs a value"),
])
def test_bad_config_fails_in_one_line(argv, needle, capsys):
    assert main(["train", *argv]) == 2  # through the CLI: exit 2, one line on stderr
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("chat-pretrain: error:") and needle in err[0]


def test_profiles_command_and_its_old_spelling(capsys):
    assert main(["profiles"]) == 0
    assert "large" in capsys.readouterr().out
    assert main(["configs"]) == 0  # the earlier spelling, kept quietly
    assert "large" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["train", "--help"], ["train", "-h"], ["--help"], ["eval", "-h"],
                                  ["generate", "--help"], ["bench", "-h"], ["profiles", "--help"]])
def test_help_at_every_level(argv, capsys):
    assert main(argv) == 0
    assert "usage: chat-pretrain" in capsys.readouterr().out


def test_help_config_lists_every_key(capsys):
    assert main(["train", "--help-config"]) == 0
    out = capsys.readouterr().out
    assert "data.max_seq_len = 192  (int)\n    Token-level truncation" in out and "optim.lr = 0.0001  (float)" in out


def test_old_spellings_are_the_new_grammar():
    cfg, resume = parse_train_args(["--config", "large", "--is_keep_training=True"])
    assert resume and cfg.data.max_seq_len == 192
    _, args, overrides = cli.parse(["--use_large_config=True", "--epochs=2"])  # no verb: train
    assert args.command == "train" and args.profile == "large" and overrides == ["epochs=2"]


def test_users_save_steps_between_evaluations_is_accepted(tmp_path):
    """The users' --save_steps=2000 with evaluation every 5000 (the default) runs: a save between
    evaluations evaluates first (core's eval_at_save), so every checkpoint has its score."""
    from chat_pretrain.cli import cli
    from chat_pretrain.config import users_flags
    from chat_pretrain.train import build_loop_config

    argv = users_flags(["--use_large_config=True", "--save_steps=2000", f"data.valid_files=[{tmp_path / 'v.parquet'}]"])
    assert argv[:2] == ["--profile", "large"]
    cfg, _ = cli.load_config("large", argv[2:])
    assert (cfg.save_every_steps, cfg.eval.every_steps) == (2000, 5000)
    loop = build_loop_config(cfg)
    assert loop.eval_at_save and loop.save_every_steps == 2000


@pytest.mark.parametrize("ram_gib, expected", [(12.0, "low-ram-12g"), (14.9, "low-ram-12g"), (15.0, "large"),
                                               (64.0, "large")])
def test_large_config_takes_low_ram_mode_below_15_gb(ram_gib, expected, monkeypatch, capsys):
    """The users' rule: below 15 GB of host RAM the large config runs in low-memory mode, and a line
    says so. The host's RAM is simulated; the run stops at the data check (no data given)."""
    import chat_pretrain.cli as cli_mod
    from trainstack import hardware

    real = hardware.detect_hardware()
    monkeypatch.setattr(hardware, "detect_hardware", lambda: dataclasses.replace(real, ram_gib=ram_gib))
    seen = {}
    real_load = cli_mod.cli.load_config

    def load_config(profile, overrides):
        seen["profile"] = profile
        return real_load(profile, overrides)

    monkeypatch.setattr(cli_mod.cli, "load_config", load_config)
    assert main(["train", "--use_large_config=True"]) == 2  # no data.train_files: one line, exit 2
    assert seen["profile"] == expected
    out, err = capsys.readouterr()
    assert ("low-RAM mode" in out) == (expected == "low-ram-12g")
    assert "data.train_files is empty" in err
