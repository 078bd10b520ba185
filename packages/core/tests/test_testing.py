"""trainstack.testing: two torchrun agents on one host make one world with global ranks across them."""

import json

import pytest
import torch
from trainstack.testing import NodesFailed, run_local_nodes

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

WORKER = """
import json, os, sys
import torch, torch.distributed as dist
dist.init_process_group("gloo")
total = torch.tensor(float(dist.get_rank()))
dist.all_reduce(total)
ranks = {k: int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE")}
open(os.path.join(sys.argv[1], f"rank{dist.get_rank()}.json"), "w").write(json.dumps({**ranks, "sum": total.item()}))
dist.destroy_process_group()
sys.exit(int(sys.argv[2]))
"""


def test_two_local_nodes_form_one_world_and_a_failure_is_raised_with_the_logs(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    logs = run_local_nodes([str(script), str(tmp_path), "0"], tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert [p.name for p in logs] == ["node0.log", "node1.log"]
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(s["RANK"], s["LOCAL_RANK"], s["WORLD_SIZE"], s["sum"]) for s in seen] == [(0, 0, 2, 1.0), (1, 0, 2, 1.0)]
    assert sorted(s["GROUP_RANK"] for s in seen) == [0, 1]  # two nodes, one process each

    with pytest.raises(NodesFailed, match=r"exited \[1, 1\]"):
        run_local_nodes([str(script), str(tmp_path), "1"], tmp_path, env={"OMP_NUM_THREADS": "1"})
