import torch
from trainstack.memory import CleanupPolicy, memory_report


def test_memory_report_rss_grows_with_a_big_allocation():
    import mmap

    # Fresh anonymous pages, written so they are resident. (A tensor is not enough: after other tests
    # freed memory, the allocator can place it in pages the process already holds.)
    before = memory_report()
    big = mmap.mmap(-1, 64 * 1024 * 1024)
    big.write(b"\x01" * len(big))
    after = memory_report()
    assert after.rss_gib - before.rss_gib > 0.04
    big.close()
    d = after.as_dict()
    assert set(d) == {"rss_gib", "gpu_allocated_gib", "gpu_reserved_gib", "gpu_peak_gib"}
    if not torch.cuda.is_available():
        assert d["gpu_peak_gib"] == 0.0


def test_cleanup_policy_off_by_default_and_every_n(monkeypatch):
    assert not any(CleanupPolicy().maybe_cleanup(s) for s in range(100))
    collected = []
    monkeypatch.setattr("trainstack.memory.gc.collect", lambda: collected.append(1))
    policy = CleanupPolicy(every_steps=3)
    ran = [s for s in range(10) if policy.maybe_cleanup(s)]
    assert ran == [3, 6, 9] and len(collected) == 3


def test_cap_cuda_memory_is_a_fraction_of_the_device_and_none_lifts_it(monkeypatch):
    """The cap as set_per_process_memory_fraction: GiB over the device's total, at most the whole device."""
    from types import SimpleNamespace

    import torch
    from trainstack.memory import GIB, cap_cuda_memory

    set_to = []
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=80 * GIB))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d: set_to.append((f, d)))
    cap_cuda_memory(15.5)
    cap_cuda_memory(200)
    cap_cuda_memory(None)
    assert set_to == [(15.5 / 80, 0), (1.0, 0), (1.0, 0)]
