"""Read HLBD files and turn concepts into (source, target) training pairs.

    concepts = read_hlbd("hlbd_v1_600pairs.txt")        # or .json / .jsonl with the same records
    pairs = build_pairs(concepts)                        # 6 sources -> 中文, with language tags

The HLBD text format is a prose header followed by ``samples = [ ... ]``, a JSON list of concepts:

    {"concept": "下雨",
     "level_1": {"字卡": "下雨", "emoji": "🌧️"}, "level_2": {"短语": "下雨了"},
     "level_3": {"数学": "S = NP + VP ..."}, "level_4": {"拼音": "xià yǔ"},
     "level_5": {"英文": "It's raining"}, "level_6": {"中文": "今天天气阴沉，下雨了。"},
     "level_7": {"日文": "雨が降っています"}, "level_8": {"韩文": "비가 오고 있어요"}}

The real files carry two known blemishes, tolerated with a warning that names the concept: the key
``韩문`` (a Hangul character typed for 文) and a value wrapped in a dict ({"韩文": "..."}).
Anything else malformed raises HLBDError with the file, line or concept, and the reason.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

# field name -> (level, key as written in the file); "korean" also accepts the 韩문 misspelling.
FIELDS: dict[str, tuple[str, str]] = {
    "card": ("level_1", "字卡"),
    "emoji": ("level_1", "emoji"),
    "phrase": ("level_2", "短语"),
    "math": ("level_3", "数学"),
    "pinyin": ("level_4", "拼音"),
    "english": ("level_5", "英文"),
    "chinese": ("level_6", "中文"),
    "japanese": ("level_7", "日文"),
    "korean": ("level_8", "韩文"),
}
KEY_ALIASES = {"韩문": "韩文"}
# The users' quick-learning test: these six sources, each mapped to the Chinese sentence.
DEFAULT_SOURCES = ("emoji", "phrase", "english", "pinyin", "japanese", "korean")
DEFAULT_TARGET = "chinese"
LANGUAGE_TAGS = {"card": "<card>", "emoji": "<emoji>", "phrase": "<phrase>", "math": "<math>",
                 "pinyin": "<py>", "english": "<en>", "chinese": "<zh>", "japanese": "<ja>", "korean": "<ko>"}
SAMPLES_MARKER = "samples = ["


class HLBDError(ValueError):
    """Malformed input; the message is one line naming the file and the line or concept."""


@dataclass(frozen=True)
class Concept:
    name: str
    fields: dict[str, str]   # field name (see FIELDS) -> text; absent fields are missing


@dataclass(frozen=True)
class Pair:
    source: str
    target: str
    source_field: str
    target_field: str
    concept: str


def bundled_sample_path() -> Path:
    """The small sample shipped in the wheel (our own concepts, same format as the real files)."""
    return Path(str(resources.files("hlbd") / "data" / "hlbd_sample.txt"))


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _json_error(path: Path, text: str, base_offset: int, e: json.JSONDecodeError) -> HLBDError:
    line = _line_of(text, base_offset + e.pos)
    if e.pos >= len(e.doc.rstrip()):  # the parser ran out of input: the list never closes
        return HLBDError(f"{path}:{line}: the samples JSON list is truncated (ends before its closing ']'): {e.msg}")
    return HLBDError(f"{path}:{line}: invalid JSON in the samples list: {e.msg}")


def _raw_records(path: Path) -> list:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HLBDError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise HLBDError(f"{path}: is a directory, expected an HLBD .txt, .json or .jsonl file") from None
    except UnicodeDecodeError as e:
        raise HLBDError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise HLBDError(f"{path}:{lineno}: invalid JSON line: {e.msg}") from None
        return records
    if suffix == ".json":
        start = 0
    else:
        start = text.find(SAMPLES_MARKER)
        if start < 0:
            stripped = text.lstrip()
            if stripped.startswith("[") or stripped.startswith("{"):
                start = 0  # plain JSON in a .txt file
            else:
                raise HLBDError(f"{path}: no '{SAMPLES_MARKER}' line found; an HLBD file is a prose header "
                                f"followed by 'samples = [...]' (or use .json / .jsonl)")
        else:
            start += len("samples = ")
    body = text[start:]
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        raise _json_error(path, text, start, e) from None
    if isinstance(data, dict) and "samples" in data:
        data = data["samples"]
    if not isinstance(data, list):
        raise HLBDError(f"{path}:{_line_of(text, start)}: expected a JSON list of concepts, got {type(data).__name__}")
    return data


def _text_value(value, where: str, concept: str, path: Path) -> str | None:
    if isinstance(value, str):
        return value
    # Seen in the real v1/v2 files: {"韩文": {"韩文": "..."}}. Unwrap a single string inside a dict or list.
    inner = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else None
    if inner is not None and len(inner) == 1 and isinstance(inner[0], str):
        warnings.warn(f"{path}: concept {concept!r}: {where} is a {type(value).__name__}, not a string; "
                      f"using the string inside it", stacklevel=4)
        return inner[0]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        warnings.warn(f"{path}: concept {concept!r}: {where} is a number, not a string; using {value!s}", stacklevel=4)
        return str(value)
    warnings.warn(f"{path}: concept {concept!r}: {where} is a {type(value).__name__}, not a string; ignored",
                  stacklevel=4)
    return None


def read_hlbd(path, required: tuple[str, ...] = (DEFAULT_TARGET,)) -> list[Concept]:
    """Read an HLBD .txt (prose + ``samples = [...]``), .json (a list) or .jsonl (one concept a line).
    Every concept must carry the ``required`` fields; an empty list is an error."""
    path = Path(path)
    raw = _raw_records(path)
    if not raw:
        raise HLBDError(f"{path}: the samples list is empty")
    reverse = {(lv, key): name for name, (lv, key) in FIELDS.items()}
    concepts = []
    aliased: dict[str, list[str]] = {}
    for i, rec in enumerate(raw):
        if not isinstance(rec, dict):
            raise HLBDError(f"{path}: sample #{i + 1} is a {type(rec).__name__}, expected an object with 'concept' and levels")
        name = rec.get("concept")
        if not isinstance(name, str) or not name.strip():
            raise HLBDError(f"{path}: sample #{i + 1} has no 'concept' name")
        fields: dict[str, str] = {}
        for level, block in rec.items():
            if level == "concept" or not level.startswith("level_"):
                continue
            if not isinstance(block, dict):
                raise HLBDError(f"{path}: concept {name!r}: {level} is a {type(block).__name__}, expected an object")
            for key, value in block.items():
                canonical = KEY_ALIASES.get(key, key)
                if canonical != key:
                    aliased.setdefault(key, []).append(name)
                field = reverse.get((level, canonical))
                if field is None:
                    continue  # unknown extra keys are allowed: the format grows levels over time
                text = _text_value(value, f"{level}.{key}", name, path)
                if text is not None and text.strip():
                    fields[field] = text.strip()
        for field in required:
            if field not in fields:
                lv, key = FIELDS[field]
                raise HLBDError(f"{path}: concept {name!r} (sample #{i + 1}) has no {lv}.{key} ({field})")
        concepts.append(Concept(name, fields))
    for key, names in aliased.items():  # one line per file, not one per concept (v2 has 67 of them)
        more = f" and {len(names) - 1} more" if len(names) > 1 else ""
        warnings.warn(f"{path}: key {key!r} read as {KEY_ALIASES[key]!r} in concept {names[0]!r}{more}", stacklevel=2)
    return concepts


def build_pairs(concepts: list[Concept], sources=DEFAULT_SOURCES, targets=(DEFAULT_TARGET,),
                language_tags: bool = True) -> list[Pair]:
    """One pair per (concept, source, target) where both texts exist, as the users build them.
    With ``language_tags`` the source starts with a tag token naming its field (``<en>It's raining``)
    and, when there is more than one target, the target field's tag is added too so the model knows
    what to produce."""
    for f in (*sources, *targets):
        if f not in FIELDS:
            raise HLBDError(f"unknown field {f!r}; allowed: {', '.join(FIELDS)}")
    pairs = []
    for c in concepts:
        for t in targets:
            if t not in c.fields:
                continue
            for s in sources:
                if s == t or s not in c.fields:
                    continue
                src = c.fields[s]
                if language_tags:
                    src = LANGUAGE_TAGS[s] + src
                    if len(targets) > 1:
                        src = LANGUAGE_TAGS[t] + src
                pairs.append(Pair(src, c.fields[t], s, t, c.name))
    if not pairs:
        raise HLBDError(f"no pairs: no concept has both a source ({', '.join(sources)}) and a target ({', '.join(targets)})")
    return pairs
