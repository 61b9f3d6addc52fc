"""The command line as a whole: every argument documented, and ``--db`` before or after every command's name."""

from __future__ import annotations

import argparse

from search_fakes import add_model

from autotune.cli import build_parser, subcommands
from autotune.store import Store

COMMANDS = {
    "gpus",
    "add",
    "models",
    "remove",
    "db",
    "db path",
    "db upgrade",
    "measure",
    "tune",
    "trials",
    "status",
    "daemon",
    "estimate",
    "recommend",
    "report",
    "env",
    "env add",
    "env list",
    "env remove",
}


def _positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]


def test_every_argument_has_help_text() -> None:
    commands = subcommands(build_parser())
    assert set(commands) == COMMANDS
    for name, sub in commands.items():
        for option in sub._actions:
            if option.help is not argparse.SUPPRESS and not isinstance(option, argparse._SubParsersAction):
                assert option.help, (name, option.dest)


def test_every_command_takes_db_before_and_after_its_name() -> None:
    parser = build_parser()
    for name, sub in subcommands(parser).items():
        if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
            continue  # a group (db, env): its commands are checked
        argv = [*name.split(), *("M" for a in _positionals(sub) if a.nargs is None)]
        assert parser.parse_args(argv).db is None, name
        assert parser.parse_args(["--db", "x.db", *argv]).db == "x.db", name
        assert parser.parse_args([*argv, "--db", "y.db"]).db == "y.db", name
        assert "--db URL" in sub.format_help(), name


def test_models_db_after_the_command_reads_that_database(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    other = tmp_path / "other.db"
    with Store.open(str(other)) as store:
        add_model(store, "org/elsewhere")
    assert "org/elsewhere" in cli("models", "--db", other).out
    assert "org/elsewhere" in cli("--db", other, "models").out
    assert "no models registered" in cli("models").out  # $AUTOTUNE_DB, untouched
    assert cli("db", "path", "--db", other).out.strip() == str(other)
