"""Two "nodes" on one host: two torchrun agents meeting at a c10d rendezvous, one CPU process each
(gloo), through the real entry point. What a multi-node run needs beyond one machine: the global rank
(not the node-local one, 0 on both nodes) picks the data shard and the one process that writes, and a
resume hands each rank its own data position back."""

import json
from pathlib import Path

import pytest
import torch
from trainstack.testing import read_rank_records, run_local_nodes

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

RECORDER = Path(__file__).parent / "_batches_per_rank.py"
TINY = ["model.name=esm2_tiny", "data.max_length=128", "batch.max_tokens_per_batch=1024",
        "batch.tokens_per_step=2048", "optim.lr=3e-3", "optim.warmup_steps=2", "log_every_steps=1",
        "data.val_fraction=0.1", "eval_every_steps=0", "save_every_steps=3"]


def run_two_nodes(args: list[str], out_dir: Path) -> None:
    run_local_nodes(args, out_dir, nodes=2, timeout=120,
                    env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})


def train_steps(run: Path) -> list[int]:
    records = (json.loads(line) for line in (run / "log.jsonl").read_text().splitlines())
    return [r["step"] for r in records if "loss" in r]  # the evaluation records share their step


def expected_batches(overrides, rank: int, count: int) -> list:
    """The masked input ids of rank `rank`'s first `count` micro-batches, across epochs, from the data
    class alone."""
    from esm2ae.config import Config
    from esm2ae.profiles import get_profile
    from esm2ae.train import build_train_batches, load_training_data
    from trainstack.config import load_config

    cfg = load_config(Config, get_profile("cpu-debug").settings, overrides)
    train_seqs, _, _ = load_training_data(cfg, rank=1)  # rank 1: quiet
    batches, out, epoch = build_train_batches(cfg, train_seqs, torch.device("cpu"), rank, 2), [], 0
    while len(out) < count:
        batches.set_epoch(epoch)
        out += [b.input_ids.tolist() for b in batches][: count - len(out)]
        epoch += 1
    return out


def test_two_nodes_train_sharded_save_once_and_resume_each_ranks_position(tmp_path):
    from trainstack.checkpoint import read_manifest

    run = tmp_path / "run"
    overrides = [*TINY, f"run_dir={run}"]
    command = [str(RECORDER), str(tmp_path), "train", "--profile", "cpu-debug", *overrides]

    run_two_nodes(command + ["max_steps=3"], tmp_path)
    first = read_rank_records(tmp_path, "batches", 2)
    # one process per node: both are local rank 0, on different nodes, with global ranks 0 and 1
    assert [(r[0]["local_rank"], r[0]["world_size"]) for r in first] == [(0, 2), (0, 2)]
    assert sorted(r[0]["group_rank"] for r in first) == [0, 1]
    assert len(first[0][0]["batches"]) == len(first[1][0]["batches"]) == 3  # both trained, one batch a step
    assert first[0][0]["batches"] != first[1][0]["batches"]

    # written once, by global rank 0: one complete checkpoint, one log record per step, the final export
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-3"]
    step3 = run / "checkpoints" / "step-3"
    assert read_manifest(step3) is not None
    steps = train_steps(run)
    assert steps == [1, 2, 3]
    state = json.loads((step3 / "trainer_state.json").read_text())["extra"]
    assert state["step"] == 3 and [d["position"] for d in state["data_per_rank"]] == [3, 3]
    assert (run / "final" / "config.json").is_file()

    # 5 steps cross the epoch end (4 micro-batches per rank per epoch here)
    run_two_nodes(command + ["max_steps=5", "--resume", "auto"], tmp_path)
    second = read_rank_records(tmp_path, "batches", 2)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-3", "step-5"]
    steps = train_steps(run)
    assert steps == [1, 2, 3, 4, 5]  # continues from the saved step
    state = json.loads((run / "checkpoints" / "step-5" / "trainer_state.json").read_text())["extra"]
    assert [(d["epoch"], d["position"]) for d in state["data_per_rank"]] == [(1, 1), (1, 1)]
    for rank in (0, 1):
        # each rank picks up at its own position, masks included: none repeated, none skipped
        trained = second[rank][0]["batches"] + second[rank][1]["batches"]
        assert trained == expected_batches(overrides, rank, 5), rank
