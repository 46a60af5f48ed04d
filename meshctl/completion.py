"""Shell completion. `meshctl completion bash|zsh|fish` prints the script; on each Tab the script
asks `meshctl __complete WORD...` (the words after `meshctl`, the last being the one to
complete; bash and zsh: `meshctl __complete --line LINE`, the line up to the cursor) for
candidates, one per line, or `:files` for the shell's own file names.

Commands, subcommands, options and their choices come from the command's own parser (only its
module is loaded: `cli.COMMAND_MODULES`), so they are never out of date; services, kinds,
object names and proxy names come from the control plane named on the line, or by
$AMI_CONTROL_PLANE, within a second, and are left out when it does not answer.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from meshctl.cli import COMMAND_MODULES, build_parser

FILES = ":files"
# seconds: a Tab must not hang on a control plane that is not there (AMI_COMPLETION_TIMEOUT
# for a slow link)
LOOKUP_TIMEOUT = 1.0
# What a service, object or proxy name can be (meshctl/controlplane/xds.py check_proxy, the
# API's DNS names): anything else an address answers with is not offered to the shell.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_GLOBAL_VALUES = ("--control-plane", "--ca-file")

SCRIPT = """\
# meshctl completion for {shell}. Load it in this shell: source <(meshctl completion {shell})
# or for good, from your ~/.{rc}: meshctl completion {shell} > ~/.meshctl-completion; and
# source ~/.meshctl-completion there.
{preamble}_meshctl_complete() {{
    # The line, not COMP_WORDS: bash splits those at ':' and '=' too (a URL's every colon).
    local cur="${{COMP_WORDS[COMP_CWORD]}}" out word IFS=$'\\n'
    out=$(command "${{COMP_WORDS[0]}}" __complete --line "${{COMP_LINE:0:$COMP_POINT}}" \\
          2>/dev/null) || return 0
    if [[ "$out" == "{files}" ]]; then
        COMPREPLY=($(compgen -f -- "$cur"))
        compopt -o filenames 2>/dev/null
    else  # (by prefix, not compgen -W, which would expand what a candidate holds)
        COMPREPLY=()
        while read -r word; do
            [[ -n "$word" && "$word" == "$cur"* ]] && COMPREPLY+=("$word")
        done <<< "$out"
    fi
}}
complete -F _meshctl_complete meshctl
"""
_PREAMBLES = {"bash": "", "zsh": "autoload -U +X bashcompinit && bashcompinit\n"}
_RC = {"bash": "bashrc", "zsh": "zshrc"}
FISH_SCRIPT = """\
# meshctl completion for fish. Load it in this shell: meshctl completion fish | source
# or for good: meshctl completion fish > ~/.config/fish/completions/meshctl.fish
function __meshctl_complete
    set -l words (commandline -opc)[2..-1] (commandline -ct)
    set -l out (command meshctl __complete $words 2>/dev/null)
    if test "$out" = "{files}"
        __fish_complete_path (commandline -ct)
    else
        printf '%s\\n' $out
    end
end
complete -c meshctl -f -a '(__meshctl_complete)'
"""
SHELLS = ("bash", "zsh", "fish")


def script(shell: str) -> str:
    if shell == "fish":
        return FISH_SCRIPT.format(files=FILES)
    return SCRIPT.format(shell=shell, rc=_RC[shell], preamble=_PREAMBLES[shell], files=FILES)


def main(words: Sequence[str]) -> int:
    """`meshctl __complete WORD...` or `meshctl __complete --line LINE`: the candidates on
    stdout; never an error."""
    try:
        if len(words) == 2 and words[0] == "--line":
            words = split_line(words[1])[1:]  # (the first word is the program)
        candidates = complete(list(words))
    except Exception:  # (completion must not print a traceback into someone's prompt)
        candidates = []
    sys.stdout.write("".join(c + "\n" for c in candidates))
    return 0


def split_line(line: str) -> list[str]:
    """The words of a command line typed up to the cursor, as the shell will pass them when
    run: quotes and backslashes removed, one still open closed; the last word is the one
    being typed ("" after a space)."""
    for closing in ("", '"', "'"):
        try:
            words = shlex.split(line + closing)
        except ValueError:  # an open quote (or a trailing backslash: nothing to fix)
            continue
        ends_word = not closing and line[-1:].isspace() and not line.endswith("\\" + line[-1:])
        return [*words, ""] if ends_word or not words else words
    return [*line.split(), ""]


def complete(words: list[str]) -> list[str]:
    """Candidates for the last of ``words`` (the command line after `meshctl`)."""
    *before, current = words or [""]
    if current.startswith("-") and "=" in current:
        return []  # --option=value: the value is not completed
    start = _command_index(before)
    if start is None:  # no command yet: global options and their values, or a command
        if before and before[-1] in _GLOBAL_VALUES:
            return [FILES] if before[-1] == "--ca-file" else []
        return ([*_GLOBAL_VALUES, "--help"] if current.startswith("-")
                else sorted(COMMAND_MODULES))
    parser = build_parser(before)
    path = [before[start]]
    parser = _subparsers(parser).choices[before[start]]  # type: ignore[union-attr]
    values: list[str] = []
    expecting: argparse.Action | None = None
    for word in before[start + 1:]:
        if expecting is not None:
            expecting = None
        elif word.startswith("-") and word != "-":
            action = _options(parser).get(word)
            if action is not None and action.nargs != 0:
                expecting = action
        elif (sub := _subparsers(parser)) is not None and word in sub.choices:
            parser = sub.choices[word]
            path.append(word)
            values = []
        else:
            values.append(word)
    if expecting is not None:
        return _option_values(expecting)
    if current.startswith("-"):
        return sorted(_options(parser))
    sub = _subparsers(parser)
    if sub is not None:
        return [] if values else sorted(sub.choices)
    return _positional_values(parser, path, values, before)


def _command_index(before: list[str]) -> int | None:
    """Where the command word is in ``before``, after any global options; None before it."""
    i = 0
    while i < len(before):
        word = before[i]
        if word in _GLOBAL_VALUES:
            i += 2
        elif word.startswith("-"):
            i += 1
        else:
            return i if word in COMMAND_MODULES else None
    return None


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any] | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings if a.help != argparse.SUPPRESS}


def _option_values(action: argparse.Action) -> list[str]:
    if action.choices:
        return [str(c) for c in action.choices]
    if action.type is Path or "FILE" in str(action.metavar) or action.dest == "paths":
        return [FILES]
    return []


def _positional_values(parser: argparse.ArgumentParser, path: list[str], values: list[str],
                       before: list[str]) -> list[str]:
    positionals = [a for a in parser._actions
                   if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]
    if not positionals:
        return []
    index = min(len(values), len(positionals) - 1)
    action = positionals[index]
    if index < len(values) and action.nargs not in ("+", "*"):
        return []  # every positional is given
    if action.choices:
        return [str(c) for c in action.choices]
    if action.type is Path:
        return [FILES]
    lookup = _LOOKUPS.get((path[0], action.dest))
    if lookup is None:
        return []
    # (what came before this positional; a `+`/`*` one takes all that was given to it)
    return lookup(values if action.nargs in ("+", "*") else values[:index], before)


# --- what only the control plane knows ------------------------------------------------------
def _given(before: list[str], *options: str) -> str | None:
    """The value of an option on the line: `--opt V`, `--opt=V`, or `-oV` for a short one."""
    for i, word in enumerate(before):
        for option in options:
            if word == option and i + 1 < len(before):
                return before[i + 1]
            if word.startswith(option + "="):
                return word[len(option) + 1:]
            if len(option) == 2 and word.startswith(option) and len(word) > 2:
                return word[2:]
    return None


def _lookup_timeout() -> float:
    try:
        value = float(os.environ.get("AMI_COMPLETION_TIMEOUT", LOOKUP_TIMEOUT))
    except ValueError:
        return LOOKUP_TIMEOUT
    return value if 0 < value < 3600 else LOOKUP_TIMEOUT  # (nan fails both)


def _client(before: list[str], timeout: float) -> Any:
    from meshctl.commands.calls import make_client

    args = argparse.Namespace(control_plane=_given(before, "--control-plane"),
                              ca_file=_given(before, "--ca-file"))
    client = make_client(args)
    client.timeout = timeout
    return client


def _asking(find: Callable[[Any], list[str]], before: list[str]) -> list[str]:
    """The names ``find`` gets from the control plane within the lookup timeout in all (the
    client's timeout bounds each read only: a server sending a byte at a time, or a slow DNS
    lookup, would hold the Tab), else none; only what can be a name."""
    timeout = _lookup_timeout()
    try:
        client = _client(before, timeout)  # (local work, the imports: not the deadline's)
    except Exception:
        return []  # no usable address or credentials: no names, no noise
    found: list[list[str]] = []

    def ask() -> None:
        with contextlib.suppress(Exception):  # not there, refused: no names, no noise
            found.append(find(client))

    thread = threading.Thread(target=ask, daemon=True)  # (left behind when late: exit ends it)
    thread.start()
    thread.join(timeout)
    names = found[0] if found else []
    return sorted({n for n in names if isinstance(n, str) and _NAME.fullmatch(n)})


def _proxies(client: Any) -> list[dict[str, Any]]:
    return list(client.field(client._json("GET", "/api/v1/proxies"), "proxies", list))


def services(_values: list[str], before: list[str]) -> list[str]:
    return _asking(lambda c: [p["service"] for p in _proxies(c) if p.get("service")], before)


def proxy_names(values: list[str], before: list[str]) -> list[str]:
    from meshctl.commands.proxyconfig_sections import SECTIONS

    names = _asking(lambda c: [p["name"] for p in _proxies(c)], before)
    return names if values else sorted([*SECTIONS, "log", *names])


def kinds(values: list[str], before: list[str]) -> list[str]:
    from meshctl.api.kindnames import KIND_PLURALS

    words = sorted(k.lower() for k in KIND_PLURALS)
    command = before[_command_index(before) or 0]
    return {"get": ["all", *words], "describe": [*words, "service"]}.get(command, words)


def object_names(values: list[str], before: list[str]) -> list[str]:
    from meshctl.commands.calls import SERVICE, resolve_kind

    if not values:
        return []
    try:
        kind = resolve_kind(values[0])
    except argparse.ArgumentTypeError:
        return services([], before) if values[0].lower() in ("service", "svc") else []
    if kind == SERVICE:
        return services([], before)
    namespace: str | None = _given(before, "-n", "--namespace") or "default"
    if "-A" in before or "--all-namespaces" in before:
        namespace = None
    return _asking(lambda c: [o["metadata"]["name"] for o in c.get(kind, namespace=namespace)],
                   before)


_LOOKUPS: dict[tuple[str, str], Callable[[list[str], list[str]], list[str]]] = {
    **{(command, "service"): services
       for command in ("stat", "routes", "authz", "top", "tap", "shift", "canary")},
    **{(command, "kind"): kinds for command in ("get", "delete", "describe", "schema")},
    **{(command, "name"): object_names for command in ("get", "delete", "describe")},
    ("proxy-config", "words"): proxy_names,
}
