"""The users' four command lines parse with run_translation's meaning; removed flags are mapped or refused."""

import shlex

import pytest
from t5_deepspeed.args import ArgsError, parse_args, translate_argv

# The four commands from the users' notes (SEEDS.md), minus the launcher and script name.
USERS = {
    "t5-small-zero2": "--deepspeed ds_config_zero2.json --model_name_or_path t5-small --per_device_train_batch_size 1 "
                      "--output_dir output_dir --overwrite_output_dir --fp16 --do_train --max_train_samples 500 "
                      "--num_train_epochs 1 --dataset_name wmt16 --dataset_config ro-en --source_lang en --target_lang ro",
    "t5-large-zero2": "--deepspeed ds_config_zero2.json --model_name_or_path t5-large --per_device_train_batch_size 4 "
                      "--per_device_eval_batch_size 4 --output_dir output_dir --overwrite_output_dir --do_train --do_eval "
                      "--max_train_samples 500 --max_eval_samples 50 --num_train_epochs 1 --dataset_name wmt16 "
                      "--dataset_config ro-en --source_lang en --target_lang ro",
    "t5-3b-zero3": "--deepspeed ds_config_zero3.json --model_name_or_path t5-3b --per_device_train_batch_size 1 "
                   "--output_dir output_dir --overwrite_output_dir --fp16 --do_train --max_train_samples 500 "
                   "--num_train_epochs 1 --dataset_name wmt16 --dataset_config ro-en --source_lang en --target_lang ro",
    "t5-small-plain": "--model_name_or_path t5-small --do_train --do_eval --do_predict --source_lang en --target_lang ro "
                      "--source_prefix 'translate English to Romanian: ' --dataset_name wmt16 --dataset_config_name ro-en "
                      "--output_dir output_dir --per_device_train_batch_size=4 --per_device_eval_batch_size=4 "
                      "--overwrite_output_dir --predict_with_generate",
}


@pytest.mark.parametrize("name", list(USERS))
def test_users_commands_parse_with_their_meaning(name):
    p = parse_args(shlex.split(USERS[name]))
    assert p.data.dataset_name == "wmt16" and p.data.dataset_config_name == "ro-en"
    assert (p.data.source_lang, p.data.target_lang) == ("en", "ro")
    assert p.extra.overwrite_output_dir is True
    assert p.training["output_dir"] == "output_dir" and p.training["do_train"] is True
    if name == "t5-small-zero2":
        assert p.training["deepspeed"] == "ds_config_zero2.json"
        assert p.training["fp16"] is True and p.training["per_device_train_batch_size"] == 1
        assert p.data.max_train_samples == 500 and p.training["num_train_epochs"] == 1
    if name == "t5-large-zero2":
        assert p.training["fp16"] is False and p.training["do_eval"] is True
        assert p.training["per_device_eval_batch_size"] == 4 and p.data.max_eval_samples == 50
    if name == "t5-small-plain":
        assert p.training["deepspeed"] is None and p.training["predict_with_generate"] is True
        assert p.data.source_prefix == "translate English to Romanian: "
        assert p.training["per_device_train_batch_size"] == 4


def test_deepspeed_launcher_local_rank_is_accepted():
    p = parse_args(["--local_rank=0"] + shlex.split(USERS["t5-small-zero2"]))
    assert p.training["local_rank"] == 0


def test_renamed_flags_are_mapped_and_said():
    argv, notes = translate_argv(["--evaluation_strategy", "steps", "--no_cuda", "--per_gpu_train_batch_size=2",
                                  "--warmup_ratio", "0.1"])
    assert argv == ["--eval_strategy", "steps", "--use_cpu", "--per_device_train_batch_size=2", "--warmup_steps", "0.1"]
    assert len(notes) == 4 and all("removed in transformers 5" in n for n in notes)
    p = parse_args(shlex.split(USERS["t5-small-plain"]) + ["--warmup_ratio", "0.1", "--evaluation_strategy", "epoch"])
    assert p.training["warmup_steps"] == 0.1 and p.training["eval_strategy"] == "epoch"


@pytest.mark.parametrize("flag,hint", [("--fp16_backend=amp", "--bf16/--fp16"), ("--logging_dir=x", "TENSORBOARD_LOGGING_DIR"),
                                       ("--group_by_length", "train_sampling_strategy")])
def test_removed_flags_refused_with_replacement(flag, hint):
    with pytest.raises(ArgsError) as e:
        parse_args(shlex.split(USERS["t5-small-plain"]) + [flag])
    assert "removed in transformers 5" in str(e.value) and hint in str(e.value) and "\n" not in str(e.value)


def test_unknown_flag_is_one_line_error():
    with pytest.raises(ArgsError, match="unrecognized arguments: --no_such_flag"):
        parse_args(shlex.split(USERS["t5-small-plain"]) + ["--no_such_flag"])


def test_missing_language_flags():
    with pytest.raises(ArgsError, match="--source_lang and --target_lang"):
        parse_args(["--model_name_or_path", "t5-small", "--dataset_name", "wmt16", "--output_dir", "o"])


@pytest.mark.parametrize("profile", ["cpu", "rtx2080s-8g", "rtx4080s-16g", "a100-40g", "h100-80g"])
def test_every_shipped_profile_applies_through_the_cli(profile):
    from t5_deepspeed.profiles import profile_settings

    p = parse_args(shlex.split(USERS["t5-small-plain"]) + ["--hardware_profile", profile], profile_settings)
    assert p.training["deepspeed"] in ("zero2", "zero2-offload", "zero3")
    # the command line wins over the profile
    assert p.training["per_device_train_batch_size"] == 4
    assert any(profile in n for n in p.notes)


def test_the_shared_grammar_spellings():
    """--profile and --resume [auto|PATH], as in every trainstack package, mean --hardware_profile and
    --resume_from_checkpoint latest|PATH (which keep working: the run_translation contract)."""
    from t5_deepspeed.profiles import profile_settings

    p = parse_args(shlex.split(USERS["t5-small-plain"]) + ["--profile", "cpu"], profile_settings)
    assert p.extra.hardware_profile == "cpu" and p.training["deepspeed"] == "zero2"
    for given, want in [(["--resume"], "latest"), (["--resume", "auto"], "latest"), (["--resume=auto"], "latest"),
                        (["--resume", "out/checkpoint-4"], "out/checkpoint-4"), (["--resume", "--fp16"], "latest"),
                        (["--resume_from_checkpoint", "latest"], "latest")]:
        argv, _ = translate_argv(given)
        assert argv[:2] == ["--resume_from_checkpoint", want], given


def test_a_profile_with_a_bad_setting_is_one_line(tmp_path):
    from t5_deepspeed.profiles import profile_settings

    mine = tmp_path / "mine.yaml"
    mine.write_text("requires: {}\nsettings:\n  per_device_train_batch_size: many\n")
    with pytest.raises(ArgsError, match=r"--hardware_profile .*mine.yaml: setting per_device_train_batch_size: "
                                        r"'many' is not a valid"):
        parse_args(shlex.split(USERS["t5-small-plain"]) + ["--profile", str(mine)], profile_settings)
