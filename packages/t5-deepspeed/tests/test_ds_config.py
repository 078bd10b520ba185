import json

import pytest
from t5_deepspeed.ds_config import (
    SHIPPED_BASES,
    DeepSpeedConfigError,
    apply_run_precision,
    load_ds_config,
    offload_devices,
    shipped_names,
    zero_stage,
)


@pytest.mark.parametrize("name", shipped_names())
def test_every_shipped_config_loads_and_validates(name):
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg, source = load_ds_config(name)
    assert source == f"shipped:{name}"
    assert zero_stage(cfg) == (3 if name.startswith("zero3") else 2)
    assert ("offload" in name) == bool(offload_devices(cfg))
    precision = name.rsplit("-", 1)[1]
    apply_run_precision(cfg, precision)
    assert cfg[precision]["enabled"] is True
    # fill the Trainer's "auto" keys with numbers, then let DeepSpeed's own parser check the file
    filled = json.loads(json.dumps(cfg).replace('"auto"', "1"))
    filled["train_batch_size"] = filled["train_micro_batch_size_per_gpu"] * filled["gradient_accumulation_steps"]
    for block in ("optimizer",):
        if block in filled:
            filled[block]["params"].update(lr=1e-4, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.0)
    parsed = DeepSpeedConfig(filled)  # DeepSpeed's own pydantic validation (world size 1 without dist)
    assert parsed.zero_config.stage == zero_stage(cfg)
    if name.startswith("zero3"):
        assert cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize("base", SHIPPED_BASES)
def test_base_name_picks_variant_by_precision(base):
    assert load_ds_config(base, "bf16")[1] == f"shipped:{base}-bf16"
    assert load_ds_config(base, "fp16")[1] == f"shipped:{base}-fp16"
    assert load_ds_config(base, "fp32")[1] == f"shipped:{base}-bf16"  # auto -> disabled for fp32


def test_unknown_name_is_one_line_listing_shipped():
    with pytest.raises(DeepSpeedConfigError) as e:
        load_ds_config("zero4")
    msg = str(e.value)
    assert "\n" not in msg and "unknown DeepSpeed config 'zero4'" in msg and "zero3-offload" in msg


def test_malformed_json_names_file_line_and_column(tmp_path):
    bad = tmp_path / "ds.json"
    bad.write_text('{\n  "zero_optimization": {"stage": 2,}\n}\n')
    with pytest.raises(DeepSpeedConfigError) as e:
        load_ds_config(str(bad))
    assert "\n" not in str(e.value)
    assert str(bad) in str(e.value) and "line 2" in str(e.value)


def test_missing_file_path():
    with pytest.raises(DeepSpeedConfigError, match="not found"):
        load_ds_config("configs/ds_config_zero2.json")


def test_users_fp16_config_switched_to_bf16(tmp_path):
    # the HF docs' ds_config_zero2.json, as the users have it
    users = {"fp16": {"enabled": "auto", "loss_scale": 0}, "zero_optimization": {"stage": 2},
             "train_micro_batch_size_per_gpu": "auto"}
    path = tmp_path / "ds_config_zero2.json"
    path.write_text(json.dumps(users))
    cfg, _ = load_ds_config(str(path))
    changes = apply_run_precision(cfg, "bf16")
    assert cfg["fp16"]["enabled"] is False and cfg["bf16"]["enabled"] is True
    assert any("bf16.enabled" in c for c in changes)
    cfg2 = {"fp16": {"enabled": True}}
    assert apply_run_precision(cfg2, "bf16") == ['fp16.enabled: true -> false', 'bf16.enabled: (absent) -> true']
