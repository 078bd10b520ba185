"""Write a stand-in for the ChatLM tokenizer into DIR/tokenizer.json, for benchmarks without it.

    python3 packages/chat-pretrain/scripts/stand_in_tokenizer.py DIR

`chat-pretrain make-data` writes random characters of the CJK block's first 3000 code points: one
token each here, as with the ChatLM tokenizer, and its vocabulary size (29,298), so the model built
from it is the same 0.2B T5 the users train.
"""
import sys
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, pre_tokenizers

VOCAB_SIZE = 29298


def main(out_dir: str) -> None:
    vocab = {t: i for i, t in enumerate(["[PAD]", "[EOS]", "[UNK]", "[BOS]"])}
    vocab.update({chr(c): len(vocab) + i for i, c in enumerate(range(0x4E00, 0x4E00 + 3000))})
    vocab.update({f"[unused{i}]": i for i in range(len(vocab), VOCAB_SIZE)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tok.save(f"{out_dir}/tokenizer.json")
    print(f"TOK not set: stand-in tokenizer, {len(vocab)} tokens, one per character -> {out_dir}")


if __name__ == "__main__":
    main(sys.argv[1])
