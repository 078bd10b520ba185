"""Samples/s per GPU profile: measured where measured, otherwise estimated from the one measurement.

The estimate keeps the FLOPs per sentence pair and the model FLOPs utilisation measured on one H200
with the h100-80g profile (BENCHMARKS.md run 3: 990.2 samples/s at 16.6% MFU on the lognormal(38)
length mix) and puts them on the profile's GPU's dense bf16 (fp16 on Volta) peak. Activation
checkpointing recomputes the forward (~4/3 the work: x0.75). A slower GPU waits less for the host,
so its real MFU is more likely above than below the H200's: the estimate errs low. Labelled as an
estimate wherever it is printed.
"""

from __future__ import annotations

from dataclasses import dataclass

# One H200, `mt-nllb bench`, 2026-11-30 (BENCHMARKS.md run 3), the h100-80g profile on the fast path.
MEASURED_GPU = "NVIDIA H200"
MEASURED_SAMPLES_PER_S = 990.2
MEASURED_MFU = 0.166
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
    """None for a profile without a known card."""
    gpu = PROFILE_GPU.get(profile_name)
    if gpu is None:
        return None
    flops_per_sample = MEASURED_MFU * _peak(MEASURED_GPU) / MEASURED_SAMPLES_PER_S
    peak = _peak(gpu)
    factor = CHECKPOINTING_FACTOR if checkpointing else 1.0
    samples = MEASURED_MFU * peak * factor / flops_per_sample
    basis = (f"estimate, {gpu.removeprefix('NVIDIA ')}: the H200's measured {MEASURED_MFU:.1%} MFU on this "
             f"card's {peak / 1e12:.0f} TFLOP/s peak" + (", x0.75 for checkpointing" if checkpointing else ""))
    return Throughput(samples, basis)


def throughput_line(profile_name: str, checkpointing: bool) -> str | None:
    """`profiles list --memory`'s throughput line of a profile, or None."""
    t = estimate_throughput(profile_name, checkpointing)
    if t is None:
        return None
    measured = (f"measured {MEASURED_SAMPLES_PER_S:.0f} samples/s on an H200 (BENCHMARKS.md run 3); "
                if profile_name == "h100-80g" else "")
    return (f"  -> {measured}~{t.samples_per_s:.0f} samples/s ({t.basis}); the users' full job (~11.0M pairs) "
            f"~{t.users_job_hours:.1f} h")
