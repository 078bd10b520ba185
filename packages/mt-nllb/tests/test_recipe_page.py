"""docs/from-the-users-recipe.md cannot rot: every mt-nllb command it quotes parses, and its train
commands load their profile and overrides into the config, as `mt-nllb train` does (nothing trains)."""

from pathlib import Path

import pytest
from mt_nllb.cli import cli
from mt_nllb.config import TrainConfig
from trainstack.testing import check_quoted_task_command, check_recipe_page, recipe_page_commands

PACKAGE = Path(__file__).resolve().parents[1]
PAGE, COMMANDS = recipe_page_commands(PACKAGE, prog="mt-nllb", module="mt_nllb")


def test_page_quotes_our_commands_and_readme_links_it():
    check_recipe_page(PAGE, COMMANDS)


def load_train(args, overrides):
    cfg, _ = cli.load_config(args.profile, overrides)
    assert isinstance(cfg, TrainConfig)


@pytest.mark.parametrize(("line", "argv"), COMMANDS, ids=[line for line, _ in COMMANDS])
def test_quoted_command_parses_and_its_config_loads(line, argv):
    check_quoted_task_command(cli, line, argv, load_train)
