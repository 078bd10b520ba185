"""Hardware profiles: defaults for a GPU class, applied with --profile NAME|PATH|auto (or its
run_translation-style spelling --hardware_profile).

Each YAML has `requires:` (core's Requirements) and `settings:` (t5-deepspeed arguments used as
defaults; anything given on the command line wins).
"""

from importlib import resources


def profile_dir():
    """Entry point for `trainstack doctor` (group trainstack.tasks)."""
    return resources.files("t5_deepspeed") / "profiles"


def profile_settings(name_or_path: str) -> tuple[dict, str]:
    """(settings, log line) for a shipped profile name, a YAML path, or "auto" (best fit here)."""
    from trainstack.hardware import choose_profile, load_profiles

    profile, how = choose_profile(name_or_path, load_profiles(profile_dir()))
    return dict(profile.settings), f"hardware profile {profile.name} ({how}): {profile.description}"


def validate(profile) -> tuple[list[str], list[str]]:
    """`t5-deepspeed profiles validate`: every setting is an argument of t5-deepspeed, of its type."""
    from ..args import check_profile_settings

    return check_profile_settings(profile.settings), []
