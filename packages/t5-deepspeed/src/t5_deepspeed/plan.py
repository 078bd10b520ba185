"""`t5-deepspeed plan`: memory per GPU for ZeRO-2/3 with and without offload, and a recommendation.

    t5-deepspeed plan --model t5-3b --gpu h100-80g
    t5-deepspeed plan --model t5-large --gpu rtx4080s-16g --num_gpus 2
    t5-deepspeed plan --model path/to/config_or_model_dir            # this machine's GPU

Model-state memory comes from DeepSpeed's own estimators (the functions behind
estimate_zero{2,3}_model_states_mem_needs_all_cold), fed with the parameter count of the model
built on the meta device: no GPU and no weights needed. Activations are not in those numbers, so a
setup is only recommended when its model states leave `--activation_headroom` of the GPU free.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

GIB = 2**30

# Preference when several fit: the users' rule of thumb (plain, then ZeRO-2, then ZeRO-3), computed:
# less communication and no host<->GPU traffic first.
ORDER = ["plain", "zero2", "zero3", "zero2-offload", "zero3-offload"]


@dataclass
class PlanRow:
    setup: str
    gpu_gib: float
    cpu_gib: float
    fits: bool
    why: str


def count_params(config) -> tuple[int, int]:
    """(total parameters, parameters of the largest single module) from a config, on the meta device."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    with torch.device("meta"):
        model = AutoModelForSeq2SeqLM.from_config(config)
    # the same rule as deepspeed's model_to_params: tied weights counted once, largest own-params module
    total = sum({id(p): p.numel() for p in model.parameters()}.values())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


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
    total, largest = count_params(config)
    rows, pick = make_plan(total, largest, gpu_gib, hw.ram_gib, num_gpus, a.activation_headroom)
    if a.json:
        print(json.dumps({"model": source, "params": total, "largest_layer_params": largest, "gpu_gib": gpu_gib,
                          "ram_gib": hw.ram_gib, "num_gpus": num_gpus, "rows": [asdict(r) for r in rows],
                          "recommended": pick}))
        return 0
    gpu_name = hw.gpu.name if hw.gpu else "GPU"
    print(f"model {source}: {total / 1e6:.1f}M parameters (largest layer {largest / 1e6:.1f}M)")
    print(f"hardware: {num_gpus} x {gpu_name} {gpu_gib:.0f} GiB, host RAM {hw.ram_gib:.0f} GiB")
    print("model states per GPU (DeepSpeed estimators; activations not included):")
    print(f"  {'setup':<15}{'GPU GiB':>9}{'CPU GiB':>9}  fits")
    for r in rows:
        print(f"  {r.setup:<15}{r.gpu_gib:>9.2f}{r.cpu_gib:>9.2f}  {'yes' if r.fits else 'no: ' + r.why}")
    if pick is None:
        print("recommended: none fits; use more GPUs or a node with more host RAM")
    elif pick == "plain":
        print("recommended: plain (no --deepspeed): model states fit with room to spare; DeepSpeed adds nothing")
    else:
        print(f"recommended: --deepspeed {pick}")
    return 0
