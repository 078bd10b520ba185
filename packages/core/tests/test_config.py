from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml
from trainstack.config import (
    ConfigError,
    config_to_dict,
    format_config,
    load_config,
    load_yaml,
    parse_cli_overrides,
    save_config,
)


@dataclass
class OptimConfig:
    name: Literal["adamw", "adam", "adafactor"] = "adamw"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0


@dataclass
class DataConfig:
    max_tokens: int = 4096
    paths: list[str] = field(default_factory=list)
    shuffle: bool = True
    root: Path | None = None


@dataclass
class TrainConfig:
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(max_tokens=8192))
    max_steps: int | None = None
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    run_name: str = "run"
    extras: dict[str, float] = field(default_factory=lambda: {"a": 1.0})

    def __post_init__(self):
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {self.max_steps}")


def test_defaults():
    cfg = load_config(TrainConfig)
    assert cfg == TrainConfig()
    assert cfg.data.max_tokens == 8192  # the field's default factory, not DataConfig's own default


def test_layers_defaults_then_profile_then_overrides():
    profile = {"optim": {"lr": 5e-4, "weight_decay": 0.1}, "data": {"shuffle": False}}
    cfg = load_config(TrainConfig, profile, ["optim.lr=3e-4", "max_steps=2e3", "run_name=123"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.weight_decay == 0.1  # from the profile
    assert cfg.optim.name == "adamw"  # default
    assert cfg.data.shuffle is False and cfg.data.max_tokens == 8192  # partial section keeps the rest
    assert cfg.max_steps == 2000 and isinstance(cfg.max_steps, int)
    assert cfg.run_name == "123"  # a string field keeps the text as typed


def test_yaml_11_exponent_numbers_are_numbers(tmp_path):
    assert yaml.safe_load("x: 2e8")["x"] == "2e8"  # the trap: PyYAML's YAML 1.1 reads a string
    assert load_yaml("x: 2e8\ny: 3e-4\nz: 1.5\nw: 1_000\ns: e5") == {"x": 2e8, "y": 3e-4, "z": 1.5, "w": 1000, "s": "e5"}
    p = tmp_path / "p.yaml"
    p.write_text("optim:\n  lr: 3e-4\ndata:\n  max_tokens: 2e4\n")
    cfg = load_config(TrainConfig, p)
    assert cfg.optim.lr == 3e-4 and cfg.data.max_tokens == 20000
    # even a quoted string reaching a numeric field parses
    assert load_config(TrainConfig, {"optim": {"lr": "2e-5"}}).optim.lr == 2e-5


def test_profile_file_uses_its_settings_block(tmp_path):
    p = tmp_path / "rtx4080s-16g.yaml"
    p.write_text("requires:\n  gpu_count: 1\nsettings:\n  optim:\n    lr: 1e-4\n")
    assert load_config(TrainConfig, p).optim.lr == 1e-4
    from trainstack.hardware import load_profile

    assert load_config(TrainConfig, load_profile(p)).optim.lr == 1e-4


def test_unknown_key_names_dotted_path_and_allowed_keys():
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, overrides=["optim.lrr=1"])
    msg = str(e.value)
    assert "'optim.lrr'" in msg and "allowed: name, lr, betas, weight_decay" in msg and "did you mean 'optim.lr'" in msg
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        load_config(TrainConfig, {"bogus": 1})


def test_wrong_types_name_the_path():
    with pytest.raises(ConfigError, match=r"'optim.lr': expected float, got abc"):
        load_config(TrainConfig, overrides=["optim.lr=abc"])
    with pytest.raises(ConfigError, match=r"'data.max_tokens': expected int, got 1.5"):
        load_config(TrainConfig, {"data": {"max_tokens": 1.5}})
    with pytest.raises(ConfigError, match=r"'data.shuffle': expected bool"):
        load_config(TrainConfig, {"data": {"shuffle": "maybe"}})
    with pytest.raises(ConfigError, match=r"'data.max_tokens': expected int, got True"):
        load_config(TrainConfig, {"data": {"max_tokens": True}})
    with pytest.raises(ConfigError, match=r"'run_name': expected str, got 5"):
        load_config(TrainConfig, {"run_name": 5})
    with pytest.raises(ConfigError, match=r"'optim': expected a section"):
        load_config(TrainConfig, {"optim": 3})


def test_literal_lists_allowed_values():
    with pytest.raises(ConfigError, match=r"'precision': bf32 is not one of: auto, bf16, fp16, fp32"):
        load_config(TrainConfig, overrides=["precision=bf32"])
    assert load_config(TrainConfig, overrides=["precision=bf16", "optim.name=adafactor"]).optim.name == "adafactor"


def test_bools_optional_tuple_list_dict():
    cfg = load_config(
        TrainConfig,
        overrides=[
            "data.shuffle=false", "max_steps=null", "optim.betas=[0.9, 0.95]", "data.paths=a.parquet,b.parquet",
            "data.root=/tmp/x", "extras.b=2e-3",
        ],
    )
    assert cfg.data.shuffle is False and cfg.max_steps is None
    assert cfg.optim.betas == (0.9, 0.95) and isinstance(cfg.optim.betas, tuple)
    assert cfg.data.paths == ["a.parquet", "b.parquet"]
    assert cfg.data.root == Path("/tmp/x")
    assert cfg.extras == {"a": 1.0, "b": 2e-3}  # merged into the default dict
    assert load_config(TrainConfig, overrides=["data.shuffle=True"]).data.shuffle is True
    with pytest.raises(ConfigError, match=r"'optim.betas': expected 2 items"):
        load_config(TrainConfig, overrides=["optim.betas=[0.9]"])
    with pytest.raises(ConfigError, match=r"'optim.betas\[1\]': expected float"):
        load_config(TrainConfig, {"optim": {"betas": [0.9, "x"]}})
    with pytest.raises(ConfigError, match=r"'extras.c': expected float"):
        load_config(TrainConfig, overrides=["extras.c=oops"])


def test_post_init_errors_become_config_errors():
    with pytest.raises(ConfigError, match="max_steps must be positive"):
        load_config(TrainConfig, overrides=["max_steps=0"])


def test_bad_override_syntax_and_sections():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(TrainConfig, overrides=["optim.lr"])
    with pytest.raises(ConfigError, match="'run_name' is not a section"):
        load_config(TrainConfig, {"run_name": "x"}, ["run_name.y=1"])


def test_missing_required_field():
    @dataclass
    class Needs:
        model: str
        steps: int = 1

    with pytest.raises(ConfigError, match="missing required key 'model'"):
        load_config(Needs)
    assert load_config(Needs, overrides=["model=tiny"]).model == "tiny"


def test_parse_cli_overrides():
    overrides, rest = parse_cli_overrides(["train", "--profile", "x.yaml", "optim.lr=3e-4", "--flag=1", "a_b.c=2"])
    assert overrides == ["optim.lr=3e-4", "a_b.c=2"]
    assert rest == ["train", "--profile", "x.yaml", "--flag=1"]


def test_format_save_and_round_trip(tmp_path):
    cfg = load_config(TrainConfig, overrides=["optim.lr=3e-4", "data.root=/tmp/d", "max_steps=10"])
    text = format_config(cfg)
    assert "optim:" in text and "lr: 0.0003" in text and "betas:" in text
    d = config_to_dict(cfg)
    assert d["optim"]["betas"] == [0.9, 0.999] and d["data"]["root"] == "/tmp/d"
    path = save_config(cfg, tmp_path / "run")
    assert path == tmp_path / "run" / "config.yaml" and path.read_text() == text
    assert load_config(TrainConfig, path) == cfg


def test_check_limits_names_the_dotted_key():
    from trainstack.config import check_limits

    @dataclass
    class Limited:
        optim: OptimConfig = field(default_factory=OptimConfig)
        max_steps: int | None = None

        def __post_init__(self):
            check_limits(self, {"optim.lr": "> 0", "max_steps": ">= 0"})

    assert load_config(Limited, {}, ["max_steps=0"]).max_steps == 0
    assert load_config(Limited, {}, []).max_steps is None  # an unset optional passes
    with pytest.raises(ConfigError, match=r"^config key 'optim.lr': must be > 0, got 0.0$"):
        load_config(Limited, {}, ["optim.lr=0"])
    with pytest.raises(ConfigError, match=r"^config key 'max_steps': must be >= 0, got -5$"):
        load_config(Limited, {}, ["max_steps=-5"])


@pytest.mark.parametrize("check", ["check_writable_dir", "make_run_dir"])
def test_run_dir_checks_say_why_not_in_one_line(tmp_path, read_only_dir, check):
    import trainstack.config as C

    fn = getattr(C, check)
    assert fn(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    if check == "check_writable_dir":
        assert not (tmp_path / "a").exists()  # checks only
    else:
        assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == []  # the write test leaves nothing
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for where in (blocker, blocker / "run"):
        with pytest.raises(ConfigError, match=r"run_dir=.*file.txt.*: a file is in the way"):
            fn(where)
    for where in (read_only_dir, read_only_dir / "run"):
        with pytest.raises(ConfigError, match=r"--run-dir=.*read-only.*: cannot write there") as e:
            fn(where, key="--run-dir")
        assert "\n" not in str(e.value)
    assert blocker.read_text() == "x" and not list(read_only_dir.iterdir())


def test_make_run_dir_finds_what_os_access_misses(tmp_path, monkeypatch):
    # root passes os.access on a chattr +i directory on some kernels; the real write decides
    import trainstack.config as C

    monkeypatch.setattr(C.os, "access", lambda *a, **k: True)
    ro = tmp_path / "ro"
    ro.mkdir()

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(C.tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(ConfigError, match=r"run_dir=.*ro: cannot write there \(Permission denied\)"):
        C.make_run_dir(ro)


def test_describe_config_keys_lists_leaves_with_defaults_types_and_docs():
    from trainstack.config import describe_config_keys, format_config_keys

    @dataclass
    class Inner:
        lr: float = 3e-4
        """Peak learning rate,
        after warm-up."""
        schedule: Literal["cosine", "constant"] = "cosine"

    @dataclass
    class Outer:
        optim: Inner = field(default_factory=Inner)
        tags: list[str] = field(default_factory=lambda: ["a"])
        steps: int = 5
        """Optimizer steps."""

    keys = {k.path: k for k in describe_config_keys(Outer)}
    assert list(keys) == ["optim.lr", "optim.schedule", "tags", "steps"]
    assert keys["optim.lr"].doc == "Peak learning rate, after warm-up." and keys["optim.lr"].default == 3e-4
    assert keys["optim.schedule"].type == "cosine | constant" and keys["optim.schedule"].doc == ""
    assert keys["tags"].default == ["a"] and keys["steps"].doc == "Optimizer steps."
    text = format_config_keys(Outer)
    assert "optim.lr = 0.0003  (float)\n    Peak learning rate, after warm-up.\n" in text
    assert "tags = [a]  (list[str])\n" in text
