"""Several processes: fit compiles the DDP-wrapped model (core's compile_for, dynamic shapes), and
Dynamo splits its graph at DDP's gradient buckets (DDPOptimizer). Split graphs with dynamic shapes
were reported to recompile at every new length on earlier torch releases (pytorch issue 140229, torch
2.5); this holds the one-compile-for-all-shapes promise under DDP too (checked here with aot_eager;
Inductor on CPU with torch 2.11 gave the same: one graph, no recompiles, over the same shapes)."""
import json
import os
import subprocess
import sys
from pathlib import Path

from trainstack.testing import failed_run_text, free_port


def test_a_ddp_model_split_at_its_buckets_compiles_once_for_every_shape():
    script = Path(__file__).parent / "_ddp_compile_ranks.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(script)]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, failed_run_text(proc.stdout or '', proc.stderr)
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    seen = json.loads(line)
    assert seen["dynamo_graphs"] == 1 and seen["recompiles"] == 0
    graphs = seen["graphs_after_each_shape"]
    assert graphs[0] >= 2  # the graph was split at the buckets
    assert graphs == [graphs[0]] * len(graphs)  # and no shape after the first compiled anything
