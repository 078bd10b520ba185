"""Shipped recipes: fast.yaml (default) and users-baseline.yaml."""

from importlib import resources


def profile_dir():
    return resources.files(__name__)
