import pytest
from trainstack.hardware import (
    SIMULATED,
    GPUInfo,
    Hardware,
    NoProfileFits,
    ProfileError,
    detect_hardware,
    load_profile,
    load_profiles,
    pick_profile,
    resolve_profile,
    simulated_hardware,
    why_not_fits,
)

PROFILES = {
    "cpu": "requires:\n  min_ram_gib: 2\nsettings:\n  batch: 2\n",
    "rtx2080s-8g": 'requires:\n  gpu_count: 1\n  min_gpu_memory_gib: 7.5\n  min_compute_capability: "7.5"\nsettings:\n  batch: 8\n',
    "rtx3080-10g": 'requires:\n  gpu_count: 1\n  min_gpu_memory_gib: 9.5\n  min_compute_capability: "8.0"\nsettings:\n  batch: 12\n',
    "rtx4080s-16g": "description: one 16 GB Ada card\nrequires:\n  gpu_count: 1\n  min_gpu_memory_gib: 15\n"
    "  min_compute_capability: 8.9\nsettings:\n  batch: 16\n  lr: 3e-4\n",
    "2x-rtx2080s-8g": 'requires:\n  gpu_count: 2\n  min_gpu_memory_gib: 7.5\n  min_compute_capability: "7.5"\nsettings:\n  batch: 8\n',
    "h100-80g": 'requires:\n  gpu_count: 1\n  min_gpu_memory_gib: 79\n  min_compute_capability: "9.0"\n  min_ram_gib: 64\nsettings:\n  batch: 128\n',
}


@pytest.fixture
def profile_dir(tmp_path):
    for name, text in PROFILES.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    (tmp_path / "README.md").write_text("not a profile")
    return tmp_path


def test_detect_hardware_on_this_machine():
    hw = detect_hardware()
    assert hw.cpu_count >= 1 and hw.ram_gib > 0.1
    assert hw.has_gpu == (hw.gpu is not None)


def test_simulated_machines():
    assert set(SIMULATED) == {"rtx2080s-8g", "rtx4080s-16g", "rtx3080-10g", "a100-40g", "h100-80g", "h200-141g",
                              "2x-rtx2080s-8g", "cpu"}
    assert simulated_hardware("rtx2080s-8g").gpu.capability == (7, 5)
    assert simulated_hardware("rtx4080s-16g").gpu.capability == (8, 9)
    assert simulated_hardware("rtx3080-10g").gpu.capability == (8, 6)
    assert simulated_hardware("h100-80g").gpu.memory_gib > 78
    assert simulated_hardware("h200-141g").gpu.memory_gib > 139   # what torch reports for an H200
    assert len(simulated_hardware("2x-rtx2080s-8g").gpus) == 2
    assert not simulated_hardware("cpu").has_gpu and simulated_hardware("cpu").gpu is None
    with pytest.raises(KeyError, match="known: rtx2080s-8g"):
        simulated_hardware("tpu")


def test_load_profile(profile_dir):
    p = load_profile(profile_dir / "rtx4080s-16g.yaml")
    assert p.name == "rtx4080s-16g" and p.description == "one 16 GB Ada card"
    assert p.requires.min_compute_capability == (8, 9)  # unquoted 8.9 read as a float still works
    assert p.requires.gpu_count == 1 and p.requires.min_gpu_memory_gib == 15
    assert p.settings == {"batch": 16, "lr": 3e-4}  # 3e-4 is a number, not the string "3e-4"
    profiles = load_profiles(profile_dir)
    assert [q.name for q in profiles] == sorted(PROFILES)


def test_load_profiles_from_importlib_resources(profile_dir, monkeypatch):
    import importlib.resources
    import sys

    (profile_dir / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(profile_dir.parent))
    pkg = profile_dir.name
    assert len(load_profiles(importlib.resources.files(pkg))) == len(PROFILES)
    sys.modules.pop(pkg, None)


@pytest.mark.parametrize(
    "machine, expected",
    [
        ("h100-80g", "h100-80g"),
        ("a100-40g", "rtx3080-10g"),  # 39 GiB, sm_80: not sm_89, not 79 GiB
        ("rtx4080s-16g", "rtx4080s-16g"),
        ("rtx3080-10g", "rtx3080-10g"),
        ("rtx2080s-8g", "rtx2080s-8g"),
        ("2x-rtx2080s-8g", "2x-rtx2080s-8g"),
        ("cpu", "cpu"),
    ],
)
def test_pick_profile_most_demanding_fit(profile_dir, machine, expected):
    assert pick_profile(load_profiles(profile_dir), simulated_hardware(machine)).name == expected


def test_why_not_fits_reasons(profile_dir):
    profiles = {p.name: p for p in load_profiles(profile_dir)}
    turing = simulated_hardware("rtx2080s-8g")
    assert why_not_fits(profiles["rtx2080s-8g"], turing) == []
    reasons = why_not_fits(profiles["rtx4080s-16g"], turing)
    assert any("7.8 GiB, needs 15 GiB" in r for r in reasons)
    assert any("sm_75, needs compute capability 8.9+" in r for r in reasons)
    assert why_not_fits(profiles["2x-rtx2080s-8g"], turing) == ["needs 2 GPU(s), found 1"]
    assert "RAM 31.3 GiB, needs 64 GiB" in why_not_fits(profiles["h100-80g"], turing)


def test_no_profile_fits_lists_each_profile(profile_dir):
    profiles = [p for p in load_profiles(profile_dir) if p.name != "cpu"]
    with pytest.raises(NoProfileFits) as e:
        pick_profile(profiles, simulated_hardware("cpu"))
    msg = str(e.value)
    for p in profiles:
        assert f"  {p.name}: " in msg
    assert "needs 1 GPU(s), found 0" in msg
    with pytest.raises(NoProfileFits, match="no profiles given"):
        pick_profile([], simulated_hardware("cpu"))


def test_resolve_profile_by_name_or_path(profile_dir, tmp_path_factory):
    profiles = load_profiles(profile_dir)
    assert resolve_profile("rtx3080-10g", profiles).settings == {"batch": 12}
    custom = tmp_path_factory.mktemp("mine") / "my-box.yaml"
    custom.write_text("requires:\n  gpu_count: 1\nsettings:\n  batch: 3\n")
    assert resolve_profile(str(custom), profiles).name == "my-box"
    assert resolve_profile(custom, profiles).settings == {"batch": 3}
    with pytest.raises(ProfileError, match="unknown profile 'rtx9090'; shipped: .*rtx2080s-8g"):
        resolve_profile("rtx9090", profiles)
    with pytest.raises(ProfileError, match="not found"):
        resolve_profile(str(custom.parent / "missing.yaml"), profiles)


def test_bad_profiles_name_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("requires:\n  min_gpu_mem: 8\n")
    with pytest.raises(ProfileError, match=r"bad.yaml: unknown key 'requires.min_gpu_mem'; allowed: min_gpu_memory_gib"):
        load_profile(bad)
    bad.write_text("require:\n  gpu_count: 1\n")
    with pytest.raises(ProfileError, match="unknown top-level key 'require'"):
        load_profile(bad)
    bad.write_text('requires:\n  min_compute_capability: "eight"\n')
    with pytest.raises(ProfileError, match="compute capability"):
        load_profile(bad)
    bad.write_text("requires:\n  gpu_count: many\n")
    with pytest.raises(ProfileError, match="bad.yaml"):
        load_profile(bad)


def test_capability_spellings(tmp_path):
    for spelling, cc in [('"8.0"', (8, 0)), ("7.5", (7, 5)), ("sm_86", (8, 6)), ("[9, 0]", (9, 0)), ("'10.0'", (10, 0))]:
        f = tmp_path / "p.yaml"
        f.write_text(f"requires:\n  min_compute_capability: {spelling}\n")
        assert load_profile(f).requires.min_compute_capability == cc, spelling


def test_describe():
    hw = Hardware((GPUInfo("X", (8, 0), 40.0),) * 2, 8, 64.0)
    assert hw.describe().startswith("2x X (sm_80, 40.0 GiB)")
    assert simulated_hardware("cpu").describe().startswith("no GPU")


def _gpu_machine(memory_gib: float, capability=(8, 9)) -> Hardware:
    """A faked GPU of any size: what detect_hardware would return on such a card."""
    return Hardware((GPUInfo("Fake GPU", capability, memory_gib),), cpu_count=8, ram_gib=31.0)


def test_auto_on_a_gpu_never_falls_back_to_a_cpu_profile_silently(profile_dir):
    from trainstack.hardware import NoGPUProfileFits, choose_profile

    profiles = [p for p in load_profiles(profile_dir) if p.name in ("cpu", "rtx4080s-16g", "h100-80g")]
    with pytest.raises(NoGPUProfileFits) as e:
        pick_profile(profiles, _gpu_machine(8.0))
    msg = str(e.value)
    assert "\n" not in msg and "Fake GPU (sm_89, 8.0 GiB)" in msg
    assert "closest: rtx4080s-16g (GPU 0 has 8.0 GiB, needs 15 GiB)" in msg  # the least demanding GPU profile
    assert "--profile cpu" in msg and "profiles show rtx4080s-16g" in msg
    assert e.value.closest.name == "rtx4080s-16g" and e.value.cpu_profile.name == "cpu"
    with pytest.raises(NoGPUProfileFits, match="closest: rtx4080s-16g .*sm_80, needs compute capability 8.9"):
        choose_profile("auto", profiles, _gpu_machine(16.0, capability=(8, 0)))
    # asking for the CPU by name works; a GPU that fits gets its profile; no GPU gets the CPU profile
    assert choose_profile("cpu", profiles, _gpu_machine(8.0)) == (profiles[0], "as asked")
    assert choose_profile("auto", profiles, _gpu_machine(16.0))[0].name == "rtx4080s-16g"
    assert choose_profile("auto", profiles, simulated_hardware("cpu"))[0].name == "cpu"
    # a package whose profiles are all CPU recipes (no GPU profile to prefer) keeps them on a GPU
    assert pick_profile([profiles[0]], _gpu_machine(8.0)).name == "cpu"


def test_requires_packages(profile_dir):
    (profile_dir / "x.yaml").write_text("requires:\n  gpu_count: 1\n  packages: [bitsandbytes]\nsettings: {}\n")
    p = load_profile(profile_dir / "x.yaml")
    assert p.requires.packages == ("bitsandbytes",)
    assert why_not_fits(p, simulated_hardware("h100-80g")) == []  # a package is not a hardware fit criterion
    (profile_dir / "x.yaml").write_text("requires:\n  packages: bitsandbytes\nsettings: {}\n")
    with pytest.raises(ProfileError, match="'requires.packages' must be a list of import names"):
        load_profile(profile_dir / "x.yaml")
