"""Shipped recipes: fast.yaml (default) and users-baseline.yaml."""

from importlib import resources


def profile_dir():
    return resources.files(__name__)


def shipped_profiles() -> list:
    from trainstack.hardware import load_profiles

    return load_profiles(profile_dir())
