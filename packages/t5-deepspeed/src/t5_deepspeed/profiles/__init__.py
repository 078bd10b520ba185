"""Hardware profiles: defaults for a GPU class, applied with --hardware_profile NAME|PATH|auto.

Each YAML has `requires:` (core's Requirements) and `settings:` (t5-deepspeed arguments used as
defaults; anything given on the command line wins).
"""

from importlib import resources


def profile_dir():
    """Entry point for `trainstack doctor` (group trainstack.tasks)."""
    return resources.files("t5_deepspeed") / "profiles"


def profile_settings(name_or_path: str) -> tuple[dict, str]:
    """(settings, log line) for a shipped profile name, a YAML path, or "auto" (best fit here)."""
    from trainstack.hardware import detect_hardware, load_profiles, pick_profile, resolve_profile

    profiles = load_profiles(profile_dir())
    if name_or_path == "auto":
        profile = pick_profile(profiles, detect_hardware())
        how = "picked for this hardware"
    else:
        profile = resolve_profile(name_or_path, profiles)
        how = "as asked"
    return dict(profile.settings), f"hardware profile {profile.name} ({how}): {profile.description}"
