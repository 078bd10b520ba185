"""`report_to` is one key with one meaning in every package that trains through core's loop: where
log.jsonl's numbers also go (tensorboard by default, wandb, or [none]); a wrong name is one line."""

import pytest
from trainstack.config import ConfigError, load_config


def _loop_config(package: str, overrides: list[str]):
    if package == "mt_nllb":
        from mt_nllb.config import TrainConfig
        from mt_nllb.train import build_loop_config

        return build_loop_config(load_config(TrainConfig, {}, overrides), total_steps=10)
    if package == "chat_pretrain":
        from chat_pretrain.config import TrainConfig
        from chat_pretrain.train import build_loop_config

        return build_loop_config(load_config(TrainConfig, {}, overrides))
    from esm2ae.config import Config
    from esm2ae.train import build_loop_config

    return build_loop_config(load_config(Config, {}, overrides), max_steps=10, accum=1)


@pytest.mark.parametrize("package", ["mt_nllb", "chat_pretrain", "esm2ae"])
def test_report_to_reaches_the_loop(package):
    assert _loop_config(package, []).report_to == ["tensorboard"]
    assert _loop_config(package, ["report_to=[none]"]).report_to == ["none"]
    assert _loop_config(package, ["report_to=[tensorboard,wandb]"]).report_to == ["tensorboard", "wandb"]
    with pytest.raises((ConfigError, ValueError)) as err:
        _loop_config(package, ["report_to=[tensorbord]"])
    assert "report_to" in str(err.value) and "\n" not in str(err.value)
