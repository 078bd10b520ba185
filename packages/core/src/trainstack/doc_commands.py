"""The commands a Markdown page quotes, as argv, so a test can parse each one and the page cannot rot.

    for line, argv in quoted_commands(page_text, prog="hlbd", module="hlbd"):
        command, args, overrides = cli.parse(argv)   # argv starts after the program: ["train", ...]

A command of ours is a line of a fenced code block that starts (after `VAR=value` assignments) with
the console script (`hlbd train ...`), or with a launcher that runs the package as a module
(`accelerate launch ... -m hlbd`, `torchrun ... -m hlbd`, `deepspeed ... --module hlbd`,
`python -m hlbd`). Lines ending in a backslash continue on the next line; `# comments` and anything
after a redirection are dropped; of a pipe, the last stage counts. Every other line (the users' own commands, prose) is left
alone.
"""

from __future__ import annotations

import re
import shlex

LAUNCHERS = ("accelerate", "torchrun", "deepspeed", "python", "python3")
_FENCE = re.compile(r"^(```|~~~)")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_SHELL_BREAKS = (">", ">>", "<", "&&", ";", "2>", "2>&1")


def fenced_lines(markdown: str) -> list[str]:
    """The logical lines of every fenced code block (backslash continuations joined)."""
    lines: list[str] = []
    inside = False
    pending = ""
    for raw in markdown.splitlines():
        if _FENCE.match(raw.strip()):
            inside = not inside
            pending = ""
            continue
        if not inside:
            continue
        text = pending + raw.strip()
        if text.endswith("\\"):
            pending = text[:-1].rstrip() + " "
            continue
        pending = ""
        if text:
            lines.append(text)
    return lines


def command_argv(line: str, prog: str, module: str) -> list[str] | None:
    """argv after the program when ``line`` runs ``prog`` (directly or under a launcher), else None."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:  # an unbalanced quote: not a shell command
        return None
    if "|" in tokens:  # `echo text | hlbd generate ...`: the command is the last stage of the pipe
        tokens = tokens[len(tokens) - tokens[::-1].index("|"):]
    for i, token in enumerate(tokens):
        if token in _SHELL_BREAKS:
            tokens = tokens[:i]
            break
    while tokens and _ASSIGNMENT.match(tokens[0]):
        tokens = tokens[1:]
    if not tokens:
        return None
    if tokens[0] == prog:
        return tokens[1:]
    if tokens[0] in LAUNCHERS:
        for i in range(len(tokens) - 1):
            if tokens[i] in ("-m", "--module") and tokens[i + 1] == module:
                return tokens[i + 2:]
    return None


def quoted_commands(markdown: str, prog: str, module: str) -> list[tuple[str, list[str]]]:
    """(line, argv after the program) for every command of ours quoted in ``markdown``'s code blocks."""
    found = []
    for line in fenced_lines(markdown):
        argv = command_argv(line, prog, module)
        if argv is not None:
            found.append((line, argv))
    return found
