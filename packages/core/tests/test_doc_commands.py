from trainstack.doc_commands import command_argv, quoted_commands

PAGE = """Intro `hlbd train` in prose is not a command.

```text
python train.py --use_large_config=True
```

```bash
# a comment line
HLBD_DATA=x hlbd train --profile fast \\
    epochs=3   # trailing comment
accelerate launch --num_processes 2 -m hlbd train optim.lr=1e-3
deepspeed --num_gpus=1 --module hlbd train
echo hi | hlbd generate runs/x "a b"
hlbd profiles show fast > mine.yaml
torchrun --nproc_per_node 2 -m other train
```
"""


def test_quoted_commands_finds_ours_only_with_continuations_and_launchers():
    found = [argv for _, argv in quoted_commands(PAGE, "hlbd", "hlbd")]
    assert found == [
        ["train", "--profile", "fast", "epochs=3"],
        ["train", "optim.lr=1e-3"],
        ["train"],
        ["generate", "runs/x", "a b"],
        ["profiles", "show", "fast"],
    ]


def test_command_argv_keeps_quoted_values_and_drops_redirections():
    assert command_argv('hlbd generate run "🌧️ x" > out.txt', "hlbd", "hlbd") == ["generate", "run", "🌧️ x"]
    assert command_argv("python3 -m hlbd bench --data f", "hlbd", "hlbd") == ["bench", "--data", "f"]
    assert command_argv("python3 train.py", "hlbd", "hlbd") is None
