import json

import pytest
from t5_deepspeed.args import ExtraArguments
from t5_deepspeed.data import DataError, read_jsonl_pairs, sample_file
from t5_deepspeed.train import choose_precision


def test_shipped_sample_is_complete_en_ro():
    sizes = {split: len(read_jsonl_pairs(sample_file(split), "en", "ro")) for split in ("train", "validation", "test")}
    assert sizes == {"train": 64, "validation": 8, "test": 8}
    sources = [s for split in sizes for s, _ in read_jsonl_pairs(sample_file(split), "en", "ro")]
    assert len(set(sources)) == 80  # no pair repeated across splits


def test_missing_language_key_names_file_row_and_key(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps({"translation": {"en": "a", "ro": "b"}}) + "\n"
                 + json.dumps({"translation": {"en": "a", "de": "b"}}) + "\n")
    with pytest.raises(DataError) as e:
        read_jsonl_pairs(f, "en", "ro")
    msg = str(e.value)
    assert "\n" not in msg and f"{f}:2" in msg and '"translation.ro" missing' in msg and "has: de, en" in msg


def test_malformed_jsonl_line(tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text('{"translation": {"en": "a", "ro": "b"}}\n{"translation": \n')
    with pytest.raises(DataError, match=r"train.jsonl:2: malformed JSON"):
        read_jsonl_pairs(f, "en", "ro")


@pytest.mark.parametrize("hw_name,flags,force,expect", [
    ("h100-80g", {"fp16": True}, False, "bf16"),      # T5 + --fp16 -> bf16 with a warning
    ("h100-80g", {"fp16": True}, True, "fp16"),       # --force_fp16 keeps it
    ("rtx2080s-8g", {"fp16": True}, False, "fp32"),   # no bf16 on sm_75 -> fp32, not fp16
    ("rtx2080s-8g", {}, False, "fp32"),               # auto would pick fp16; T5 overflows there
    ("h100-80g", {}, False, "bf16"),
    ("cpu", {}, False, "fp32"),
])
def test_t5_precision_choice(hw_name, flags, force, expect):
    from trainstack.hardware import simulated_hardware

    p, switch = choose_precision(flags, ExtraArguments(force_fp16=force), "t5", simulated_hardware(hw_name))
    assert p.name == expect
    if flags.get("fp16") and not force:
        assert "T5 overflows" in switch


def test_non_t5_fp16_is_kept():
    from trainstack.hardware import simulated_hardware

    p, switch = choose_precision({"fp16": True}, ExtraArguments(), "marian", simulated_hardware("h100-80g"))
    assert p.name == "fp16" and switch is None


def test_plan_param_counts_match_published_sizes():
    from t5_deepspeed.args import ModelArguments
    from t5_deepspeed.model_size import count_params
    from t5_deepspeed.train import resolve_model_config

    # published sizes of google-t5 checkpoints: the shipped configs must reproduce them
    for name, published in (("t5-small", 60_506_624), ("t5-large", 737_668_096), ("t5-3b", 2_851_598_336)):
        total, largest = count_params(resolve_model_config(ModelArguments(config_name=name))[0])
        assert total == published
        assert largest == 32128 * {"t5-small": 512, "t5-large": 1024, "t5-3b": 1024}[name]  # the shared embedding


def test_plan_numbers_against_hand_formula():
    from t5_deepspeed.plan import GIB, make_plan

    n, largest = 2_851_598_336, 32128 * 1024
    rows, pick = make_plan(n, largest, gpu_gib=79.2, ram_gib=128, num_gpus=1)
    by = {r.setup: r for r in rows}
    # ZeRO's paper accounting, by hand: 16-bit params 2 B + (16-bit grads 2 + fp32 grads 4 + fp32 master 4
    # + Adam 8) = 18 B per parameter on one GPU; ZeRO-3 adds one fp32 copy of the largest layer.
    assert by["zero2"].gpu_gib == pytest.approx((2 + 18) * n / GIB, abs=0.01)
    assert by["zero3"].gpu_gib == pytest.approx((18 * n + 4 * largest) / GIB, abs=0.01)
    assert by["zero2-offload"].gpu_gib == pytest.approx(2 * n / GIB, abs=0.01)
    assert by["plain"].gpu_gib == pytest.approx(16 * n / GIB, abs=0.01)  # fp32 weights 4 + grads 4 + Adam 8
    # 42.5 GiB of model states fit in 70% of an H100: no DeepSpeed needed on one GPU; on a 6 GB card
    # only full offload (params too) fits
    assert pick == "plain" and by["zero3"].fits
    rows, pick = make_plan(n, largest, gpu_gib=6.0, ram_gib=128, num_gpus=1)
    assert pick == "zero3-offload"


def test_plan_cli_recommends_offload_on_small_gpu(capsys):
    from t5_deepspeed.cli import main

    # t5-large on 16 GB: 16 B/param (11 GiB) leaves too little for activations -> optimizer offload
    assert main(["plan", "--model", "t5-large", "--gpu", "rtx4080s-16g", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == 737_668_096 and out["recommended"] == "zero2-offload"
    # t5-3b on 16 GB + 63 GB RAM: DeepSpeed's offload estimate needs more host RAM than that
    assert main(["plan", "--model", "t5-3b", "--gpu", "rtx4080s-16g"]) == 0
    assert "recommended: none fits" in capsys.readouterr().out
    assert main(["plan", "--model", "t5-small", "--gpu", "h100-80g"]) == 0
    assert "recommended: plain" in capsys.readouterr().out
