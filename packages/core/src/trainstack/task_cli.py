"""One command line for every task package: the same verbs, flags, exit codes and messages.

    PKG train [--profile NAME|PATH|auto] [--resume [auto|PATH]] [key=value ...]
    PKG train --help-config                 every config key with its default, type and doc
    PKG eval CHECKPOINT [--data FILE]       (each package adds its own options)
    PKG generate CHECKPOINT ...
    PKG bench ...
    PKG profiles [list] | show NAME | validate [NAME|PATH ...] | pick [--simulate MACHINE]
    PKG --version                           -h/--help at every level

Exit codes: 0 success, 1 a run failed, 2 bad usage, config or data (one line on stderr), 130
interrupted. ``profiles show NAME`` prints YAML to copy, edit and pass back with ``--profile PATH``.

A package's cli.py declares its commands and hands the rest to this module::

    cli = TaskCLI("hlbd", version=__version__, description=__doc__, profile_dir="hlbd.profiles:profile_dir",
                  config_class="hlbd.config:TrainConfig", default_profile="fast",
                  usage_errors=("hlbd.data:HLBDError",))
    train = cli.add_train(cmd_train, help="train on HLBD pairs")
    train.add_argument("--data")                       # handlers get (args, overrides)
    cli.add_command("eval", cmd_eval, help="...").add_argument("checkpoint")

    def main(argv=None) -> int:
        return cli.main(argv)

Old spellings stay as quiet aliases (``command_aliases={"evaluate": "eval"}``,
``flag_aliases={"--config": "--profile"}``): they work and are not advertised. Classes, modules and
config dataclasses are named as "module:attr" strings so that ``--help`` and ``--version`` answer
without importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

# Errors that mean "the input is wrong" (exit 2, one line), looked up only where their module is
# already imported: an exception cannot be an instance of a class that was never loaded.
CORE_USAGE_ERRORS = (
    "trainstack.config:ConfigError",  # includes trainstack.hub.HubUnavailable
    "trainstack.hardware:ProfileError",
    "trainstack.hardware:NoProfileFits",
    "trainstack.precision:PrecisionError",
    "trainstack.checkpoint:CheckpointError",  # includes the run-directory and resume-mismatch refusals
    "trainstack.loop:NoUsableData",
    "trainstack.extras:MissingExtra",  # an optional package missing: the line names the pip command
)

Handler = Callable[[argparse.Namespace, list], "int | None"]


def end_process_group() -> None:
    """Destroy the process group a run created, if any, before the interpreter exits: left to the exit,
    gloo's threads are torn down in no particular order and a rank can abort ("terminate called without
    an active exception") after its run succeeded, failing the job. Without torch loaded: nothing."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return
    from trainstack.deepspeed_engine import destroy_process_group

    destroy_process_group()


def import_attr(spec):
    """``"package.module:name"`` -> the object; anything else is returned as it is."""
    if not isinstance(spec, str):
        return spec
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def _loaded_class(spec):
    if not isinstance(spec, str):
        return spec
    module, _, name = spec.partition(":")
    return getattr(sys.modules.get(module), name, None)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse with our usage error: one line, exit 2."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _HelpConfig(argparse.Action):
    def __init__(self, option_strings, dest, cli=None, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.cli = cli

    def __call__(self, parser, namespace, values, option_string=None):
        from trainstack.config import format_config_keys

        sys.stdout.write(format_config_keys(self.cli.config_type()))
        parser.exit(EXIT_OK)


@dataclass
class _Command:
    handler: Callable
    overrides: bool = False
    raw: bool = False
    rewrite: Callable[[list], list] | None = None
    parser: argparse.ArgumentParser | None = None


@dataclass
class TaskCLI:
    prog: str
    version: str
    description: str = ""
    profile_dir: object = None
    """"module:function" (or the function) returning the directory of shipped profiles."""
    config_class: object = None
    """"module:Class" of the train config dataclass (--help-config, profiles validate)."""
    default_profile: str | None = "auto"
    usage_errors: Sequence = ()
    """The package's own bad-input exceptions ("module:Class" or classes): exit 2 with one line."""
    validate_profile: object = None
    """Profile -> (errors, notes), for checks beyond loading the settings into config_class."""
    command_aliases: dict = field(default_factory=dict)
    flag_aliases: dict = field(default_factory=dict)
    default_command: str | None = None
    """Run when the command line starts with a flag or key=value (chat-pretrain and t5-deepspeed: train)."""
    after_profiles_list: Callable | None = None
    """(args, profiles) -> None: more output after `profiles list` (options added to profiles_command())."""

    def __post_init__(self):
        from trainstack import __version__ as core_version

        self._commands: dict[str, _Command] = {}
        self.parser = OneLineErrorParser(prog=self.prog, description=self.description,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        self.parser.add_argument("--version", action="version",
                                 version=f"{self.prog} {self.version} (trainstack-core {core_version})")
        self._sub = self.parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineErrorParser)

    def add_command(self, name: str, handler: Handler, help: str, *, overrides: bool = False,
                    description: str | None = None, raw: bool = False,
                    rewrite: Callable[[list], list] | None = None) -> argparse.ArgumentParser:
        """A verb. ``overrides``: key=value tokens are split off and passed to the handler. ``raw``: the
        handler gets the remaining argv as it is (a command with its own parser, like t5-deepspeed's
        run_translation flags). ``rewrite``: argv -> argv before parsing (users' old flag spellings)."""
        parser = self._sub.add_parser(name, help=help, description=description or help, add_help=not raw,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
        self._commands[name] = _Command(handler, overrides, raw, rewrite, parser)
        return parser

    def add_train(self, handler: Handler, help: str = "train", description: str | None = None,
                  rewrite: Callable[[list], list] | None = None) -> argparse.ArgumentParser:
        """``train`` with the shared options: --profile, --resume, --help-config, key=value overrides."""
        description = (f"{description or help}\n\nkey=value overrides set config keys (dotted: optim.lr=3e-4); "
                       f"{self.prog} train --help-config lists every key.")
        p = self.add_command("train", handler, help, overrides=True, description=description, rewrite=rewrite)
        self.add_profile_option(p)
        p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="auto|PATH", type=_resume_value,
                       help="continue an interrupted run: its latest complete checkpoint (auto, the default) or "
                            "the checkpoint directory PATH")
        if self.config_class is not None:
            p.add_argument("--help-config", action=_HelpConfig, cli=self,
                           help="list every config key (key=value) with its default and doc, then exit")
        return p

    def add_profile_option(self, parser: argparse.ArgumentParser) -> None:
        default = f" (default: {self.default_profile})" if self.default_profile else ""
        parser.add_argument("--profile", default=None, metavar="NAME|PATH|auto",
                            help=f"a shipped profile ({self.prog} profiles list), a YAML file, or auto: the best "
                                 f"fit for this machine{default}")

    def config_type(self):
        return import_attr(self.config_class)

    def profiles(self) -> list:
        from trainstack.hardware import load_profiles

        return load_profiles(import_attr(self.profile_dir)())

    def choose_profile(self, name: str | None = None, hw=None):
        """(Profile, how) for --profile NAME|PATH|auto; None -> the package's default."""
        from trainstack.hardware import choose_profile

        return choose_profile(name or self.default_profile or "auto", self.profiles(), hw)

    def load_config(self, profile_name: str | None, overrides: Sequence[str] = (), say=print):
        """(config, profile): the config dataclass <- the profile's settings <- key=value overrides."""
        from trainstack.config import load_config

        profile, how = self.choose_profile(profile_name)
        if profile_name is None and self.default_profile not in (None, "auto"):
            how = "the default"
        say(f"profile {profile.name} ({how}): {profile.description}".rstrip(": "))
        return load_config(self.config_type(), profile.settings, list(overrides)), profile

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Parse, run the command's handler, map the outcome to an exit code. Always returns an int
        (argparse's --help and usage errors included), so tests can call it in-process."""
        try:
            return self._main(list(sys.argv[1:] if argv is None else argv))
        except SystemExit as e:
            if isinstance(e.code, int):
                return e.code
            if e.code is None:
                return EXIT_OK
            # SystemExit("why"): Python would print the text; returning the code must not lose it
            print(f"{self.prog}: error: {e.code}", file=sys.stderr)
            return EXIT_USAGE
        finally:
            end_process_group()

    def _main(self, argv: list[str]) -> int:
        self.profiles_command()
        if not argv:
            self.parser.print_help(sys.stderr)
            return EXIT_USAGE
        try:
            command, args, overrides = self.parse(argv)
        except Exception as err:  # an old flag spelling that cannot be rewritten, say
            return self._usage_error(err)
        if command.raw:
            return self._run(lambda: command.handler(args))
        return self._run(lambda: command.handler(args, overrides))

    def parse(self, argv: Sequence[str]) -> tuple[_Command, object, list[str]]:
        """(command, parsed args, key=value overrides) for ``argv``, as ``main`` reads it; for a raw
        command the args are the rest of argv. argparse exits (SystemExit) on --help and usage errors."""
        self.profiles_command()
        argv = list(argv)
        if self.default_command and argv and argv[0] not in ("-h", "--help", "--version") and \
                (argv[0].startswith("-") or "=" in argv[0]):
            argv = [self.default_command, *argv]
        if argv:
            argv[0] = self.command_aliases.get(argv[0], argv[0])
        command = self._commands.get(argv[0]) if argv else None
        overrides: list[str] = []
        if command is not None and command.raw:
            return command, argv[1:], overrides
        if command is not None:
            rest = [self._alias_flag(t) for t in argv[1:]]
            if command.rewrite is not None:
                rest = command.rewrite(rest)
            if command.overrides:
                from trainstack.config import parse_cli_overrides

                overrides, rest = parse_cli_overrides(rest)
            argv = [argv[0], *rest]
        args = self.parser.parse_args(argv)
        return self._commands[args.command], args, overrides

    def _alias_flag(self, token: str) -> str:
        name, eq, value = token.partition("=")
        return self.flag_aliases[name] + eq + value if name in self.flag_aliases else token

    def is_usage_error(self, err: BaseException) -> bool:
        for spec in (*CORE_USAGE_ERRORS, *self.usage_errors):
            cls = _loaded_class(spec)
            if cls is not None and isinstance(err, cls):
                return True
        return False

    def _run(self, call) -> int:
        try:
            code = call()
        except KeyboardInterrupt:  # a second Ctrl-C (the first one saves a checkpoint and returns 130)
            print(f"{self.prog}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as err:
            return self._usage_error(err)
        return EXIT_OK if code is None else int(code)

    def _usage_error(self, err: Exception) -> int:
        if not self.is_usage_error(err):
            raise err  # a failure of the run itself: traceback, exit 1
        print(f"{self.prog}: error: {err}", file=sys.stderr)
        return EXIT_USAGE

    def profiles_command(self) -> argparse.ArgumentParser | None:
        """The built-in `profiles` command's parser (created on first use; a package may add options)."""
        if self.profile_dir is None:
            return None
        if "profiles" in self._commands:
            return self._commands["profiles"].parser
        from trainstack.hardware import SIMULATED

        p = self.add_command("profiles", self._profiles_command, help="list | show NAME | validate | pick",
                             description=f"""the shipped profiles (hardware-sized settings).

    {self.prog} profiles [list]                  each profile, what it needs, whether it fits here
    {self.prog} profiles show NAME > mine.yaml   its YAML: edit it, then train --profile mine.yaml
    {self.prog} profiles validate [NAME|PATH]    load each into the config (exit 2 if one fails)
    {self.prog} profiles pick                    the profile --profile auto picks on this machine""")
        p.add_argument("action", nargs="?", default="list", choices=["list", "show", "validate", "pick"])
        p.add_argument("names", nargs="*", metavar="NAME|PATH")
        p.add_argument("--simulate", choices=sorted(SIMULATED), metavar="MACHINE",
                       help=f"list/pick for a simulated machine: {', '.join(sorted(SIMULATED))}")
        return p

    def _hardware(self, simulate: str | None):
        from trainstack.hardware import detect_hardware, simulated_hardware

        return simulated_hardware(simulate) if simulate else detect_hardware()

    def _profiles_command(self, args, overrides) -> int:
        from trainstack.hardware import resolve_profile, why_not_fits

        profiles = self.profiles()
        if args.action == "list":
            hw = self._hardware(args.simulate)
            for p in profiles:
                why = why_not_fits(p, hw)
                fits = "fits here" if not why else "not here: " + "; ".join(why)
                print(f"{p.name:<16} {describe_requirements(p.requires):<38} {p.description}  [{fits}]")
            if self.after_profiles_list is not None:
                self.after_profiles_list(args, profiles)
            return EXIT_OK
        if args.action == "pick":
            profile, _ = self.choose_profile("auto", self._hardware(args.simulate))
            print(profile.name)
            return EXIT_OK
        if args.action == "show":
            if not args.names:
                raise _usage(f"{self.prog} profiles show: name a profile (one of: {', '.join(p.name for p in profiles)})")
            for name in args.names:
                p = resolve_profile(name, profiles)
                print(f"# {self.prog} profile {p.name}: save this, edit it, and pass it back with --profile PATH.yaml")
                sys.stdout.write(p.path.read_text(encoding="utf-8"))
            return EXIT_OK
        failed = 0
        for name in args.names or [p.name for p in profiles]:
            try:
                p = resolve_profile(name, profiles)
            except ValueError as err:
                print(f"FAIL {name}\n     error: {err}")
                failed += 1
                continue
            errors, notes = self._check_profile(p)
            print(f"{'FAIL' if errors else 'OK  '} {p.name} ({p.path})")
            for line in notes:
                print(f"     {line}")
            for line in errors:
                print(f"     error: {line}")
            failed += bool(errors)
        return EXIT_USAGE if failed else EXIT_OK

    def _check_profile(self, profile) -> tuple[list[str], list[str]]:
        if self.validate_profile is not None:
            return import_attr(self.validate_profile)(profile)
        from trainstack.config import ConfigError, load_config

        try:
            load_config(self.config_type(), profile.settings)
        except ConfigError as err:
            return [str(err)], []
        return [], []


def _resume_value(text: str) -> str:
    return "auto" if text in ("auto", "latest") else text


def _usage(message: str) -> Exception:
    from trainstack.config import ConfigError

    return ConfigError(message)


def describe_requirements(r) -> str:
    """``1 GPU >= 15 GiB, sm_80+`` or ``CPU``: a profile's hardware needs in a few words."""
    if not r.gpu_count:
        text = "CPU"
    else:
        text = f"{r.gpu_count} GPU{'s' if r.gpu_count > 1 else ''} >= {r.min_gpu_memory_gib:g} GiB"
        if r.min_compute_capability:
            text += ", sm_{}{}+".format(*r.min_compute_capability)
    if r.min_ram_gib:
        text += f", RAM >= {r.min_ram_gib:g} GiB"
    return text
