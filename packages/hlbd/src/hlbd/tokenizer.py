"""Character-level tokenizer built from the training pairs; saved next to the model.

    tok = CharTokenizer.build(pairs)
    tok.encode("<en>It's raining")          # tag tokens stay whole, everything else is one id per char
    tok.encode_target("今天下雨了。")        # [BOS] ... [EOS]: the model must learn to stop
"""

from __future__ import annotations

import json
import re
from pathlib import Path

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
_TAG = re.compile(r"(<[a-z]+>)")


class CharTokenizer:
    pad_id, unk_id, bos_id, eos_id = PAD, UNK, BOS, EOS

    def __init__(self, tokens: list[str]):
        if tokens[:4] != SPECIALS:
            raise ValueError(f"the first four tokens must be {SPECIALS}, got {tokens[:4]}")
        self.tokens = list(tokens)
        self.ids = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(cls, pairs, tags=()) -> CharTokenizer:
        """Vocabulary: specials, language tags, then characters in order of first appearance
        (deterministic for a given file)."""
        seen = dict.fromkeys(SPECIALS)
        for t in tags:
            seen.setdefault(t)
        for p in pairs:
            for text in (p.source, p.target):
                for piece in cls._pieces(text):
                    seen.setdefault(piece)
        return cls(list(seen))

    @staticmethod
    def _pieces(text: str) -> list[str]:
        out = []
        for part in _TAG.split(text):
            if _TAG.fullmatch(part):
                out.append(part)
            else:
                out.extend(part)
        return out

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(p, UNK) for p in self._pieces(text)]

    def encode_target(self, text: str) -> list[int]:
        return [BOS, *self.encode(text), EOS]

    def decode(self, ids) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i in (PAD, BOS):
                continue
            out.append(self.tokens[i] if 0 <= i < len(self.tokens) and i != UNK else "\ufffd")
        return "".join(out)

    def save(self, path) -> Path:
        path = Path(path)
        path.write_text(json.dumps({"type": "char", "tokens": self.tokens}, ensure_ascii=False), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path) -> CharTokenizer:
        return cls(json.loads(Path(path).read_text(encoding="utf-8"))["tokens"])
