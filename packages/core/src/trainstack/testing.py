"""Launching several machines' worth of processes on one host, for tests of multi-node runs.

``run_local_nodes(["-m", "my_task", "train", ...], log_dir)`` starts one torchrun agent per "node", as
each machine of a real run would (``--nnodes N --rdzv_backend c10d --rdzv_endpoint 127.0.0.1:PORT``):
the processes get global ranks across the agents and local rank 0 on each, which is what a multi-node
run looks like to the training code. On a CPU host they talk over gloo. A script run by the agents can
report per rank with ``append_rank_record``; the test reads the reports back with ``read_rank_records``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path


class NodesFailed(AssertionError):
    """An agent exited non-zero or ran past the timeout; the message holds the tail of every node's log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def failed_run_text(stdout: str, stderr: str, chars: int = 3000) -> str:
    """What a failed multi-process run printed, for an assertion message: the tails of its stdout and
    stderr and, where a process aborted with faulthandler on (``PYTHONFAULTHANDLER=1``, as CI sets it),
    that process's thread stacks, which the launcher's own traceback would push out of the tail."""
    text = stdout[-chars:] + stderr[-chars:]
    aborted = stderr.find("Fatal Python error")
    if aborted >= 0:
        text += "\n--- where the aborted process was:\n" + stderr[aborted:aborted + chars]
    return text


def run_local_nodes(args: list[str], log_dir, *, nodes: int = 2, procs_per_node: int = 1, timeout: float = 120,
                    env: dict | None = None) -> list[Path]:
    """Run ``torchrun --nnodes NODES --nproc_per_node PROCS --rdzv_backend c10d ... ARGS`` once per node
    and wait for all; returns the node logs (``log_dir/node<i>.log``, stdout and stderr). Raises
    ``NodesFailed`` unless every agent exits 0 within ``timeout`` seconds (the agents are killed then).

    Output goes to files, not pipes: a full pipe would stall one node while the others wait for it in
    a collective. The variables in ``env`` are added to this process's environment."""
    log_dir = Path(log_dir)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--nproc_per_node",
              str(procs_per_node), "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}",
              "--rdzv_id", "local-nodes"]
    full_env = {**os.environ, **(env or {})}
    logs = [log_dir / f"node{i}.log" for i in range(nodes)]
    agents = []
    try:
        for log in logs:
            with open(log, "w") as out:  # the child keeps its own handle
                agents.append(subprocess.Popen(launch + list(args), env=full_env, stdout=out,
                                               stderr=subprocess.STDOUT))
        for agent in agents:
            agent.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    codes = [agent.returncode for agent in agents]
    if codes != [0] * nodes:
        tails = "\n".join(f"--- node {i} (exit {c}):\n{failed_run_text('', log.read_text(), 2500)}"
                          for i, (c, log) in enumerate(zip(codes, logs, strict=True)))
        raise NodesFailed(f"local nodes exited {codes} (negative: killed after {timeout} s or by a signal)\n{tails}")
    return logs


def append_rank_record(out_dir, name: str, **fields) -> Path:
    """Append one JSON line to ``out_dir/<name>.rank<RANK>.jsonl``: this process's launcher ranks
    (rank, local_rank, group_rank, world_size) and ``fields``. For a script run under the launcher."""
    ranks = {k.lower(): int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "GROUP_RANK", "WORLD_SIZE")}
    path = Path(out_dir) / f"{name}.rank{ranks['rank']}.jsonl"
    with open(path, "a") as f:
        f.write(json.dumps({**ranks, **fields}) + "\n")
    return path


def read_rank_records(out_dir, name: str, world_size: int) -> list[list[dict]]:
    """What ``append_rank_record`` wrote, per global rank: one record per run, in order."""
    return [[json.loads(line) for line in (Path(out_dir) / f"{name}.rank{r}.jsonl").read_text().splitlines()]
            for r in range(world_size)]


class StopRun(Exception):
    """Raised by ``record_builders``' loss function once enough micro-batches were seen."""


def record_builders(monkeypatch, module, names, *, stop_after_micro_batches: int,
                    optimizer_builder: str = "build_optimizer_and_scheduler", loss_builder: str = "make_loss_fn"):
    """Wrap a package's train builders (``module.<name>`` for each of ``names``) to record every call:
    (name, bound arguments with defaults applied, result). The optimizer built by ``optimizer_builder``
    counts its steps; the loss function made by ``loss_builder`` records (model, batch; a dict's
    tensors cloned) and raises StopRun at micro-batch ``stop_after_micro_batches``, so a `train` and a `bench`
    run can be compared builder by builder (the package tests that a bench measures what ships).
    Returns {"calls": [...], "losses": [...], "optimizer_steps": n}."""
    import inspect

    import torch

    run = {"calls": [], "losses": [], "optimizer_steps": 0}

    def count_step(*_):
        run["optimizer_steps"] += 1

    def stopping(loss_fn):
        def recorded(model, batch):
            kept = ({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                    if isinstance(batch, dict) else batch)  # (a package's own batch type is kept as given)
            run["losses"].append((model, kept))
            if len(run["losses"]) == stop_after_micro_batches:
                raise StopRun
            return loss_fn(model, batch)

        return recorded

    for name in names:
        real = getattr(module, name)

        def wrapper(*args, _real=real, _name=name, **kwargs):
            out = _real(*args, **kwargs)
            bound = inspect.signature(_real).bind(*args, **kwargs)
            bound.apply_defaults()  # an argument left at its default compares equal to one passed as it
            run["calls"].append((_name, dict(bound.arguments), out))
            if _name == optimizer_builder:
                out[0].register_step_post_hook(count_step)
            return stopping(out) if _name == loss_builder else out

        monkeypatch.setattr(module, name, wrapper)
    return run


def record_loss_batches(module, on_batch) -> None:
    """Make ``module.make_loss_fn`` build loss functions that hand each batch to ``on_batch`` first (a
    script run under ``run_local_nodes`` records what its rank trains on; the training is unchanged)."""
    real = module.make_loss_fn

    def recording(*args, **kwargs):
        loss_fn = real(*args, **kwargs)

        def record(model, batch):
            on_batch(batch)
            return loss_fn(model, batch)

        return record

    module.make_loss_fn = recording


RECIPE_PAGE = Path("docs") / "from-the-users-recipe.md"


def recipe_page_commands(package_dir, prog: str, module: str) -> tuple[Path, list[tuple[str, list[str]]]]:
    """A package's docs/from-the-users-recipe.md and the commands of ours it quotes (doc_commands)."""
    from .doc_commands import quoted_commands

    page = Path(package_dir) / RECIPE_PAGE
    return page, quoted_commands(page.read_text(encoding="utf-8"), prog=prog, module=module)


def check_recipe_page(page: Path, commands: list, minimum: int = 10) -> None:
    """The page quotes at least ``minimum`` of our commands and the package's README links it."""
    assert len(commands) >= minimum, commands
    assert RECIPE_PAGE.as_posix() in (page.parents[1] / "README.md").read_text(encoding="utf-8")


def check_quoted_task_command(cli, line: str, argv: list[str], load_train) -> None:
    """A quoted command of a core task CLI (trainstack.task_cli) parses; a train command's profile and
    overrides load into its config (``load_train(args, overrides)``, the package's own way, nothing
    trains); a profiles command names shipped profiles. Commands with their own parser: the verb is known."""
    command, args, overrides = cli.parse(argv)
    if command.raw:
        return
    if args.command == "train":
        load_train(args, overrides)
    elif args.command == "profiles":
        for name in args.names:
            assert name in {p.name for p in cli.profiles()}, line
