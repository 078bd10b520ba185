"""`mt-nllb profiles list --memory` states each GPU profile's samples/s: measured on the H200 for
h100-80g, estimated from a measurement for the other cards, and labelled so."""

import pytest
from mt_nllb.throughput import BASIS_SAMPLES_PER_S, MEASURED_SAMPLES_PER_S, PROFILE_GPU, estimate_throughput


def test_h100_profile_rate_is_the_h200_measurement():
    # an H100 SXM and an H200 share the dense bf16 peak (989 TFLOP/s)
    t = estimate_throughput("h100-80g", checkpointing=False)
    assert t.samples_per_s == pytest.approx(MEASURED_SAMPLES_PER_S) and t.basis.startswith("measured")
    assert t.users_job_hours == pytest.approx(11.0e6 / MEASURED_SAMPLES_PER_S / 3600)


def test_estimates_scale_with_the_cards_peak_and_checkpointing():
    a100 = estimate_throughput("a100-40g", checkpointing=False).samples_per_s
    assert a100 == pytest.approx(BASIS_SAMPLES_PER_S * 312 / 989, rel=1e-3)
    plain = estimate_throughput("rtx4090-24g", checkpointing=False).samples_per_s
    recomputing = estimate_throughput("rtx4090-24g", checkpointing=True)
    assert recomputing.samples_per_s == pytest.approx(0.75 * plain)
    assert "estimate" in recomputing.basis and "checkpointing" in recomputing.basis
    assert estimate_throughput("cpu-debug", checkpointing=False) is None


def test_profiles_memory_prints_a_rate_for_every_gpu_profile(capsys):
    from mt_nllb.cli import main

    assert main(["profiles", "list", "--memory"]) == 0
    out = capsys.readouterr().out
    for name in PROFILE_GPU:
        assert f"\n{name} (nllb-600m" in out
    rates = [line for line in out.splitlines() if "samples/s" in line and line.startswith("  -> ")]
    assert len(rates) == len(PROFILE_GPU)
    assert all("users' full job" in line for line in rates)
    assert sum(f"~{MEASURED_SAMPLES_PER_S:.0f} samples/s (measured on an H200" in line for line in rates) == 1
    assert sum("samples/s (estimate, " in line for line in rates) == len(PROFILE_GPU) - 1
