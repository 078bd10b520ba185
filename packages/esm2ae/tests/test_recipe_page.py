"""docs/from-the-users-recipe.md cannot rot: every esm2ae command it quotes parses, and its train
commands load their profile and overrides into the config, as `esm2ae train` does (nothing trains)."""

from pathlib import Path

import pytest
from esm2ae.cli import cli
from esm2ae.config import Config as TrainConfig
from esm2ae.profiles import get_profile
from trainstack.config import load_config
from trainstack.doc_commands import quoted_commands

PAGE = Path(__file__).resolve().parents[1] / "docs" / "from-the-users-recipe.md"
COMMANDS = quoted_commands(PAGE.read_text(encoding="utf-8"), prog="esm2ae", module="esm2ae")


def test_page_quotes_our_commands_and_readme_links_it():
    assert len(COMMANDS) >= 10, COMMANDS
    assert "docs/from-the-users-recipe.md" in (PAGE.parents[1] / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(("line", "argv"), COMMANDS, ids=[line for line, _ in COMMANDS])
def test_quoted_command_parses_and_its_config_loads(line, argv, capsys):
    command, args, overrides = cli.parse(argv)
    if command.raw:  # a command with its own parser (chat-pretrain tokenizer): the verb is known
        return
    if args.command == "train":
        # as esm2ae.train.train_from_cli: the named profile's settings <- key=value overrides
        profile = get_profile(args.profile) if args.profile not in (None, "auto") else cli.choose_profile("auto")[0]
        assert isinstance(load_config(TrainConfig, profile.settings, overrides), TrainConfig)
    elif args.command == "profiles":
        for name in args.names:
            assert name in {p.name for p in cli.profiles()}, line
