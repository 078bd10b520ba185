"""Hardware profiles: config settings per GPU class, picked with --profile NAME|PATH|auto.

Each YAML has `requires:` (core's Requirements) and `settings:` (TrainConfig keys; dotted overrides
on the command line win). `mt-nllb profiles` lists them (trainstack.task_cli), `--memory` adds each GPU
profile's estimated peak memory (mt_nllb.memory).
"""

from importlib import resources


def profile_dir():
    """Entry point for `trainstack doctor` (group trainstack.tasks)."""
    return resources.files("mt_nllb") / "profiles"
