"""DeepSpeed through ``fit``: accelerate's DeepSpeedPlugin builds the engine, ``fit`` drives it, and the
engine's own state is saved inside core's checkpoint directory.

    with deepspeed_accelerator(ds_config, precision) as accelerator:
        result = fit(..., accelerator=accelerator)

``ds_config`` is a DeepSpeed config dict with numbers, not "auto" (``train_micro_batch_size_per_gpu``,
``gradient_accumulation_steps`` = ``LoopConfig.grad_accum_steps``, ``gradient_clipping``, ZeRO, fp16/bf16).
Inside ``fit`` each micro-batch runs the engine's backward and the last one of a window the engine's step
(its clipping, ZeRO's optimizer step, the fp16 loss scale); ``fit`` then steps the scheduler and logs the
engine's gradient norm. A checkpoint holds core's files (model, scheduler, RNG, data position; no
``optimizer.pt``) and ``deepspeed/``, the engine's ZeRO partitions and loss scale, written by every
process together before the manifest. On resume the engine's files are scanned for pickled code before
anything loads, and loaded with ``weights_only`` forced (``trainstack.safe_loading``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from .checkpoint import CheckpointError
from .safe_loading import check_pickles_are_plain, weights_only_loading

ENGINE_STATE_DIR = "deepspeed"
"""Inside a checkpoint directory: the engine's files (``engine/``, DeepSpeed's recovery scripts)."""
_TAG = "engine"
_LAUNCHER_ENV = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}


def uses_deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def _reset_accelerate_state() -> None:
    # accelerate keeps one state per process: a plain Accelerator made earlier would hide the plugin, and
    # one made later would inherit DeepSpeed
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@contextlib.contextmanager
def deepspeed_accelerator(ds_config: dict, precision):
    """An Accelerator running DeepSpeed with ``ds_config`` (for ``fit(accelerator=...)``), and accelerate's
    process-wide state and environment put back afterwards.

    Without a launcher (one process) a one-rank process group on an in-memory store is created first:
    DeepSpeed needs one even for one GPU, and would otherwise try MPI discovery and a free port. The
    group stays for the life of the process (DeepSpeed caches it). DeepSpeed on CPU runs one process:
    several ranks on CPU would each train alone under accelerate, so that is refused."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin

    launched = "LOCAL_RANK" in os.environ
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("DeepSpeed on CPU runs one process (accelerate gives each CPU rank its own run); "
                         "start it without a launcher, or train on GPUs")
    saved_env = {k: os.environ.get(k) for k in (*_LAUNCHER_ENV, "ACCELERATE_USE_DEEPSPEED")}
    if not launched:
        os.environ.update(_LAUNCHER_ENV)
        if not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(), rank=0, world_size=1)
    _reset_accelerate_state()
    try:
        yield Accelerator(mixed_precision=precision.accelerate_mixed_precision,
                          deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=ds_config))
    finally:
        _reset_accelerate_state()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def destroy_process_group() -> None:
    """Destroy the process group and DeepSpeed's cached clone of it, so that a later DeepSpeed run in this
    process builds new ones (a task CLI command does this when it returns; tests and notebooks that run
    several jobs in one process call it between them)."""
    import torch

    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    groups = sys.modules.get("deepspeed.utils.groups")   # never imported: nothing cached
    if groups is not None:
        groups._WORLD_GROUP = None


def check_engine_state(checkpoint, *, deepspeed: bool) -> None:
    """Before anything of ``checkpoint`` is loaded: a DeepSpeed run needs the engine's state there, with
    no pickled code in it; a run without DeepSpeed cannot use a DeepSpeed checkpoint (its optimizer state
    is in ZeRO's partitions). One-line ``CheckpointError`` otherwise."""
    state_dir = Path(checkpoint) / ENGINE_STATE_DIR
    if deepspeed and not (state_dir / _TAG).is_dir():
        raise CheckpointError(f"{checkpoint}: holds no DeepSpeed engine state ({ENGINE_STATE_DIR}/{_TAG}/): it was "
                              f"saved by a run without DeepSpeed; resume it the same way, or start a new run")
    if not deepspeed and state_dir.is_dir():
        raise CheckpointError(f"{checkpoint}: was saved by a DeepSpeed run (its optimizer state is in "
                              f"{ENGINE_STATE_DIR}/); resume it with DeepSpeed on, as it was trained")
    if deepspeed:
        check_pickles_are_plain(state_dir, ("**/*.pt",))


def save_engine_state(engine, directory, accelerator) -> None:
    """Every process calls it together, once the main process has created ``directory``: each rank writes
    its ZeRO partition into ``directory/deepspeed``."""
    accelerator.wait_for_everyone()
    engine.save_checkpoint(str(Path(directory) / ENGINE_STATE_DIR), tag=_TAG, save_latest=False)
    accelerator.wait_for_everyone()


def load_engine_state(engine, checkpoint) -> None:
    """The engine's partitions and loss scale from ``checkpoint`` (checked first by ``check_engine_state``),
    every ``torch.load`` forced to ``weights_only``. The scheduler is core's (``scheduler.pt``)."""
    state_dir = Path(checkpoint) / ENGINE_STATE_DIR
    with weights_only_loading():
        loaded, _ = engine.load_checkpoint(str(state_dir), tag=_TAG, load_optimizer_states=True,
                                           load_lr_scheduler_states=False)
    if loaded is None:
        raise CheckpointError(f"{state_dir}: DeepSpeed could not load its engine state from it")
