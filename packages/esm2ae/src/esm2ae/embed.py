"""esm2ae embed CHECKPOINT FASTA -o out.parquet: per-protein latents from the autoencoder.

    esm2ae embed runs/esm2ae/final proteins.fasta.gz -o latents.parquet

Columns: id, length, latent (list<float32>, the AE bottleneck), embedding (list<float32>, the
pooled backbone vector). Sequences longer than the model's max_length are split into windows and
their pooled embeddings averaged (weighted by residues), so no protein is silently truncated.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from esm2ae.data import encode, pack_indices, read_sequences, split_windows
from esm2ae.model import pack_sequences, pool


@torch.no_grad()
def embed(checkpoint: str, fasta: str, output: str, batch_tokens: int = 16384, device: str = "auto") -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from esm2ae.train import load_for_inference

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    model, meta = load_for_inference(checkpoint, dev)
    max_length = int(meta.get("max_length", 512))
    records, report = read_sequences(fasta, max_length)
    print(f"embed: {report.summary()}")
    windows, owner = [], []
    for i, r in enumerate(records):
        for w in split_windows(r.sequence, max_length):
            windows.append(encode(w))
            owner.append(i)
    d = model.backbone.config.hidden_size
    sums = torch.zeros(len(records), d, dtype=torch.float64)
    weights = torch.zeros(len(records), dtype=torch.float64)
    groups = pack_indices([len(w) for w in windows], max(batch_tokens, max_length), None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    for g in tqdm(groups, desc="embed", disable=len(groups) < 5):
        batch = pack_sequences([windows[i] for i in g]).to(dev)
        with autocast:
            hidden = model.backbone.hidden_states(batch)
        pooled = pool(hidden.float(), batch, model.pooling).double().cpu()
        for j, i in enumerate(g):
            w = 1.0 if model.pooling == "cls" else len(windows[i]) - 2
            sums[owner[i]] += w * pooled[j]
            weights[owner[i]] += w
    emb = (sums / weights.clamp(min=1).unsqueeze(-1)).float()
    latents = []
    for k in range(0, len(records), 1024):
        z, _ = model.ae(emb[k:k + 1024].to(dev))
        latents.append(z.float().cpu())
    lat = torch.cat(latents)
    table = pa.table({
        "id": [r.id for r in records],
        "length": [len(r.sequence) for r in records],
        "latent": pa.array(lat.tolist(), type=pa.list_(pa.float32())),
        "embedding": pa.array(emb.tolist(), type=pa.list_(pa.float32())),
    })
    pq.write_table(table, output)
    print(f"embed: wrote {len(records)} rows ({lat.shape[1]}-d latents) to {output}")
    return len(records)
