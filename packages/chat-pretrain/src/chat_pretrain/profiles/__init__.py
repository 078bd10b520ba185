"""Shipped configs (`small`, `large`, `low-ram-12g`, `cpu-tiny`): hardware profiles whose `settings:`
block overrides the TrainConfig defaults. `chat-pretrain train --config large` picks one by name."""

from importlib.resources import files


def profile_dir():
    return files(__name__)
