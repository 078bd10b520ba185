"""Hardware profiles: config settings per GPU class, picked with --profile NAME|PATH|auto.

Each YAML has `requires:` (core's Requirements) and `settings:` (TrainConfig keys; dotted overrides
on the command line win).
"""

from importlib import resources


def profile_dir():
    """Entry point for `trainstack doctor` (group trainstack.tasks)."""
    return resources.files("mt_nllb") / "profiles"


def resolve(name_or_path: str):
    """(Profile, how) for a shipped name, a YAML path, or "auto" (the best fit for this machine)."""
    from trainstack.hardware import detect_hardware, load_profiles, pick_profile, resolve_profile

    profiles = load_profiles(profile_dir())
    if name_or_path == "auto":
        return pick_profile(profiles, detect_hardware()), "picked for this hardware"
    return resolve_profile(name_or_path, profiles), "as asked"


def print_profiles() -> int:
    from trainstack.hardware import detect_hardware, load_profiles, why_not_fits

    hw = detect_hardware()
    for p in sorted(load_profiles(profile_dir()), key=lambda p: p.name):
        why = why_not_fits(p, hw)
        fits = "fits here" if not why else "not here: " + "; ".join(why)
        print(f"{p.name:<14} {p.description}  [{fits}]")
    return 0
