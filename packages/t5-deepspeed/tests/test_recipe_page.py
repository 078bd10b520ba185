"""docs/from-the-users-recipe.md cannot rot: every t5-deepspeed command it quotes parses through the
run_translation parser `t5-deepspeed train` uses (profiles applied), and the users' own command, with
only the script name changed, parses too. Nothing trains."""

from pathlib import Path

import pytest
from t5_deepspeed.args import parse_args
from t5_deepspeed.cli import cli
from t5_deepspeed.profiles import profile_settings
from trainstack.testing import check_recipe_page, recipe_page_commands

PAGE, COMMANDS = recipe_page_commands(Path(__file__).resolve().parents[1], prog="t5-deepspeed", module="t5_deepspeed")
TEXT = PAGE.read_text(encoding="utf-8")
USERS = ("deepspeed --num_gpus=1 run_translation.py --deepspeed ds_config_zero2.json --model_name_or_path t5-small "
         "--per_device_train_batch_size 1 --output_dir output_dir --overwrite_output_dir --fp16 --do_train "
         "--max_train_samples 500 --num_train_epochs 1 --dataset_name wmt16 --dataset_config \"ro-en\" "
         "--source_lang en --target_lang ro")


def test_page_quotes_our_commands_and_readme_links_it():
    check_recipe_page(PAGE, COMMANDS)


@pytest.mark.parametrize(("line", "argv"), COMMANDS, ids=[line for line, _ in COMMANDS])
def test_quoted_command_parses(line, argv, capsys):
    command, rest, _ = cli.parse(argv)
    if command.handler.__name__ == "cmd_train":
        parsed = parse_args(rest, profile_settings)
        assert parsed.data.source_lang and parsed.data.target_lang


def test_users_command_verbatim_parses_with_its_meaning():
    assert USERS in TEXT
    argv = USERS.replace('"ro-en"', "ro-en").split()[3:]  # after: deepspeed --num_gpus=1 run_translation.py
    parsed = parse_args(argv, profile_settings)
    assert parsed.training["deepspeed"] == "ds_config_zero2.json" and parsed.training["fp16"]
    assert parsed.extra.overwrite_output_dir and parsed.data.dataset_config_name == "ro-en"
    assert parsed.data.max_train_samples == 500 and parsed.model.model_name_or_path == "t5-small"
