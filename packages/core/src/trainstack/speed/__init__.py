"""The fast path: length buckets, a compiled step, CUDA-graph replay, a compile cache on disk.

    from trainstack.speed import SpeedConfig, TrainStep, resolve_speed
    speed = resolve_speed(cfg.speed, device, use_grad_scaler=precision.use_grad_scaler)
    print(speed.reason)
    step = TrainStep(model, loss_fn, optimizer, speed, scheduler=sched, grad_accum_steps=8, max_grad_norm=1.0,
                     autocast=lambda: precision.autocast(device.type))

See docs/core-api.md (trainstack.speed) for the contract.
"""

from .buckets import LengthBuckets
from .cache import (
    allow_compilations,
    cache_root,
    compile_cache_use,
    compiled_graphs,
    describe_first_step,
    enable_compile_cache,
    first_step_report,
    process_start_clock,
)
from .config import Speed, SpeedConfig, SpeedError, resolve_speed
from .shapes import BatchShapes
from .step import (
    CudaGraphs,
    StepStats,
    TrainStep,
    compile_for,
    eager_optimizer_state,
    one_graph_for_all_sizes,
    to_device,
)

__all__ = ["BatchShapes", "CudaGraphs", "LengthBuckets", "Speed", "SpeedConfig", "SpeedError", "StepStats", "TrainStep",
           "allow_compilations", "cache_root", "compile_cache_use", "compile_for", "compiled_graphs",
           "describe_first_step", "eager_optimizer_state", "enable_compile_cache", "first_step_report",
           "one_graph_for_all_sizes", "process_start_clock", "resolve_speed", "to_device"]

