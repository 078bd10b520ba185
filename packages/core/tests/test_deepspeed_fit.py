"""fit through a DeepSpeed engine (accelerate's plugin, ZeRO-2, one CPU rank): the losses of fit without
DeepSpeed, core's checkpoints with the engine's state inside, exact resume, and a checkpoint refused by
the other kind of run in one line."""

import json
import sys
from pathlib import Path

import pytest

ds_comm = pytest.importorskip("deepspeed.comm.torch")

sys.path.insert(0, str(Path(__file__).parent))
import _toy  # noqa: E402
from trainstack.checkpoint import CheckpointError  # noqa: E402
from trainstack.deepspeed_engine import deepspeed_accelerator, destroy_process_group  # noqa: E402
from trainstack.precision import resolve_precision  # noqa: E402

FP32 = resolve_precision("fp32")


@pytest.fixture
def one_cpu_rank(monkeypatch):
    # no launcher, and no build of DeepSpeed's shared-memory all-reduce op (it only helps several CPU ranks)
    monkeypatch.setattr(ds_comm, "build_shm_op", lambda: None)
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    yield
    destroy_process_group()


def _zero2(accum: int) -> dict:
    # gradient_clipping matches LoopConfig's max_grad_norm default (1.0), so both runs clip alike
    return {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": accum, "gradient_clipping": 1.0,
            "zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True, "steps_per_print": 10**9}


def _log(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


def _losses(run_dir) -> dict:
    return {r["step"]: r["loss"] for r in _log(run_dir) if "loss" in r}


def _run_ds(run_dir, max_steps, resume=False):
    with deepspeed_accelerator(_zero2(2), FP32) as accelerator:
        return _toy.run(run_dir, max_steps, 6, resume=resume, accelerator=accelerator)


def test_zero2_trains_like_plain_fit_and_resumes_exactly(tmp_path, one_cpu_rank):
    _toy.run(tmp_path / "plain", 6, 6)
    full, seen_full = _run_ds(tmp_path / "ds", 6)
    plain, ds = _losses(tmp_path / "plain"), _losses(tmp_path / "ds")
    assert sorted(ds) == [1, 2, 3, 4, 5, 6]
    assert ds == pytest.approx(plain, rel=1e-5)  # same batches, accumulation, clipping and AdamW
    assert all(r["grad_norm"] > 0 for r in _log(tmp_path / "ds") if "loss" in r)  # the engine's norm

    step6 = tmp_path / "ds" / "checkpoints" / "step-6"
    files = {p.relative_to(step6).as_posix() for p in step6.rglob("*") if p.is_file()}
    assert "optimizer.pt" not in files and "deepspeed/engine/zero_pp_rank_0_mp_rank_00_optim_states.pt" in files
    assert set(json.loads((step6 / "manifest.json").read_text())["files"]) == files - {"manifest.json"}

    _run_ds(tmp_path / "split", 3)
    second, seen_b = _run_ds(tmp_path / "split", 6, resume=True)
    assert second.steps == 6 and _losses(tmp_path / "split") == ds
    assert seen_b == seen_full[len(seen_full) // 2:]

    # a DeepSpeed checkpoint holds its optimizer state in ZeRO's partitions: a plain run refuses it
    with pytest.raises(CheckpointError, match="saved by a DeepSpeed run") as err:
        _toy.run(tmp_path / "ds", 7, 6, resume=True)
    assert "\n" not in str(err.value)


def test_a_deepspeed_run_refuses_a_checkpoint_without_engine_state(tmp_path, one_cpu_rank):
    _toy.run(tmp_path / "plain", 2, 6)
    with pytest.raises(CheckpointError, match="holds no DeepSpeed engine state") as err:
        _run_ds(tmp_path / "plain", 3, resume=True)
    assert "\n" not in str(err.value)
