"""docs/from-the-users-recipe.md cannot rot: every hlbd command it quotes parses, and its train
commands load their profile and overrides into the config, as `hlbd train` does (nothing trains)."""

from pathlib import Path

import pytest
from hlbd.cli import cli
from hlbd.config import TrainConfig
from trainstack.config import load_config
from trainstack.testing import check_quoted_task_command, check_recipe_page, recipe_page_commands

PACKAGE = Path(__file__).resolve().parents[1]
PAGE, COMMANDS = recipe_page_commands(PACKAGE, prog="hlbd", module="hlbd")


def test_page_quotes_our_commands_and_readme_links_it():
    check_recipe_page(PAGE, COMMANDS)


def load_train(args, overrides):
    if args.resume:  # the run's saved config.yaml is used then; the overrides must still be keys
        load_config(TrainConfig, {}, overrides)
    else:
        cfg, _ = cli.load_config(args.profile, [*overrides, *([f"data.path={args.data}"] if args.data else [])])
        assert isinstance(cfg, TrainConfig)


@pytest.mark.parametrize(("line", "argv"), COMMANDS, ids=[line for line, _ in COMMANDS])
def test_quoted_command_parses_and_its_config_loads(line, argv):
    check_quoted_task_command(cli, line, argv, load_train)
