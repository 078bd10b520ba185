"""docs/from-the-users-recipe.md cannot rot: every hlbd command it quotes parses, and its train
commands load their profile and overrides into the config, as `hlbd train` does (nothing trains)."""

from pathlib import Path

import pytest
from hlbd.cli import cli
from hlbd.config import TrainConfig
from trainstack.config import load_config
from trainstack.doc_commands import quoted_commands

PAGE = Path(__file__).resolve().parents[1] / "docs" / "from-the-users-recipe.md"
COMMANDS = quoted_commands(PAGE.read_text(encoding="utf-8"), prog="hlbd", module="hlbd")


def test_page_quotes_our_commands_and_readme_links_it():
    assert len(COMMANDS) >= 10, COMMANDS
    assert "docs/from-the-users-recipe.md" in (PAGE.parents[1] / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(("line", "argv"), COMMANDS, ids=[line for line, _ in COMMANDS])
def test_quoted_command_parses_and_its_config_loads(line, argv, capsys):
    command, args, overrides = cli.parse(argv)
    if command.raw:  # a command with its own parser (chat-pretrain tokenizer): the verb is known
        return
    if args.command == "train":
        if args.resume:  # the run's saved config.yaml is used then; the overrides must still be keys
            load_config(TrainConfig, {}, overrides)
        else:
            cfg, profile = cli.load_config(args.profile, [*overrides, *([f"data.path={args.data}"] if args.data else [])])
            assert isinstance(cfg, TrainConfig)
    elif args.command == "profiles":
        for name in args.names:
            assert name in {p.name for p in cli.profiles()}, line
