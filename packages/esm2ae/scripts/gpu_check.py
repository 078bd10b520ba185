"""GPU numerics check: the compiled packed forward vs HF's padded SDPA forward (fp32 reference).

    PYTHONPATH=packages/core/src:packages/esm2ae/src python3 packages/esm2ae/scripts/gpu_check.py [SIZE] [ATTENTION]

ATTENTION flex (default) or sdpa runs in fp32; flash and varlen (flash kernels: bf16/fp16 only) run under
bf16 autocast, so their difference is bf16's rounding (compare it with the logit scale printed)."""
import json
import sys

import torch
from esm2ae.bench import lognormal_lengths, random_sequences
from esm2ae.model import PAD_ID, PackedEsm, esm2_config, pack_sequences
from transformers import EsmForMaskedLM

size = sys.argv[1] if len(sys.argv) > 1 else "esm2_t12_35M"
attention = sys.argv[2] if len(sys.argv) > 2 else "flex"
half = attention in ("flash", "varlen")
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.manual_seed(0)
cfg = esm2_config(size)
cfg._attn_implementation = "sdpa"
hf = EsmForMaskedLM(cfg).cuda().eval()
seqs = random_sequences(lognormal_lengths(12, seed=3), seed=3)
L = max(map(len, seqs))
ids = torch.full((len(seqs), L), PAD_ID)
am = torch.zeros_like(ids)
for i, s in enumerate(seqs):
    ids[i, : len(s)] = torch.tensor(s)
    am[i, : len(s)] = 1
with torch.no_grad():
    ref = hf(input_ids=ids.cuda(), attention_mask=am.cuda()).logits
    b = pack_sequences(seqs, total_len=8192).to("cuda")
    m = PackedEsm(hf, attention, compile=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=half):
        out = m.logits(m.hidden_states(b)).float()
    err = max((out[b.cu_seqlens[i]: b.cu_seqlens[i + 1]] - ref[i, : len(s)]).abs().max().item()
              for i, s in enumerate(seqs))
print(json.dumps({"check": f"packed_{attention}_compiled_{'bf16' if half else 'fp32'}_vs_hf_padded_sdpa_fp32",
                  "size": size, "max_abs_logit_diff": err, "logit_scale": ref.abs().max().item()}))
