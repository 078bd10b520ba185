"""Two "nodes" on one host: two torchrun agents meeting at a c10d rendezvous, one CPU process each
(gloo), through the real entry point. What a multi-node run needs beyond one machine: the global rank
(not the node-local one, 0 on both nodes) picks the data shard and the one process that writes, and a
resume hands each rank its own data position back."""

import json
from pathlib import Path

import pytest
import torch
from chat_pretrain.synth import make_parquet
from trainstack.testing import read_rank_records, run_local_nodes

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")

RECORDER = Path(__file__).parent / "_rows_per_rank.py"


def run_two_nodes(args: list[str], out_dir: Path) -> None:
    run_local_nodes(args, out_dir, nodes=2, timeout=120,
                    env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})


def expected_rows(overrides, rank: int, batches: int) -> list:
    """The row ids of rank `rank`'s first `batches` micro-batches, read by the data class alone."""
    from chat_pretrain.config import load_train_config
    from chat_pretrain.train import build_tokenizer, build_train_batches

    cfg = load_train_config("cpu-tiny", overrides)
    it = iter(build_train_batches(cfg, build_tokenizer(cfg), rank=rank, world_size=2))
    return [row for _ in range(batches) for row in next(it)["row_ids"]]


def test_two_nodes_train_sharded_save_once_and_resume_each_ranks_position(tmp_path, chatlm_dir):
    from trainstack.checkpoint import read_manifest

    train = make_parquet(tmp_path / "train.parquet", 96, median_chars=10, row_group_rows=50, task="copy")
    run = tmp_path / "run"
    overrides = [f"data.train_files=[{train}]", f"tokenizer.path={chatlm_dir}", f"run_dir={run}", "data.id_column=id",
                 "data.bucket_rows=64", "data.max_batch_rows=4", "log_every_steps=1"]
    command = [str(RECORDER), str(tmp_path), "train", "--profile", "cpu-tiny", *overrides]

    run_two_nodes(command + ["max_steps=3"], tmp_path)
    first = read_rank_records(tmp_path, "rows", 2)
    # one process per node: both are local rank 0, on different nodes, with global ranks 0 and 1
    assert [(r[0]["local_rank"], r[0]["world_size"]) for r in first] == [(0, 2), (0, 2)]
    assert sorted(r[0]["group_rank"] for r in first) == [0, 1]
    rows0, rows1 = first[0][0]["rows"], first[1][0]["rows"]
    assert rows0 and rows1 and not set(rows0) & set(rows1)  # both trained, each on its own rows

    # written once, by global rank 0: one complete checkpoint, one log record per step, no leftovers
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-3"]
    step3 = run / "checkpoints" / "step-3"
    assert read_manifest(step3) is not None and (step3 / "model.safetensors").is_file()
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    state = json.loads((step3 / "trainer_state.json").read_text())["extra"]
    assert state["step"] == 3 and [d["batches_done"] for d in state["data_per_rank"]] == [3, 3]

    run_two_nodes(command + ["max_steps=5", "--resume"], tmp_path)
    second = read_rank_records(tmp_path, "rows", 2)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-3", "step-5"]
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]  # continues from the saved step
    state = json.loads((run / "checkpoints" / "step-5" / "trainer_state.json").read_text())["extra"]
    assert [d["batches_done"] for d in state["data_per_rank"]] == [5, 5]
    for rank in (0, 1):
        # each rank picks up at its own position: its 5 batches, none repeated, none skipped
        trained = second[rank][0]["rows"] + second[rank][1]["rows"]
        assert trained == expected_rows(overrides, rank, 5), rank
    assert not set(second[0][1]["rows"]) & set(second[1][1]["rows"])
