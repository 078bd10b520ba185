"""`t5-deepspeed plan`: memory per GPU for ZeRO-2/3 with and without offload, and a recommendation.

    t5-deepspeed plan --model t5-3b --gpu h100-80g
    t5-deepspeed plan --model t5-large --gpu rtx4080s-16g --num_gpus 2
    t5-deepspeed plan --model path/to/config_or_model_dir            # this machine's GPU

Model-state memory comes from DeepSpeed's own estimators (the functions behind
estimate_zero{2,3}_model_states_mem_needs_all_cold), fed with the parameter count of the model
built on the meta device: no GPU and no weights needed. Activations are not in those numbers, so a
setup is only recommended when its model states leave `--activation_headroom` of the GPU free.

The expected step time of `train`'s defaults (`--batch_size` rows of `--tokens` source+target
tokens) is the larger of what the host needs to launch a step and what the GPU needs for its FLOPs,
plus what ZeRO adds per parameter tensor. The constants were fitted to one H200 host's measurements
(BENCHMARKS.md, 2026-12-03): T5 steps at the users' batch sizes are bound by the host, ~8.6 ms a step
plus ~1.6 ms per T5 layer with compiled blocks (plain and ZeRO-2 on a GPU, the default) or ~2.6 ms
eager (ZeRO-3), whatever the width; ZeRO-2 adds ~0.075 ms and ZeRO-3 ~1.2 ms per parameter tensor
(bookkeeping, norms, gathers). Host CPUs differ: the 2026-12-01 host took about 1.5-2x as long for
the same eager steps. Offload (CPU Adam, PCIe) is not estimated.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

from .model_size import ModelShape, model_shape

GIB = 2**30

# Preference when several fit: the users' rule of thumb (plain, then ZeRO-2, then ZeRO-3), computed:
# less communication and no host<->GPU traffic first.
ORDER = ["plain", "zero2", "zero3", "zero2-offload", "zero3-offload"]


# Fitted to one H200 host (BENCHMARKS.md, 2026-12-03); see the module docstring.
HOST_MS_PER_STEP = 8.6
HOST_MS_PER_LAYER = {"compiled": 1.64, "eager": 2.64}
ZERO_MS_PER_TENSOR = {"plain": 0.0, "zero2": 0.075, "zero3": 1.18}
COMPILED_SETUPS = ("plain", "zero2")
"""where `train` compiles T5's blocks by default on a GPU (not under ZeRO-3)"""
GPU_FLOPS_EFFICIENCY = 0.35  # of the dense bf16 peak, for the GPU-bound side of a large batch


@dataclass
class PlanRow:
    setup: str
    gpu_gib: float
    cpu_gib: float
    fits: bool
    why: str
    step_ms: float | None = None
    """expected milliseconds per optimizer step; None where not estimated (offload)"""


def step_ms(setup: str, shape: ModelShape, tokens_per_step: int, gpu_peak_flops: float | None,
            can_compile: bool = True) -> float | None:
    """Expected milliseconds per optimizer step on one GPU (see the module docstring); None for offload.
    `can_compile`: whether the GPU runs compiled blocks (Triton: sm_70+)."""
    if setup not in ZERO_MS_PER_TENSOR:
        return None
    blocks = "compiled" if can_compile and setup in COMPILED_SETUPS else "eager"
    host = HOST_MS_PER_STEP + HOST_MS_PER_LAYER[blocks] * shape.layers
    gpu = 6 * shape.params * tokens_per_step / (GPU_FLOPS_EFFICIENCY * gpu_peak_flops) * 1000 if gpu_peak_flops else 0.0
    return max(host, gpu) + ZERO_MS_PER_TENSOR[setup] * shape.tensors


def estimate(total: int, largest: int, num_gpus: int, num_nodes: int = 1) -> dict[str, tuple[int, int]]:
    """{setup: (cpu bytes, gpu bytes per GPU)} from DeepSpeed's estimators (zero_init for ZeRO-3)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    out = {}
    # plain DDP/single GPU with mixed precision: fp32 weights 4 + grads 4 + Adam 8 bytes per parameter
    out["plain"] = (total * 4 * num_gpus, 16 * total)
    out["zero2"] = estimate_zero2_model_states_mem_needs(total, num_gpus, num_nodes, cpu_offload=False)
    out["zero2-offload"] = estimate_zero2_model_states_mem_needs(total, num_gpus, num_nodes, cpu_offload=True)
    out["zero3"] = estimate_zero3_model_states_mem_needs(total, largest, num_gpus, num_nodes, cpu_offload=False)[:2]
    out["zero3-offload"] = estimate_zero3_model_states_mem_needs(total, largest, num_gpus, num_nodes,
                                                                 cpu_offload=True, cpu_offload_params=True)[:2]
    return out


def make_plan(total: int, largest: int, gpu_gib: float, ram_gib: float, num_gpus: int,
              activation_headroom: float = 0.3) -> tuple[list[PlanRow], str | None]:
    est = estimate(total, largest, num_gpus)
    rows = []
    budget = gpu_gib * (1 - activation_headroom)
    for setup in ORDER:
        cpu_b, gpu_b = est[setup]
        gpu, cpu = gpu_b / GIB, cpu_b / GIB
        if gpu > budget:
            why = f"model states {gpu:.1f} GiB > {budget:.1f} GiB ({1 - activation_headroom:.0%} of {gpu_gib:.0f})"
        elif cpu > ram_gib:
            why = f"needs {cpu:.1f} GiB host RAM > {ram_gib:.0f}"
        else:
            why = ""
        rows.append(PlanRow(setup, round(gpu, 2), round(cpu, 2), not why, why))
    pick = next((r.setup for r in rows if r.fits), None)
    return rows, pick


def main(argv=None) -> int:
    from trainstack.hardware import SIMULATED, detect_hardware, simulated_hardware

    from .args import ModelArguments
    from .train import RunError, resolve_model_config

    p = argparse.ArgumentParser(prog="t5-deepspeed plan", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="shipped size (t5-small, t5-large, t5-3b, tiny-t5), a config/model dir, or a hub id")
    p.add_argument("--gpu", default=None, help=f"simulated hardware ({', '.join(SIMULATED)}); default: this machine")
    p.add_argument("--gpu_memory_gib", type=float, default=None, help="override the GPU memory")
    p.add_argument("--num_gpus", type=int, default=None, help="GPUs on the node (default: from the hardware, at least 1)")
    p.add_argument("--activation_headroom", type=float, default=0.3, help="fraction of GPU memory kept for activations")
    p.add_argument("--batch_size", type=int, default=8, help="rows per GPU per step, for the step time")
    p.add_argument("--tokens", type=int, default=128, help="source+target tokens per row, for the step time")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    a = p.parse_args(argv)
    if a.gpu is not None and a.gpu not in SIMULATED:
        print(f"t5-deepspeed plan: error: unknown --gpu {a.gpu!r}; known: {', '.join(SIMULATED)}")
        return 2
    hw = simulated_hardware(a.gpu) if a.gpu else detect_hardware()
    gpu_gib = a.gpu_memory_gib or (hw.gpu.memory_gib if hw.gpu else None)
    if gpu_gib is None:
        print("t5-deepspeed plan: error: no GPU here; pass --gpu NAME or --gpu_memory_gib N")
        return 2
    num_gpus = a.num_gpus or max(1, len(hw.gpus))
    try:
        config, source = resolve_model_config(ModelArguments(config_name=a.model))
    except RunError as err:
        print(f"t5-deepspeed plan: error: {err}")
        return 2
    from trainstack.metrics import peak_bf16_flops

    shape = model_shape(config)
    total, largest = shape.params, shape.largest_module_params
    rows, pick = make_plan(total, largest, gpu_gib, hw.ram_gib, num_gpus, a.activation_headroom)
    peak = peak_bf16_flops(hw.gpu)
    can_compile = hw.gpu is not None and tuple(hw.gpu.capability) >= (7, 0)
    for r in rows:
        r.step_ms = step_ms(r.setup, shape, a.batch_size * a.tokens, peak, can_compile)
    if a.json:
        print(json.dumps({"model": source, "params": total, "largest_layer_params": largest, "gpu_gib": gpu_gib,
                          "ram_gib": hw.ram_gib, "num_gpus": num_gpus, "batch_size": a.batch_size,
                          "tokens": a.tokens, "rows": [asdict(r) for r in rows], "recommended": pick}))
        return 0
    gpu_name = hw.gpu.name if hw.gpu else "GPU"
    print(f"model {source}: {total / 1e6:.1f}M parameters (largest layer {largest / 1e6:.1f}M), "
          f"{shape.layers} layers, {shape.tensors} parameter tensors")
    print(f"hardware: {num_gpus} x {gpu_name} {gpu_gib:.0f} GiB, host RAM {hw.ram_gib:.0f} GiB")
    print("model states per GPU (DeepSpeed estimators; activations not included); step time estimated for "
          f"{a.batch_size} rows x {a.tokens} tokens per GPU (measured constants of one H200 host; see --help):")
    print(f"  {'setup':<15}{'GPU GiB':>9}{'CPU GiB':>9}{'step ms':>9}  fits")
    for r in rows:
        step = f"{r.step_ms:>9.0f}" if r.step_ms is not None else f"{'-':>9}"
        print(f"  {r.setup:<15}{r.gpu_gib:>9.2f}{r.cpu_gib:>9.2f}{step}  {'yes' if r.fits else 'no: ' + r.why}")
    by = {r.setup: r for r in rows}
    if pick is None:
        print("recommended: none fits; use more GPUs or a node with more host RAM")
    elif pick == "plain":
        faster = ", ".join(f"~{by[s].step_ms:.0f} ms under {s}" for s in ("zero2", "zero3") if by[s].fits)
        print(f"recommended: plain (no --deepspeed): model states fit with room to spare, and a plain step is "
              f"faster (~{by['plain'].step_ms:.0f} ms{'; ' + faster if faster else ''})")
    else:
        print(f"recommended: --deepspeed {pick}")
    return 0
