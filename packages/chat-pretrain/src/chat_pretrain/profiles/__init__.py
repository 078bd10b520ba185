"""Shipped configs (`small`, `large`, `low-ram-12g`, `cpu-tiny`): hardware profiles whose `settings:`
block overrides the TrainConfig defaults. `chat-pretrain train --profile large` picks one by name, and
`--profile auto` (the default) the most demanding one this machine fits."""

from importlib.resources import files


def profile_dir():
    return files(__name__)
