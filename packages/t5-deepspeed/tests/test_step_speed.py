"""What `ours` changes for speed under DeepSpeed, and the bench's tools to see where a step goes.

Gradient buckets sized for a few reductions a step, the bf16 inf/NaN scan skipped, compiled training
(on by default on a GPU) and its losses equal to eager, the FLOPs behind the MFU figure, and --profile_steps' tables.
"""

import json

import pytest
import torch
from t5_deepspeed.ds_config import (
    MAX_BUCKET_ELEMENTS,
    apply_run_precision,
    load_ds_config,
    size_gradient_buckets,
    skip_bf16_overflow_scan,
)


def _zero2():
    cfg, _ = load_ds_config("zero2", "bf16")
    apply_run_precision(cfg, "bf16")
    return cfg


def test_auto_buckets_become_a_few_reductions_a_step():
    cfg = _zero2()
    changes = size_gradient_buckets(cfg, n_params=737_668_096, d_model=1024)
    zero = cfg["zero_optimization"]
    # t5-large: a quarter of the model would be 184M elements, under the 2e8 cap
    assert zero["reduce_bucket_size"] == 184_417_024
    assert zero["allgather_bucket_size"] == 200_000_000  # a number the config wrote stays
    assert changes == ["reduce_bucket_size: auto -> 184,417,024 (~4 reductions a step)"]
    big = _zero2()
    size_gradient_buckets(big, n_params=2_851_598_336, d_model=1024)
    assert big["zero_optimization"]["reduce_bucket_size"] == MAX_BUCKET_ELEMENTS
    tiny = _zero2()
    size_gradient_buckets(tiny, n_params=73_472, d_model=64)
    assert tiny["zero_optimization"]["reduce_bucket_size"] == 18_368  # never below the Trainer's d_model**2


def test_buckets_of_zero3_and_user_numbers_are_left_alone():
    zero3, _ = load_ds_config("zero3", "bf16")
    before = json.dumps(zero3, sort_keys=True)
    assert size_gradient_buckets(zero3, n_params=2_851_598_336, d_model=1024) == []
    assert json.dumps(zero3, sort_keys=True) == before
    mine = _zero2()
    mine["zero_optimization"]["reduce_bucket_size"] = 5e7
    size_gradient_buckets(mine, n_params=737_668_096, d_model=1024)
    assert mine["zero_optimization"]["reduce_bucket_size"] == 5e7


def test_bf16_overflow_scan_is_skipped_unless_the_config_says():
    cfg = _zero2()
    assert skip_bf16_overflow_scan(cfg) == ["bf16.check_grad_overflow: (default true) -> false"]
    assert cfg["bf16"]["check_grad_overflow"] is False
    mine = _zero2()
    mine["bf16"]["check_grad_overflow"] = True
    assert skip_bf16_overflow_scan(mine) == [] and mine["bf16"]["check_grad_overflow"] is True
    fp16, _ = load_ds_config("zero2", "fp16")
    apply_run_precision(fp16, "fp16")
    assert skip_bf16_overflow_scan(fp16) == []  # fp16 needs its overflow check for loss scaling


def test_ours_applies_them_and_users_keep_the_trainer_values(cli, data_dir, tmp_path):
    common = ["--deepspeed", "zero2", "--config_name", "tiny-t5", "--train_file", data_dir / "en-ro.train.jsonl",
              "--source_lang", "en", "--target_lang", "ro", "--do_train", "--max_steps", "1", "--bf16",
              "--per_device_train_batch_size", "4", "--save_strategy", "no", "--report_to", "none"]
    resolved = {}
    for recipe in ("ours", "users"):
        out = tmp_path / recipe
        r = cli([*common, "--output_dir", out, "--recipe", recipe])
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        resolved[recipe] = json.loads((out / "ds_config.resolved.json").read_text())
    assert resolved["ours"]["zero_optimization"]["reduce_bucket_size"] == 18_368
    assert resolved["ours"]["bf16"]["check_grad_overflow"] is False
    assert resolved["users"]["zero_optimization"]["reduce_bucket_size"] == 32 * 32  # the Trainer's auto: d_model**2
    assert "check_grad_overflow" not in resolved["users"]["bf16"]


def test_inline_json_config_is_accepted(cli, data_dir, tmp_path):
    """An inline JSON config longer than a file name may be (255 bytes) used to crash the output-dir
    check with 'File name too long'."""
    cfg = json.dumps({"bf16": {"enabled": "auto"}, "zero_optimization": {"stage": 2, "reduce_bucket_size": "auto",
                      "allgather_bucket_size": 200000000, "contiguous_gradients": True, "overlap_comm": False},
                      "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                      "train_batch_size": "auto", "gradient_clipping": "auto", "zero_allow_untested_optimizer": True})
    assert len(cfg) > 255
    out = tmp_path / "o"
    r = cli(["--deepspeed", cfg, "--config_name", "tiny-t5", "--train_file", data_dir / "en-ro.train.jsonl",
             "--source_lang", "en", "--target_lang", "ro", "--do_train", "--max_steps", "1",
             "--per_device_train_batch_size", "4", "--save_strategy", "no", "--report_to", "none", "--output_dir", out])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "deepspeed: <inline JSON>, ZeRO-2" in r.stdout + r.stderr


def test_compiled_training_logs_the_eager_losses(cli, data_dir, tmp_path):
    """--torch_compile (regional, through accelerate's DeepSpeed path; aot_eager runs on CPU) trains
    the same numbers as eager at equal weights and batches, dropout off, and the 4+4 blocks share their
    compiled code: the first block of each stack and the rest, whatever the lengths (specialising per
    block or per length, as before the KV cache was left out of training, makes 8 and more)."""
    common = ["--deepspeed", "zero2", "--config_name", "tiny-t5",
              "--config_overrides", "dropout_rate=0.0,num_layers=4,num_decoder_layers=4",
              "--train_file", data_dir / "en-ro.train.jsonl", "--source_lang", "en", "--target_lang", "ro",
              "--do_train", "--max_steps", "4", "--per_device_train_batch_size", "4", "--save_strategy", "no",
              "--logging_steps", "1", "--report_to", "none"]
    losses = {}
    # the compiled run then evaluates with generate (eager, with the KV cache back on the decoder only)
    generate = ["--validation_file", data_dir / "en-ro.test.jsonl", "--do_eval", "--predict_with_generate",
                "--val_max_target_length", "8"]
    for name, extra in (("eager", []), ("compiled", ["--torch_compile_backend", "aot_eager", *generate])):
        out = tmp_path / name
        r = cli([*common, "--output_dir", out, *extra])
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        losses[name] = [row["loss"] for row in map(json.loads, (out / "log.jsonl").read_text().splitlines())
                        if "loss" in row]
        if name == "compiled":
            assert "compile: as asked (--torch_compile)" in r.stdout + r.stderr
            import re

            graphs = re.search(r"modules ran compiled \((\d+) graphs compiled\)", r.stdout + r.stderr)
            assert graphs, r.stdout[-2000:]  # it did compile, then went eager for predict
            assert int(graphs.group(1)) <= 6
            assert json.loads((out / "config.json").read_text())["use_cache"] is True  # saved for inference
            assert "eval_bleu" in json.loads((out / "all_results.json").read_text())
    assert len(losses["eager"]) == 4
    assert losses["compiled"] == pytest.approx(losses["eager"], abs=1e-5)


def _hardware(capability=(9, 0)):
    from trainstack.hardware import GPUInfo, Hardware

    gpus = (GPUInfo("test GPU", capability, 80.0),) if capability else ()
    return Hardware(gpus=gpus, cpu_count=8, ram_gib=64.0)


def test_ours_compiles_training_by_default_on_a_gpu_only(monkeypatch):
    import torch.utils._triton
    from t5_deepspeed.train import compiles_by_default

    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: True)
    train = {"do_train": True}
    assert compiles_by_default(train, "ours", _hardware(), _zero2())
    assert compiles_by_default(train, "ours", _hardware(), None)  # plain, without DeepSpeed
    assert not compiles_by_default(train, "users", _hardware(), _zero2())  # their flags, as typed
    assert not compiles_by_default(train, "ours", _hardware(capability=None), _zero2())  # CPU
    assert not compiles_by_default(train, "ours", _hardware((6, 1)), _zero2())  # below Triton's sm_70
    assert not compiles_by_default({"do_train": False}, "ours", _hardware(), _zero2())  # eval/predict only
    assert not compiles_by_default({"do_train": True, "gradient_checkpointing": True}, "ours", _hardware(), None)
    zero3, _ = load_ds_config("zero3", "bf16")
    assert not compiles_by_default(train, "ours", _hardware(), zero3)
    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: False)
    assert not compiles_by_default(train, "ours", _hardware(), _zero2())


def test_torch_compile_false_wins_over_the_default(monkeypatch, tmp_path):
    from t5_deepspeed.train import DYNAMIC_SHAPES_ENV, REGIONAL_COMPILE_ENV, choose_compile

    monkeypatch.setenv("TRAINSTACK_CACHE_DIR", str(tmp_path))
    for name in (REGIONAL_COMPILE_ENV, DYNAMIC_SHAPES_ENV, "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)  # choose_compile sets them; restored after the test
    off = {"torch_compile": False}
    assert choose_compile(off, {"torch_compile"}, by_default=True) is None
    assert off["torch_compile"] is False
    assert choose_compile({}, set(), by_default=False) is None
    on = {}
    line = choose_compile(on, set(), by_default=True)
    assert on["torch_compile"] is True and "on by default" in line and str(tmp_path) in line


def test_model_flops_count_each_linear_once_per_token_it_sees():
    from t5_deepspeed.flops import model_flops
    from t5_deepspeed.model_size import count_params
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    from .conftest import DATA

    config = AutoConfig.from_pretrained(DATA / "configs" / "tiny-t5.json")
    with torch.device("meta"):
        model = AutoModelForSeq2SeqLM.from_config(config)
    flops = model_flops(model)
    d, ff, inner, vocab = config.d_model, config.d_ff, config.num_heads * config.d_kv, config.vocab_size
    gated = 3 if config.is_gated_act else 2
    enc_layer = 4 * d * inner + gated * d * ff
    dec_layer = 2 * (4 * d * inner) + gated * d * ff
    cross_kv = 2 * d * inner
    assert flops.per_source_token == 2 * (config.num_layers * enc_layer + config.num_decoder_layers * cross_kv)
    assert flops.per_target_token == 2 * (config.num_decoder_layers * (dec_layer - cross_kv) + d * vocab)
    assert flops.train_flops(10, 5) == 3 * (10 * flops.per_source_token + 5 * flops.per_target_token)
    assert count_params(config)[0] > 0


def test_bench_profile_steps_write_where_the_time_went(tmp_path):
    import t5_deepspeed.bench as B

    rc = B.main(["--model", "tiny-t5", "--deepspeed", "zero2", "--batch_size", "2", "--steps", "2", "--warmup", "1",
                 "--profile_steps", "2", "--sides", "ours", "--out", str(tmp_path)])
    assert rc == 0
    record = json.loads((tmp_path / "ours.json").read_text())
    assert record["steps"] == 2  # the profiled steps are not timed
    profile = tmp_path / "ours" / "profile"
    summary = json.loads((profile / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["wall_ms_per_step"] > 0
    assert "aten::" in (profile / "kernels.txt").read_text()
    assert "training_step" in (profile / "host.txt").read_text()


def test_plan_states_step_time_and_when_plain_is_faster(capsys):
    from t5_deepspeed.cli import main
    from t5_deepspeed.plan import HOST_MS_PER_LAYER, HOST_MS_PER_STEP, ZERO_MS_PER_TENSOR

    assert main(["plan", "--model", "t5-large", "--gpu", "h100-80g", "--batch_size", "4", "--tokens", "74",
                 "--json"]) == 0
    # the last line: DeepSpeed may print a line of its own when first imported
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    step = {r["setup"]: r["step_ms"] for r in out["rows"]}
    # 48 T5 layers, 509 parameter tensors; a batch this small is bound by the host, not the GPU's FLOPs;
    # plain and ZeRO-2 run compiled blocks on this GPU, ZeRO-3 eager ones
    compiled = HOST_MS_PER_STEP + 48 * HOST_MS_PER_LAYER["compiled"]
    assert step["plain"] == pytest.approx(compiled)
    assert step["zero2"] == pytest.approx(compiled + 509 * ZERO_MS_PER_TENSOR["zero2"])
    assert step["zero3"] == pytest.approx(HOST_MS_PER_STEP + 48 * HOST_MS_PER_LAYER["eager"] + 509 * ZERO_MS_PER_TENSOR["zero3"])
    assert step["plain"] < step["zero2"] < step["zero3"] and step["zero2-offload"] is None
    assert main(["plan", "--model", "t5-large", "--gpu", "h100-80g", "--batch_size", "4", "--tokens", "74"]) == 0
    assert "a plain step is faster (~87 ms; ~125 ms under zero2" in capsys.readouterr().out
    # a big enough batch is bound by the GPU instead: the FLOPs term takes over
    assert main(["plan", "--model", "t5-large", "--gpu", "h100-80g", "--batch_size", "512", "--tokens", "256",
                 "--json"]) == 0
    big = {r["setup"]: r["step_ms"] for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]}
    assert big["plain"] > HOST_MS_PER_STEP + 48 * HOST_MS_PER_LAYER["compiled"]
