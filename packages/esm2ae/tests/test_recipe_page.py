"""docs/from-the-users-recipe.md cannot rot: every esm2ae command it quotes parses, and its train
commands load their profile and overrides into the config, as `esm2ae train` does (nothing trains)."""

from pathlib import Path

import pytest
from esm2ae.cli import cli
from esm2ae.config import Config as TrainConfig
from esm2ae.profiles import get_profile
from trainstack.config import load_config
from trainstack.testing import check_quoted_task_command, check_recipe_page, recipe_page_commands

PACKAGE = Path(__file__).resolve().parents[1]
PAGE, COMMANDS = recipe_page_commands(PACKAGE, prog="esm2ae", module="esm2ae")


def test_page_quotes_our_commands_and_readme_links_it():
    check_recipe_page(PAGE, COMMANDS)


def load_train(args, overrides):
    # as esm2ae.train.train_from_cli: the named profile's settings <- key=value overrides
    profile = get_profile(args.profile) if args.profile not in (None, "auto") else cli.choose_profile("auto")[0]
    assert isinstance(load_config(TrainConfig, profile.settings, overrides), TrainConfig)


@pytest.mark.parametrize(("line", "argv"), COMMANDS, ids=[line for line, _ in COMMANDS])
def test_quoted_command_parses_and_its_config_loads(line, argv):
    check_quoted_task_command(cli, line, argv, load_train)
