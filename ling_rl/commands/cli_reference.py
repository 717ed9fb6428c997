"""The command-line reference (reference/cli.md of the site), generated from the typer app itself.

Each `ling-rl` command with its usage line, help text, arguments and options (type, default,
help), read from the click command typer builds, so the page lists exactly what `ling-rl COMMAND
--help` accepts. typer ships its own copy of click, so the types come from `typer` and
`typer.core`, never from a separately installed click. The MkDocs hook `scripts/mkdocs_hooks.py` renders it at build time:

    python -m ling_rl.commands.cli_reference > cli.md
"""

from __future__ import annotations

import html

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

from ling_rl.commands.cli import app

PROG = "ling-rl"


def render(typer_app: typer.Typer = app) -> str:
    """The markdown page: the commands in the order `ling-rl --help` lists them, one section each."""
    group = typer.main.get_command(typer_app)
    if not isinstance(group, TyperGroup):
        raise TypeError(f"{PROG}: expected a command group, got {type(group).__name__}")
    root = typer.Context(group, info_name=PROG)
    lines = [
        "# Command-line reference",
        "",
        f"`{PROG}`: {_text(group.help)}",
        "",
        f"Every `{PROG}` command, generated from the command-line program itself when the site is",
        f"built, so it matches `{PROG} COMMAND --help`.",
        "",
    ]
    for name in group.list_commands(root):
        command = group.get_command(root, name)
        if command is None or command.hidden:
            continue
        ctx = typer.Context(command, info_name=name, parent=root)
        lines += [f"## `{PROG} {name}`", "", _text(command.help), "", "```text",
                  f"{command.get_usage(ctx)}", "```", ""]
        for kind, params in (("Arguments", [p for p in command.params if isinstance(p, TyperArgument)]),
                             ("Options", [p for p in command.params if isinstance(p, TyperOption)])):
            shown = [p for p in params if not getattr(p, "hidden", False)]
            if not shown:
                continue
            lines += [f"**{kind}**", ""]
            for param in shown:
                lines += _param(param, ctx)
    return "\n".join(lines)


def _text(help_text: str | None) -> str:
    return " ".join((help_text or "").split())


def _param(param: TyperArgument | TyperOption, ctx: typer.Context) -> list[str]:
    """A definition-list entry from the help record `--help` prints: names and type, then help."""
    record = param.get_help_record(ctx)
    if record is None:
        return []
    names, help_text = record
    # `[default: ...]` and `[required]` go on their own line, as facts after the description.
    # Help text is plain text: `<recipe file name>` must not become an HTML tag.
    text = html.escape(_text(help_text), quote=False).replace(" [", "<br>[", 1) if help_text else ""
    return [f"`{names}`", f":   {text or '(no help text)'}", ""]


if __name__ == "__main__":
    print(render())
