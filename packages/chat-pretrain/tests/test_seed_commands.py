"""The users' own commands (SEEDS.md's chat-pretrain recipe: their train.py flags) start and train, here
on CPU with the tiny T5 for 2 optimizer steps: the large config, its resume, and the overridden run.
Their launcher prefix (`accelerate launch --multi_gpu --num_processes 3`) is left out: several processes
are tested in test_train.py and test_two_nodes.py."""

import json

from chat_pretrain.cli import main
from chat_pretrain.synth import make_parquet


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def test_users_commands_start_and_train(tmp_path, chatlm_dir, capsys):
    data = make_parquet(tmp_path / "train.parquet", 200, median_chars=10, row_group_rows=100)
    run = tmp_path / "run"
    tiny = ["--no-progress", "model.name=tiny", f"data.train_files=[{data}]", f"tokenizer.path={chatlm_dir}",
            f"run_dir={run}"]

    # accelerate launch ... train --use_large_config=True
    assert main(["train", "--use_large_config=True", *tiny, "max_steps=2"]) == 0
    out = capsys.readouterr().out
    assert "profile large (as asked)" in out or "profile low-ram-12g" in out  # the low-RAM rule on a small host
    assert "speed: compile off, CUDA graphs off (CPU)" in out
    first = _summary(run)
    assert first["steps"] == 2 and first["interrupted"] is False and first["last_loss"] == first["last_loss"]

    # ... train --use_large_config=True --is_keep_training=True: continues the same run
    assert main(["train", "--use_large_config=True", "--is_keep_training=True", *tiny, "max_steps=4"]) == 0
    assert "resumed from" in capsys.readouterr().out and _summary(run)["steps"] == 4
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 4

    # ... train --epochs=5 --learn_rate=0.0002 --batch_size_per_gpu=24 --gradient_accumulation_steps=4 --max_seq_len=128
    other = tmp_path / "other"
    users = ["--epochs=5", "--learn_rate=0.0002", "--batch_size_per_gpu=24", "--gradient_accumulation_steps=4",
             "--max_seq_len=128"]
    assert main(["train", *users, *tiny[:-1], f"run_dir={other}", "max_steps=2"]) == 0
    capsys.readouterr()
    config = (other / "config.yaml").read_text()
    for line in ("epochs: 5", "lr: 0.0002", "batch_size: 24", "grad_accum_steps: 4", "max_seq_len: 128"):
        assert line in config, line
    assert _summary(other)["steps"] == 2
