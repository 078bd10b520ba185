"""docs/from-the-users-recipe.md cannot rot: every chat-pretrain command it quotes parses, and its train
commands load their profile and overrides into the config, as `chat-pretrain train` does (nothing trains)."""

from pathlib import Path

import pytest
from chat_pretrain.cli import cli
from chat_pretrain.config import TrainConfig
from trainstack.testing import check_quoted_task_command, check_recipe_page, recipe_page_commands

PACKAGE = Path(__file__).resolve().parents[1]
PAGE, COMMANDS = recipe_page_commands(PACKAGE, prog="chat-pretrain", module="chat_pretrain")


def test_page_quotes_our_commands_and_readme_links_it():
    check_recipe_page(PAGE, COMMANDS)


def load_train(args, overrides):
    cfg, _ = cli.load_config(args.profile, overrides)
    assert isinstance(cfg, TrainConfig)


@pytest.mark.parametrize(("line", "argv"), COMMANDS, ids=[line for line, _ in COMMANDS])
def test_quoted_command_parses_and_its_config_loads(line, argv):
    check_quoted_task_command(cli, line, argv, load_train)


USERS_COMMANDS = [
    "train --use_large_config=True",
    "train --use_large_config=True --is_keep_training=True",
    "train --epochs=5 --learn_rate=0.0002 --batch_size_per_gpu=24 --gradient_accumulation_steps=4 --max_seq_len=128",
]


@pytest.mark.parametrize("users", USERS_COMMANDS)
def test_users_flags_quoted_on_the_page_mean_ours(users):
    assert f"./train.py {users}" in PAGE.read_text(encoding="utf-8")
    command, args, overrides = cli.parse(users.split())
    if "--use_large_config=True" in users:
        assert args.profile == "large"
    assert (args.resume == "auto") == ("--is_keep_training=True" in users)
    cfg, _ = cli.load_config(args.profile or "large", overrides)
    if "--learn_rate" in users:
        assert (cfg.epochs, cfg.optim.lr, cfg.data.batch_size, cfg.grad_accum_steps, cfg.data.max_seq_len) == \
            (5, 0.0002, 24, 4, 128)
