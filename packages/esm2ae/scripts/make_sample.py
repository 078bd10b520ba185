"""Regenerate src/esm2ae/data/sample_proteins.fasta (synthetic, fixed seed).

    python packages/esm2ae/scripts/make_sample.py

80 protein-like sequences: an N-terminal Met, residues drawn from UniProt background
frequencies, and a few shared motifs (a P-loop, a zinc finger, a signal-peptide-like stretch) so
that a tiny model has something to learn beyond composition. Not real proteins.
"""
import random
from pathlib import Path

FREQ = {"A": 8.25, "R": 5.53, "N": 4.06, "D": 5.45, "C": 1.37, "Q": 3.93, "E": 6.75, "G": 7.07, "H": 2.27,
        "I": 5.96, "L": 9.66, "K": 5.84, "M": 2.42, "F": 3.86, "P": 4.70, "S": 6.56, "T": 5.34, "W": 1.08,
        "Y": 2.92, "V": 6.87}
MOTIFS = ["GXXXXGKS", "CXXCXXXXXXXXXXXXHXXXH", "MKKLLLALLLAAPLAA", "DEAD", "HEXXH", "GDSL", "WWDDE"]

rng = random.Random(20261122)
aa, w = list(FREQ), list(FREQ.values())


def residue():
    return rng.choices(aa, w)[0]


out = []
for i in range(80):
    n = int(min(700, max(40, rng.lognormvariate(5.5, 0.5))))
    seq = ["M"] + [residue() for _ in range(n - 1)]
    for _ in range(rng.randint(1, 4)):
        m = "".join(residue() if c == "X" else c for c in rng.choice(MOTIFS))
        pos = rng.randrange(1, max(2, n - len(m)))
        seq[pos:pos + len(m)] = list(m)
    s = "".join(seq)
    out.append(f">SYN{i:03d} synthetic protein-like sequence {i} len={len(s)}")
    out.extend(s[j:j + 60] for j in range(0, len(s), 60))
path = Path(__file__).parents[1] / "src" / "esm2ae" / "data" / "sample_proteins.fasta"
path.write_text("\n".join(out) + "\n")
print(path, len(out))
