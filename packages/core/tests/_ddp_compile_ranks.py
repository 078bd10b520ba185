"""Two ranks (gloo): core's compile_for on a DDP-wrapped model with dynamic shapes, buckets small enough
that Dynamo splits the graph at DDP's bucket boundaries; prints a JSON line with what was compiled.

    python -m torch.distributed.run --nproc_per_node 2 _ddp_compile_ranks.py
"""
import json

import torch
import torch.distributed as dist
from torch._dynamo.utils import counters
from torch.nn.parallel import DistributedDataParallel as DDP
from trainstack.speed import SpeedConfig, compile_for, resolve_speed


class TokenModel(torch.nn.Module):
    def __init__(self, vocab=512, width=256, layers=8):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, width)
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(layers))
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, ids):
        h = self.emb(ids)
        for block in self.blocks:
            h = h + torch.relu(block(h))
        return torch.nn.functional.cross_entropy(self.head(h).flatten(0, 1), ids.flatten())


dist.init_process_group("gloo")
torch.manual_seed(0)
speed = resolve_speed(SpeedConfig(compile="true", cuda_graphs="false", compile_backend="aot_eager",
                                  compile_dynamic=True, length_buckets="off"), torch.device("cpu"))
# ~0.8M parameters (3.2 MB) in buckets of 1 MB (DDP's smallest: its first bucket): DDP makes several,
# and Dynamo splits the graph at each, as it does for a real model in 25 MB buckets
model = DDP(TokenModel(), bucket_cap_mb=1)
step = compile_for(speed, model)
shapes = [(8, 32), (16, 64), (12, 96), (24, 40), (8, 128), (16, 64)]
graphs_after_each_shape = []  # AOT-compiled graphs so far: one per piece of the split graph
for rows, length in shapes:
    ids = torch.randint(0, 512, (rows, length), generator=torch.Generator().manual_seed(rows * length))
    step(ids).backward()
    graphs_after_each_shape.append(counters["aot_autograd"]["total"])
if dist.get_rank() == 0:
    print(json.dumps({"dynamo_graphs": counters["stats"]["unique_graphs"], "recompiles": counters["recompiles"].total(),
                      "graphs_after_each_shape": graphs_after_each_shape}), flush=True)
dist.destroy_process_group()
