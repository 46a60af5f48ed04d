"""`meshctl` loads only the module of the command it runs: everyday commands start without the
demo's and the control plane's libraries (aiohttp, grpc, cryptography), and the table that
says which module adds which command is what the modules register."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import subprocess
import sys

import pytest

import meshctl.commands
from meshctl.cli import COMMAND_MODULES, build_parser
from meshctl.cligroups import GROUPS

HEAVY = ("aiohttp", "grpc", "cryptography", "opentelemetry", "prometheus_client")
EVERYDAY = ("stat", "edges", "routes", "top", "tap", "check", "dashboard", "get", "apply",
            "delete", "describe", "shift", "proxy-status", "proxy-config", "version", "diff",
            "validate", "schema", "canary", "bug-report", "completion")


def registered() -> dict[str, str]:
    """Every command the modules of `meshctl.commands` register, and its module."""
    found: dict[str, str] = {}
    for info in pkgutil.iter_modules(meshctl.commands.__path__):
        module = importlib.import_module(f"meshctl.commands.{info.name}")
        add = getattr(module, "add_parser", None)
        if add is not None:
            subparsers = argparse.ArgumentParser().add_subparsers()
            add(subparsers)
            found.update(dict.fromkeys(subparsers.choices, info.name))
    return found


def test_the_table_names_the_module_that_adds_each_command() -> None:
    assert registered() == COMMAND_MODULES


def test_the_help_lists_every_command_once_under_its_group() -> None:
    """`meshctl --help` groups the commands as kubectl's help does: each registered command
    under exactly one group title, with its one-line help, in place of argparse's flat list
    (a new command missing from cligroups.GROUPS fails here)."""
    out = subprocess.run([sys.executable, "-m", "meshctl", "--help"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "COLUMNS": "100"})
    assert out.returncode == 0, out.stderr
    titles = [title for title, _ in GROUPS]
    assert titles == ["Basic commands", "Traffic", "Observe", "Troubleshoot", "Mesh", "Other"]
    listed: dict[str, list[str]] = {}
    group = None
    for line in out.stdout.splitlines():
        if line.endswith(":") and line[:-1] in titles:
            group = line[:-1]
        elif group is not None and line.startswith("  ") and not line.startswith("   "):
            listed.setdefault(line.split()[0], []).append(group)
        elif not line.strip():
            group = None
    assert sorted(listed) == sorted(registered()), out.stdout
    assert {name for name, groups in listed.items() if len(groups) != 1} == set()
    assert listed["apply"] == ["Basic commands"] and listed["check"] == ["Troubleshoot"]
    assert "  apply" in out.stdout and "create or update resources from files" in out.stdout
    assert "{bug-report," not in out.stdout  # (argparse's own list is gone)
    assert out.stdout.startswith("usage: meshctl [-h] [--control-plane URL] [--ca-file FILE] "
                                 "COMMAND [ARGS...]\n"), out.stdout
    # a command's own help keeps its usage and description
    stat = subprocess.run([sys.executable, "-m", "meshctl", "stat", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert stat.stdout.startswith("usage: meshctl stat [-h]"), stat.stdout


def loaded_by(argv: list[str]) -> list[str]:
    """The heavy packages loaded by building the parser for ``argv``, in a fresh interpreter."""
    code = ("import json, sys; from meshctl.cli import build_parser; "
            f"build_parser({argv!r}); "
            f"print(json.dumps([h for h in {HEAVY!r} if h in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    loaded: list[str] = json.loads(out.stdout)
    return loaded


@pytest.mark.parametrize("command", EVERYDAY)
def test_an_everyday_command_loads_no_heavy_library(command: str) -> None:
    assert loaded_by([command]) == []


@pytest.mark.parametrize("argv", [
    ["--control-plane", "http://127.0.0.1:1", "stat"],
    ["--control-plane=http://127.0.0.1:1", "stat"],
    ["--control", "http://127.0.0.1:1", "--ca-file", "x.pem", "stat", "reviews"],
])
def test_global_options_before_the_command_are_read_as_the_full_parser_reads_them(
        argv: list[str]) -> None:
    parser = build_parser(argv)
    assert parser.parse_args(argv).command == "stat"
    assert loaded_by(argv) == []


def test_help_and_an_unknown_command_see_every_command() -> None:
    """(They build the whole parser: the heavy commands are among those listed.)"""
    listing = subprocess.run([sys.executable, "-m", "meshctl", "--help"], capture_output=True,
                             text=True, timeout=60)
    assert listing.returncode == 0
    assert all(command in listing.stdout for command in COMMAND_MODULES)
    unknown = subprocess.run([sys.executable, "-m", "meshctl", "stats"], capture_output=True,
                             text=True, timeout=60)
    assert unknown.returncode == 2
    assert "invalid choice: 'stats'" in unknown.stderr and "'demo'" in unknown.stderr
    assert loaded_by(["--help"]) != []  # (the demo's own libraries: it lists demo too)


def test_every_commands_help_says_what_it_does() -> None:
    """`meshctl X --help` (and `meshctl certs token --help`, `meshctl demo up --help`...)
    starts with what the command does, not only its options: a reader should not need the
    code, nor the top-level listing, to learn it."""
    def walk(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             prefix: str) -> list[str]:
        missing = []
        for name, parser in sub.choices.items():
            if not (parser.description or "").strip():
                missing.append(prefix + name)
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    missing += walk(action, f"{prefix}{name} ")
        return missing

    [top] = [a for a in build_parser(["--help"])._actions
             if isinstance(a, argparse._SubParsersAction)]
    assert walk(top, "") == []
    # a help drawn from a module docstring shows `code` as the other helps do, not the
    # docstring's reStructuredText ``code``
    def literal(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> list[str]:
        found = []
        for name, parser in sub.choices.items():
            if "``" in parser.format_help():
                found.append(name)
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    found += literal(action)
        return found

    assert literal(top) == []
    shown = subprocess.run([sys.executable, "-m", "meshctl", "certs", "token", "--help"],
                           capture_output=True, text=True, timeout=60)
    assert "Print a service's bootstrap token" in shown.stdout, shown.stdout


def test_the_command_runs_through_main() -> None:
    """`meshctl schema Route` (no control plane needed) prints the schema: the parser built
    for one command dispatches to it."""
    out = subprocess.run([sys.executable, "-m", "meshctl", "schema", "Route"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["title"]
