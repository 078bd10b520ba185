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


def print_profiles(argv=()) -> int:
    """mt-nllb profiles [--memory]: each shipped profile, whether it fits this machine, and with
    --memory the estimated peak GPU memory of its worst-case step (mt_nllb.memory)."""
    import argparse

    from trainstack.hardware import detect_hardware, load_profiles, why_not_fits

    p = argparse.ArgumentParser(prog="mt-nllb profiles", description=print_profiles.__doc__)
    p.add_argument("--memory", action="store_true", help="estimated peak memory per GPU profile (worst case)")
    args = p.parse_args(list(argv))
    hw = detect_hardware()
    profiles = sorted(load_profiles(profile_dir()), key=lambda p: p.name)
    for prof in profiles:
        why = why_not_fits(prof, hw)
        fits = "fits here" if not why else "not here: " + "; ".join(why)
        print(f"{prof.name:<14} {prof.description}  [{fits}]")
    if args.memory:
        from ..memory import estimate_for_profile

        for prof in profiles:
            if prof.requires.gpu_count == 0:
                continue
            plan = estimate_for_profile(prof.name)
            budget = prof.requires.min_gpu_memory_gib  # rtx4080s-16g: 15, the acceptance limit
            verdict = "fits" if plan.reserved_gib <= budget else "DOES NOT FIT"
            print()
            print(plan.table())
            print(f"  -> {verdict} in {budget:g} GiB (estimate; measured numbers in BENCHMARKS.md)")
    return 0
