"""trainstack.testing: two torchrun agents on one host make one world with global ranks across them."""

import pytest
import torch
from trainstack.testing import NodesFailed, failed_run_text, read_rank_records, run_local_nodes

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

WORKER = """
import sys
import torch, torch.distributed as dist
from trainstack.testing import append_rank_record
dist.init_process_group("gloo")
total = torch.tensor(float(dist.get_rank()))
dist.all_reduce(total)
append_rank_record(sys.argv[1], "worker", sum=total.item())
dist.destroy_process_group()
sys.exit(int(sys.argv[2]))
"""


def test_two_local_nodes_form_one_world_and_a_failure_is_raised_with_the_logs(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    logs = run_local_nodes([str(script), str(tmp_path), "0"], tmp_path, env={"OMP_NUM_THREADS": "1"})
    assert [p.name for p in logs] == ["node0.log", "node1.log"]
    seen = [runs[0] for runs in read_rank_records(tmp_path, "worker", 2)]
    assert [(s["rank"], s["local_rank"], s["world_size"], s["sum"]) for s in seen] == [(0, 0, 2, 1.0), (1, 0, 2, 1.0)]
    assert sorted(s["group_rank"] for s in seen) == [0, 1]  # two nodes, one process each

    with pytest.raises(NodesFailed, match=r"exited \[1, 1\]"):
        run_local_nodes([str(script), str(tmp_path), "1"], tmp_path, env={"OMP_NUM_THREADS": "1"})


def test_a_failed_runs_text_keeps_the_aborted_process_stacks_past_a_long_tail(tmp_path):
    """A process that aborts with faulthandler on prints its stacks; a launcher's traceback after them
    (longer than the tail kept) would hide them: the text keeps them."""
    import subprocess
    import sys

    # no core file, wherever core dumps are on
    aborting = ("import os, resource\nresource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n"
                "def where_it_was():\n    os.abort()\nwhere_it_was()\n")
    r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", aborting], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode != 0
    launcher_traceback = "ChildFailedError\n" * 400
    text = failed_run_text(r.stdout, r.stderr + launcher_traceback)
    assert "where the aborted process was" in text and "where_it_was" in text
    assert "where_it_was" not in (r.stderr + launcher_traceback)[-3000:]
    assert failed_run_text("out", "plain error") == "outplain error"
