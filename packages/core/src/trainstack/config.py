"""Typed, layered configs: dataclass defaults <- profile settings (YAML or dict) <- dotted CLI overrides.

    @dataclass
    class OptimConfig:
        lr: float = 1e-3
        schedule: Literal["cosine", "linear", "constant"] = "cosine"

    @dataclass
    class TrainConfig:
        optim: OptimConfig = field(default_factory=OptimConfig)
        max_tokens: int = 4096

    overrides, rest = parse_cli_overrides(sys.argv[1:])     # ["optim.lr=3e-4", ...]
    cfg = load_config(TrainConfig, profile.settings, overrides)
    check_writable_dir(cfg.run_dir)                           # fail fast, writes nothing
    ... validate the data (read only), build the model ...
    make_run_dir(cfg.run_dir)                                 # the run's first write
    print(format_config(cfg)); save_config(cfg, run_dir)

``describe_config_keys(TrainConfig)`` lists every key with its type, default and attribute docstring
(what ``PKG train --help-config`` prints).

Ranges go in the config's ``__post_init__``: ``check_limits(self, {"optim.lr": "> 0", "max_steps": ">= 0"})``.

Every value is checked against its annotation: an unknown key or a wrong type stops the run at
start-up with the dotted path and what is allowed, instead of being dropped or kept as a string.
PyYAML follows YAML 1.1, which reads ``2e8`` and ``3e-4`` as strings; ``load_yaml`` reads them as
floats, and numeric fields also accept such strings from any source.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import enum
import inspect
import operator
import os
import re
import tempfile
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


class _YAMLLoader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats without a dot (``2e8``, ``3e-4``, ``1E+5``)."""


_YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YAMLLoader)  # noqa: S506 - a SafeLoader subclass


class _Text(str):
    """A value typed on the command line: parsed according to the field's annotation."""


def parse_cli_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split ``key=value`` tokens (overrides) from the rest (flags, positionals)."""
    overrides, rest = [], []
    for token in argv:
        if "=" in token and not token.startswith("-") and re.match(r"^[A-Za-z_][\w.\-]*=", token):
            overrides.append(token)
        else:
            rest.append(token)
    return overrides, rest


def _settings_from(profile) -> dict:
    if profile is None:
        return {}
    if hasattr(profile, "settings") and not isinstance(profile, Mapping):  # a hardware.Profile
        return dict(profile.settings)
    if isinstance(profile, Mapping):
        return dict(profile)
    path = Path(profile)
    try:
        data = load_yaml(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    # A hardware profile file: the config lives under `settings:`.
    if set(data) <= {"requires", "settings", "description"} and ("settings" in data or "requires" in data):
        return dict(data.get("settings") or {})
    return data


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{'.'.join(parts[: i + 1])}' is not a section")
        node = child
    node[parts[-1]] = value


def load_config(cls: type[T], profile: Mapping | str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"load_config needs a dataclass type, got {cls!r}")
    tree = _settings_from(profile)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=3e-4)")
        _set_dotted(tree, key.strip(), _Text(value.strip()))
    return _build(cls, tree, prefix="")


def _field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _build(cls, updates: Mapping, prefix: str, base=None):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in updates:
        if key not in fields:
            allowed = ", ".join(fields) or "(none)"
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown key '{prefix}{key}'{hint}; allowed: {allowed}")
    kwargs = {}
    for name, f in fields.items():
        path = prefix + name
        current = getattr(base, name) if base is not None else _field_default(f)
        if name in updates:
            kwargs[name] = _coerce(updates[name], hints[name], path, current)
        elif current is dataclasses.MISSING:
            raise ConfigError(f"missing required key '{path}'")
        else:
            kwargs[name] = current
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # __post_init__ validation of field combinations
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None


def _describe(tp) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _fail(path: str, tp, value) -> ConfigError:
    shown = str(value) if isinstance(value, _Text) else repr(value)
    return ConfigError(f"config key '{path}': expected {_describe(tp)}, got {shown} ({type(value).__name__})")


def _parse_text(value):
    """A CLI string parsed as YAML (numbers, lists, dicts); kept as the string if it is not YAML."""
    if not isinstance(value, _Text):
        return value
    try:
        return load_yaml(value)
    except yaml.YAMLError:
        return str(value)


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"null", "none", "~"}


def _coerce(value, tp, path: str, current=dataclasses.MISSING):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if tp is Any or tp is object:
        return _parse_text(value)

    if origin is Union or origin is types.UnionType:
        options = [a for a in args if a is not type(None)]
        # Only text typed on the command line spells None as a word; YAML already gave us None.
        if value is None or (isinstance(value, _Text) and value.strip().lower() in _NONE and type(None) in args
                             and not any(_literal_has(a, value) for a in options)):
            if type(None) in args:
                return None
            raise _fail(path, tp, value)
        errors = []
        for option in options:
            try:
                return _coerce(value, option, path, current)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise _fail(path, tp, value)

    if origin is Literal:
        for candidate in (value, _parse_text(value)):
            candidate = str(candidate) if isinstance(candidate, str) else candidate
            for allowed in args:
                if candidate == allowed and type(candidate) is type(allowed):
                    return allowed
        shown = str(value) if isinstance(value, _Text) else repr(value)
        raise ConfigError(f"config key '{path}': {shown} is not one of: {', '.join(map(str, args))}")

    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        value = _parse_text(value)
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key '{path}': expected a section ({tp.__name__}) with keys "
                              f"{', '.join(f.name for f in dataclasses.fields(tp))}, got {value!r}")
        base = current if isinstance(current, tp) else None
        return _build(tp, value, prefix=path + ".", base=base)

    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise _fail(path, tp, value)

    if tp is int:
        if isinstance(value, bool):
            raise _fail(path, tp, value)
        if isinstance(value, int):
            return value
        number = value
        if isinstance(value, str):
            number = _parse_number(value)
        if isinstance(number, float) and number.is_integer():
            return int(number)
        if isinstance(number, int) and not isinstance(number, bool):
            return number
        raise _fail(path, tp, value)

    if tp is float:
        if isinstance(value, bool):
            raise _fail(path, tp, value)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            number = _parse_number(value)
            if number is not None:
                return float(number)
        raise _fail(path, tp, value)

    if tp is str:
        if isinstance(value, str):
            return str(value)
        raise _fail(path, tp, value)

    if tp is Path or (isinstance(tp, type) and issubclass(tp, os.PathLike)):
        if isinstance(value, (str, os.PathLike)):
            return Path(value)
        raise _fail(path, tp, value)

    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if value == member.value or value == member.name or value is member:
                return member
        raise ConfigError(f"config key '{path}': {value!r} is not one of: {', '.join(m.name for m in tp)}")

    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        value = _parse_text(value)
        if isinstance(value, str):  # "a,b,c" from the command line
            value = [_Text(v.strip()) for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise _fail(path, tp, value)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"config key '{path}': expected {len(args)} items ({_describe(tp)}), got {len(value)}")
            items = [_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))]
        else:
            item_tp = args[0] if args else Any
            items = [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items

    if origin is dict or tp is dict or origin is Mapping:
        value = _parse_text(value)
        if not isinstance(value, Mapping):
            raise _fail(path, tp, value)
        key_tp, val_tp = args if args else (Any, Any)
        # Updates merge into the default dict, so `extras.k=v` adds a key instead of dropping the rest.
        merged = dict(current) if isinstance(current, Mapping) else {}
        for k, v in value.items():
            merged[_coerce(k, key_tp, f"{path}.{k}")] = _coerce(v, val_tp, f"{path}.{k}")
        return merged

    raise ConfigError(f"config key '{path}': unsupported annotation {_describe(tp)}")


def _literal_has(tp, value) -> bool:
    return typing.get_origin(tp) is Literal and value in typing.get_args(tp)


def _parse_number(text: str):
    """int or float from "3", "2e8", "3e-4", "1_000", ".5", "inf"; None when not a number."""
    text = text.strip().replace("_", "")
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def config_to_dict(cfg) -> dict:
    """Plain, YAML- and JSON-safe dict (tuples -> lists, paths -> str, enums -> values)."""

    def plain(v):
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, os.PathLike):
            return os.fspath(v)
        if isinstance(v, enum.Enum):
            return v.value
        return v

    return plain(cfg)


def format_config(cfg) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=False)


def save_config(cfg, run_dir) -> Path:
    """Write run_dir/config.yaml (atomically: a crash never leaves half a file)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / "config.yaml"
    tmp = run_dir / ".config.yaml.tmp"
    tmp.write_text(format_config(cfg), encoding="utf-8")
    os.replace(tmp, target)
    return target


_COMPARE = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def check_limits(cfg, limits: Mapping[str, str]) -> None:
    """Refuse numbers out of range with their dotted key: ``{"optim.lr": "> 0", "data.batch_size": ">= 1"}``.

    For a config's ``__post_init__``; a ``None`` value (an unset optional) passes. The ConfigError
    names the full key, which a nested section's own ``__post_init__`` cannot know."""
    for key, rule in limits.items():
        op, _, bound = rule.partition(" ")
        compare = _COMPARE[op]
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if value is not None and not compare(value, float(bound)):
            raise ConfigError(f"config key '{key}': must be {op} {bound}, got {value}")


def check_writable_dir(path, key: str = "run_dir") -> Path:
    """Fail fast, writing nothing: ``path`` is a directory or can become one (no file in the way, the
    nearest existing parent writable). Call it right after the config loads, before slow set-up;
    ``make_run_dir`` repeats the check with a real write later."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}={path}: a file is in the way (a run directory must be a directory); "
                          f"choose another {key}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path}: cannot write there ({existing} is read-only); choose a writable {key}")
    return path


def make_run_dir(path, key: str = "run_dir") -> Path:
    """Create the run directory and check that it takes files: call it after the config and the data
    validated, as the run's first write. A file in the way or a read-only location is a one-line
    ConfigError naming ``key``, instead of a traceback from whichever write comes first."""
    path = check_writable_dir(path, key)
    try:
        path.mkdir(parents=True, exist_ok=True)
        # mkdir succeeds on an existing read-only directory, and root passes os.access where a
        # write fails (chattr +i); only creating a file tells.
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"{key}={path}: a file is in the way (a run directory must be a directory); "
                          f"choose another {key}") from None
    except OSError as e:
        raise ConfigError(f"{key}={path}: cannot write there ({e.strerror}); choose a writable {key}") from None
    return path


@dataclasses.dataclass(frozen=True)
class ConfigKey:
    path: str
    """Dotted key, as typed on the command line (``optim.lr``)."""
    type: str
    default: Any
    doc: str


def _attribute_docs(cls) -> dict[str, str]:
    """The string literal under each annotated field (an attribute docstring, as litgpt writes them),
    for ``cls`` and its dataclass bases; {} where the source is not available."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def describe_config_keys(cls, prefix: str = "") -> list[ConfigKey]:
    """Every leaf key of the config dataclass ``cls``, in declaration order."""
    hints = typing.get_type_hints(cls)
    docs = _attribute_docs(cls)
    keys: list[ConfigKey] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            keys.extend(describe_config_keys(tp, prefix + f.name + "."))
            continue
        if typing.get_origin(tp) is Literal:
            type_text = " | ".join(map(str, typing.get_args(tp)))
        else:
            type_text = _describe(tp)
        default = _field_default(f)
        keys.append(ConfigKey(prefix + f.name, type_text, config_to_dict(default) if default is not dataclasses.MISSING
                              else "(required)", docs.get(f.name, "")))
    return keys


def format_config_keys(cls) -> str:
    """``key = default  (type)`` per line, its doc indented below: the text of ``--help-config``."""
    lines = []
    for key in describe_config_keys(cls):
        value = yaml.safe_dump(key.default, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
        lines.append(f"{key.path} = {value}  ({key.type})")
        if key.doc:
            lines.extend(textwrap.wrap(key.doc, width=100, initial_indent="    ", subsequent_indent="    "))
    return "\n".join(lines) + "\n"
