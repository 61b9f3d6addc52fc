"""The ``autotune`` command: a thin layer that parses, calls the library, and prints.

Each group of commands lives in a module with a ``register(subparsers)`` function. Errors the
library raises (:class:`autotune.errors.AutotuneError`) become one line on stderr and their exit
code; argument errors exit 2 with one line too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from autotune import __version__
from autotune.errors import AutotuneError

#: The modules that add commands, in the order ``autotune --help`` lists them.
COMMAND_MODULES = (
    "autotune.cli.setup",
    "autotune.cli.measure",
    "autotune.cli.tune",
    "autotune.cli.advise",
    "autotune.cli.report",
    "autotune.cli.envs",
)


DB_HELP = "database: a SQLAlchemy URL or a file path (default: $AUTOTUNE_DB, else a SQLite file in your data directory)"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="autotune", description="Find the fastest way to load and run a Transformers model on your GPUs, under your memory limit."
    )
    parser.add_argument("--version", action="version", version=f"autotune {__version__}")
    parser.add_argument("--db", metavar="URL", help=DB_HELP)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands)
    _accept_db_everywhere(parser)
    return parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's commands by name (``db path`` for nested ones), in the order they were added."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = sub
                found.update({f"{name} {inner}": p for inner, p in subcommands(sub).items()})
    return found


def _accept_db_everywhere(parser: argparse.ArgumentParser) -> None:
    """Let every command take ``--db`` after its name too (``autotune models --db X``).

    The commands' ``--db`` defaults to "not given", so that one given before the command name
    is kept.
    """
    for sub in subcommands(parser).values():
        sub.add_argument("--db", metavar="URL", default=argparse.SUPPRESS, help=DB_HELP)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AutotuneError as exc:
        print(f"autotune: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("autotune: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def open_store(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from autotune.store import Store

    return Store.open(args.db)
