"""Process-group defaults: the timeout handler, and NCCL shared memory off only where /dev/shm is too
small, never over the user's own setting."""

import os
from datetime import timedelta

from trainstack.distributed import process_group_defaults


def test_timeout_handler_and_shared_memory_kept_with_room(monkeypatch):
    monkeypatch.delenv("NCCL_SHM_DISABLE", raising=False)
    handlers, line = process_group_defaults(1800, shm_free=30.0)
    assert handlers[0].timeout == timedelta(seconds=1800)
    assert line == "distributed: collective timeout 1800 s; NCCL shared memory on (/dev/shm 30.0 GiB free)"
    assert "NCCL_SHM_DISABLE" not in os.environ


def test_small_shm_turns_nccl_shared_memory_off_and_says_so(monkeypatch):
    monkeypatch.delenv("NCCL_SHM_DISABLE", raising=False)
    _, line = process_group_defaults(600, shm_free=0.0625)
    assert os.environ["NCCL_SHM_DISABLE"] == "1"
    assert "NCCL_SHM_DISABLE=1 (/dev/shm has 64 MiB free" in line


def test_the_users_environment_wins(monkeypatch):
    monkeypatch.setenv("NCCL_SHM_DISABLE", "0")
    _, line = process_group_defaults(600, shm_free=0.01)
    assert os.environ["NCCL_SHM_DISABLE"] == "0" and "from the environment" in line
