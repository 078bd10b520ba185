"""Samples/s per GPU profile: measured where measured, otherwise estimated from a measurement.

h100-80g is measured: one H200, BENCHMARKS.md run 9 (1,557.8 samples/s, 28.0% MFU;
an H100 SXM has the same dense bf16 peak). The other cards are estimated from run 3 (990.2 samples/s at 16.6% MFU on
the same lognormal(38) length mix), the fast path they run (CUDA graphs, eager layers; run 5 adds
compiled layers and side-grouped batches, which only h100-80g ships): its FLOPs per sentence pair and
MFU put on the profile's GPU's dense bf16 (fp16 on Volta) peak. Activation checkpointing recomputes
the forward (~4/3 the work: x0.75). A slower GPU waits less for the host, so its real MFU is more
likely above than below the H200's: the estimate errs low. Labelled as an estimate wherever printed.
"""

from __future__ import annotations

from dataclasses import dataclass

MEASURED_GPU = "NVIDIA H200"
# One H200, `mt-nllb bench`, 2026-12-02 (BENCHMARKS.md run 9), the h100-80g profile as shipped.
MEASURED_PROFILE = "h100-80g"
MEASURED_SAMPLES_PER_S = 1557.8
MEASURED_RUN = 9
# One H200, 2026-11-30 (BENCHMARKS.md run 3): the fast path without compiled layers.
BASIS_SAMPLES_PER_S = 990.2
BASIS_MFU = 0.166
CHECKPOINTING_FACTOR = 0.75
USERS_JOB_PAIRS = 11.0e6  # ~5.5M pairs, 2 epochs
# The card each shipped GPU profile is written for (the name the driver reports, for the peak table).
PROFILE_GPU = {
    "h100-80g": "NVIDIA H100 80GB HBM3",
    "a100-40g": "NVIDIA A100-SXM4-40GB",
    "rtx4090-24g": "NVIDIA GeForce RTX 4090",
    "rtx4080s-16g": "NVIDIA GeForce RTX 4080 SUPER",
    "v100-32g": "Tesla V100-SXM2-32GB",
}


@dataclass(frozen=True)
class Throughput:
    samples_per_s: float
    basis: str

    @property
    def users_job_hours(self) -> float:
        return USERS_JOB_PAIRS / self.samples_per_s / 3600


def _peak(gpu_name: str) -> float:
    from trainstack.hardware import GPUInfo
    from trainstack.metrics import peak_bf16_flops

    return peak_bf16_flops(GPUInfo(gpu_name, (0, 0), 0.0))


def estimate_throughput(profile_name: str, checkpointing: bool) -> Throughput | None:
    """None for a profile without a known card. h100-80g: the H200's measurement (same peak)."""
    gpu = PROFILE_GPU.get(profile_name)
    if gpu is None:
        return None
    if profile_name == MEASURED_PROFILE:
        return Throughput(MEASURED_SAMPLES_PER_S, f"measured on an {MEASURED_GPU.removeprefix('NVIDIA ')}, "
                                                  f"BENCHMARKS.md run {MEASURED_RUN}; an H100 SXM has the same bf16 peak")
    flops_per_sample = BASIS_MFU * _peak(MEASURED_GPU) / BASIS_SAMPLES_PER_S
    peak = _peak(gpu)
    factor = CHECKPOINTING_FACTOR if checkpointing else 1.0
    samples = BASIS_MFU * peak * factor / flops_per_sample
    basis = (f"estimate, {gpu.removeprefix('NVIDIA ')}: the H200's measured {BASIS_MFU:.1%} MFU without compiled "
             f"layers on this card's {peak / 1e12:.0f} TFLOP/s peak" + (", x0.75 for checkpointing" if checkpointing else ""))
    return Throughput(samples, basis)


def throughput_line(profile_name: str, checkpointing: bool) -> str | None:
    """`profiles list --memory`'s throughput line of a profile, or None."""
    t = estimate_throughput(profile_name, checkpointing)
    if t is None:
        return None
    return (f"  -> ~{t.samples_per_s:.0f} samples/s ({t.basis}); the users' full job (~11.0M pairs) "
            f"~{t.users_job_hours:.1f} h")
