"""The real entry point on CPU: DeepSpeed ZeRO-2/3 in one process (gloo), tiny random-init T5, fp32.

Each run is a fresh `python -m t5_deepspeed` process, as under a launcher. ~10 s each on 2 cores
(plus ~40 s once for DeepSpeed's shm op build when TORCH_EXTENSIONS_DIR is cold).
"""

import json
import shlex

import pytest
import torch

from .test_args import USERS


def _train_predict(cli, data_dir, out, stage):
    d = data_dir
    r = cli(["--deepspeed", f"zero{stage}", "--config_name", "tiny-t5", "--train_file", d / "en-ro.train.jsonl",
             "--test_file", d / "en-ro.test.jsonl", "--source_lang", "en", "--target_lang", "ro",
             "--do_train", "--do_predict", "--predict_with_generate", "--per_device_train_batch_size", "8",
             "--per_device_eval_batch_size", "4", "--num_train_epochs", "4", "--learning_rate", "5e-3",
             "--logging_steps", "2", "--save_strategy", "no", "--val_max_target_length", "12",
             "--output_dir", out, "--seed", "1"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _check_checkpoint_loads_without_deepspeed(out):
    """The saved dir is a normal HF checkpoint: plain transformers loads it (full, unpartitioned
    tensors) and greedy generate reproduces the predictions the DeepSpeed run wrote."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(out).eval()
    assert sum(p.numel() for p in model.parameters()) == 73_472
    assert all(p.dim() > 0 and p.numel() > 0 for p in model.parameters())
    tok = AutoTokenizer.from_pretrained(out)
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 8 and all(r["reference"] for r in rows)
    enc = tok(["translate English to Romanian: " + r["source"] for r in rows], return_tensors="pt", padding=True)
    with torch.no_grad():
        gen = model.generate(**enc, max_length=12, num_beams=1, do_sample=False)
    ours = [t.strip() for t in tok.batch_decode(gen, skip_special_tokens=True)]
    assert ours == [r["prediction"] for r in rows]


def _check_metrics_and_logs(out):
    pred = json.loads((out / "predict_results.json").read_text())
    assert 0 <= pred["predict_bleu"] <= 100 and "tok:13a" in pred["predict_bleu_signature"]
    assert "chrF" in pred["predict_chrf_signature"] or "nc:6" in pred["predict_chrf_signature"]
    train = json.loads((out / "train_results.json").read_text())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    # 32 steps at lr 5e-3 on 64 pairs: the loss must go down from ~ln(1000) = 6.9
    assert len(losses) >= 8 and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.5, losses
    # core's field names (learning_rate -> lr, the memory fields) and TensorBoard in OUTPUT_DIR/tb, as fit writes
    training = [r for r in log if "loss" in r]
    assert all(r["lr"] > 0 and r["rss_gib"] > 0 and "learning_rate" not in r for r in training)
    assert all(r["tokens_per_s"] > 0 for r in training[1:])  # real tokens since the previous record
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events_dir,) = {p.parent for p in (out / "tb").glob("events.out.tfevents.*")}
    events = EventAccumulator(str(events_dir))
    events.Reload()
    assert len(events.Scalars("train/loss")) == len(losses)
    assert train["train_loss"] < 6.9
    resolved = json.loads((out / "ds_config.resolved.json").read_text())
    assert resolved["train_micro_batch_size_per_gpu"] == 8  # "auto" filled from the run's arguments
    assert "auto" not in json.dumps(resolved)
    return resolved


def test_zero2_trains_predicts_saves(cli, data_dir, tmp_path):
    out = tmp_path / "z2"
    r = _train_predict(cli, data_dir, out, 2)
    assert "ZeRO-2" in r.stdout and "precision: fp32" in r.stdout
    # which optimizer ran: DeepSpeed's ZeRO-2 wrapper over the Trainer's AdamW (issue 11)
    assert "optimizer: DeepSpeed's DeepSpeedZeroOptimizer over torch.optim.AdamW" in r.stdout
    assert _check_metrics_and_logs(out)["zero_optimization"]["stage"] == 2
    _check_checkpoint_loads_without_deepspeed(out)


def test_zero3_loads_partitioned_generates_synced_and_saves_16bit(cli, data_dir, tmp_path):
    out = tmp_path / "z3"
    r = _train_predict(cli, data_dir, out, 3)
    assert "ZeRO-3 model construction: partitioned (zero.Init)" in r.stdout
    resolved = _check_metrics_and_logs(out)
    assert resolved["zero_optimization"]["stage3_prefetch_bucket_size"] == int(0.9 * 32 * 32)  # auto from d_model
    _check_checkpoint_loads_without_deepspeed(out)


USERS_DS_CONFIG = {
    # the HF docs' ds_config_zero{2,3}.json the users run, minus the "optimizer"/"scheduler" blocks:
    # DeepSpeed's AdamW needs a C++ op build on first use (minutes), too slow for CI
    2: {"fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
                 "hysteresis": 2, "min_loss_scale": 1},
        "zero_optimization": {"stage": 2, "allgather_partitions": True, "allgather_bucket_size": 2e8,
                              "overlap_comm": True, "reduce_scatter": True, "reduce_bucket_size": 2e8,
                              "contiguous_gradients": True},
        "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "steps_per_print": 2000,
        "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "wall_clock_breakdown": False},
    3: {"fp16": {"enabled": "auto"},
        "zero_optimization": {"stage": 3, "overlap_comm": True, "contiguous_gradients": True, "sub_group_size": 1e9,
                              "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
                              "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 1e9,
                              "stage3_max_reuse_distance": 1e9, "stage3_gather_16bit_weights_on_model_save": True},
        "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto", "wall_clock_breakdown": False},
}


@pytest.mark.parametrize("name", list(USERS))
def test_users_commands_run(name, cli, data_dir, tiny_model_dir, tmp_path):
    """Their command, with the tiny local model and the shipped sample substituted for t5-*/wmt16."""
    for stage in (2, 3):
        (tmp_path / f"ds_config_zero{stage}.json").write_text(json.dumps(USERS_DS_CONFIG[stage]))
    argv = shlex.split(USERS[name])
    argv[argv.index("--model_name_or_path") + 1] = str(tiny_model_dir)
    i = argv.index("--dataset_name")
    del argv[i:i + 4]  # --dataset_name wmt16 --dataset_config[_name] ro-en
    # 16 training pairs keep batch-1 epochs short; validation/test are the shipped 8 pairs
    train16 = tmp_path / "train16.jsonl"
    train16.write_text("".join((data_dir / "en-ro.train.jsonl").read_text(encoding="utf-8").splitlines(True)[:16]),
                       encoding="utf-8")
    argv += ["--train_file", train16, "--validation_file", data_dir / "en-ro.validation.jsonl",
             "--test_file", data_dir / "en-ro.test.jsonl", "--val_max_target_length", "12", "--save_strategy", "no"]
    (tmp_path / "output_dir").mkdir()
    # not written by t5-deepspeed, so --overwrite_output_dir keeps it and says so
    (tmp_path / "output_dir" / "stale.txt").write_text("the user's file")
    r = cli(argv, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "output_dir"
    assert (out / "stale.txt").read_text() == "the user's file"
    assert "--overwrite_output_dir: removed nothing from output_dir (t5-deepspeed wrote none of it); kept 1" in r.stdout
    assert (out / "model.safetensors").is_file() and (out / "train_results.json").is_file()
    if "--fp16" in argv:
        # CPU has no fp16; T5 + --fp16 becomes bf16 with the reason in the log
        assert "--fp16 with a T5 model: using bf16 instead" in r.stdout and "precision: bf16" in r.stdout
        assert json.loads((out / "ds_config.resolved.json").read_text())["fp16"]["enabled"] is False
    if "--do_eval" in argv:
        # as in run_translation: BLEU needs --predict_with_generate, else eval reports the loss only
        metrics = json.loads((out / "eval_results.json").read_text())
        assert ("eval_bleu_signature" in metrics) == ("--predict_with_generate" in argv) and "eval_loss" in metrics
    if "--do_predict" in argv:
        assert len((out / "generated_predictions.txt").read_text(encoding="utf-8").splitlines()) == 8
    n_train = json.loads((out / "train_results.json").read_text())["train_samples"]
    assert n_train == 16  # --max_train_samples 500 of a 16-pair file


def test_output_dir_refused_without_overwrite(cli, data_dir, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    r = cli(["--config_name", "tiny-t5", "--train_file", data_dir / "en-ro.train.jsonl", "--source_lang", "en",
             "--target_lang", "ro", "--do_train", "--output_dir", out])
    assert r.returncode == 2 and (out / "keep.txt").exists()
    assert r.stderr.strip().count("\n") == 0 and f"output dir {out} is not empty (keep.txt)" in r.stderr
    assert "--resume_from_checkpoint latest" in r.stderr and "--overwrite_output_dir" in r.stderr


@pytest.mark.parametrize("launcher", ["deepspeed", "accelerate"])
def test_real_launchers(launcher, data_dir, tmp_path):
    """`deepspeed --num_gpus=1 --module t5_deepspeed` and `accelerate launch --cpu -m t5_deepspeed` run DeepSpeed."""
    import os
    import subprocess
    import sys

    from .conftest import EXT_DIR

    bin_dir = os.path.dirname(sys.executable)
    launch = {"deepspeed": [os.path.join(bin_dir, "deepspeed"), "--num_gpus=1", "--master_port=29517", "--module"],
              "accelerate": [os.path.join(bin_dir, "accelerate"), "launch", "--num_processes", "1", "--cpu", "-m"]}[launcher]
    if not os.path.exists(launch[0]):
        pytest.skip(f"{launch[0]} not installed")
    out = tmp_path / "o"
    args = ["t5_deepspeed", "--deepspeed", "zero2", "--config_name", "tiny-t5", "--train_file",
            str(data_dir / "en-ro.train.jsonl"), "--source_lang", "en", "--target_lang", "ro", "--do_train",
            "--max_steps", "2", "--per_device_train_batch_size", "4", "--save_strategy", "no", "--output_dir", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TORCH_EXTENSIONS_DIR": EXT_DIR, "CUDA_VISIBLE_DEVICES": "",
           "DS_ACCELERATOR": "cpu", "PYTHONWARNINGS": "ignore"}
    r = subprocess.run(launch + args, env=env, capture_output=True, text=True, timeout=200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"launcher: {launcher}" in r.stdout + r.stderr
    assert json.loads((out / "ds_config.resolved.json").read_text())["zero_optimization"]["stage"] == 2
    assert (out / "model.safetensors").is_file()


def test_two_ranks_compiled_train_the_eager_losses_and_predict_each_row_once(data_dir, tmp_path):
    """ZeRO-2 on 2 ranks (torchrun, gloo): compiled blocks (aot_eager on CPU; on a GPU the default)
    train the same losses as eager with dropout off, then predict with generate eager, each test row once."""
    import os
    import subprocess
    import sys

    from trainstack.testing import failed_run_text, free_port

    from .conftest import cli_env

    losses = {}
    for name, extra in (("eager", []), ("compiled", ["--torch_compile_backend", "aot_eager"])):
        out = tmp_path / name
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               "-m", "t5_deepspeed", "--deepspeed", "zero2", "--config_name", "tiny-t5",
               "--config_overrides", "dropout_rate=0.0", "--train_file", str(data_dir / "en-ro.train.jsonl"),
               "--test_file", str(data_dir / "en-ro.test.jsonl"), "--source_lang", "en", "--target_lang", "ro",
               "--do_train", "--do_predict", "--predict_with_generate", "--per_device_train_batch_size", "4",
               "--max_steps", "4", "--logging_steps", "1", "--save_strategy", "no", "--val_max_target_length", "8",
               "--output_dir", str(out), *extra]
        env = {**cli_env(), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=os.getcwd())
        assert r.returncode == 0, failed_run_text(r.stdout, r.stderr)
        assert "launcher: torchrun | rank 1 of 2" in r.stdout + r.stderr
        if name == "compiled":
            assert "modules ran compiled" in r.stdout + r.stderr
        losses[name] = [row["loss"] for row in map(json.loads, (out / "log.jsonl").read_text().splitlines())
                        if "loss" in row]
        assert len((out / "predictions.jsonl").read_text().splitlines()) == 8
    assert len(losses["eager"]) == 4
    assert losses["compiled"] == pytest.approx(losses["eager"], abs=1e-5)
