"""Shell completion: `meshctl completion bash|zsh|fish` loaded into a real bash (zsh, fish) that
completes command lines as a user's Tab would, against a real `meshctl serve` with a sidecar
and a Route (services, object and proxy names), and offline (commands, options, choices,
files; nothing, and no error, when the control plane is not there)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers_mesh import (
    ROOT,
    MeshProcess,
    apply_yaml,
    start_backend,
    start_control_plane,
    start_sidecar,
)
from tests.ports import free_port
from tests.tools import required_tool

pytestmark = pytest.mark.timeout(180)
BIN = str(Path(sys.executable).parent)  # where this environment's `meshctl` is
ROUTE = """\
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: ratings-split}
spec:
  host: ratings
  rules: [{backends: [{service: ratings}]}]
"""


def bash_complete(line: str, control_plane: str, cwd: Path = ROOT) -> list[str]:
    """What Tab offers at the end of ``line`` in a bash that sourced the script."""
    words = shlex.split(line) + ([""] if line.endswith(" ") else [])
    program = (f"source <(meshctl completion bash)\n"
               f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
               f"COMP_CWORD={len(words) - 1}\n"
               "_meshctl_complete\n"
               'printf "%s\\n" "${COMPREPLY[@]}"\n')
    out = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=60,
                         cwd=cwd, env=_env(control_plane))
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return [w for w in out.stdout.splitlines() if w]


def _env(control_plane: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
            "AMI_CONTROL_PLANE": control_plane}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MeshProcess, str]]:
    tmp = tmp_path_factory.mktemp("completion")
    cp = start_control_plane(tmp)
    app = start_backend(tmp, "ratings-app")
    sidecar = None
    try:
        apply_yaml(cp, ROUTE)
        sidecar = start_sidecar(tmp, cp.info["grpc"], "ratings", "v1", app=app.info["address"])
        yield cp, sidecar.info["name"]
    finally:
        for proc in (sidecar, app, cp):
            if proc is not None:
                proc.stop()


def test_commands_subcommands_options_and_choices_offline() -> None:
    """No control plane at the address: what the parsers know is still offered."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    assert bash_complete("meshctl sh", nowhere) == ["shift"]
    assert bash_complete("meshctl demo ", nowhere) == ["down", "status", "up"]
    assert "--window" in bash_complete("meshctl stat --w", nowhere)
    assert bash_complete("meshctl stat -o ", nowhere) == ["table", "wide", "json"]
    assert bash_complete("meshctl completion ", nowhere) == ["bash", "zsh", "fish"]
    assert bash_complete("meshctl get ro", nowhere) == ["route"]
    assert bash_complete("meshctl --control-plane x pro", nowhere) == [
        "proxy-config", "proxy-status"]
    assert bash_complete("meshctl stat ", nowhere) == []  # (services: nobody to ask)
    assert bash_complete("meshctl shift reviews ", nowhere) == []  # (weights: free text)


def test_files_where_a_file_is_asked_for(tmp_path: Path) -> None:
    (tmp_path / "routes.yaml").write_text(ROUTE)
    (tmp_path / "rules").mkdir()
    nowhere = f"http://127.0.0.1:{free_port()}"
    assert sorted(bash_complete("meshctl apply -f r", nowhere, cwd=tmp_path)) == [
        "routes.yaml", "rules"]
    assert bash_complete("meshctl --ca-file rou", nowhere, cwd=tmp_path) == ["routes.yaml"]


def test_names_from_the_control_plane(mesh: tuple[MeshProcess, str]) -> None:
    """Services, a Route's name, proxy names and proxy-config's sections."""
    cp, proxy = mesh
    api = cp.info["api"]
    assert bash_complete("meshctl stat ", api) == ["ratings"]
    assert bash_complete("meshctl shift ra", api) == ["ratings"]
    assert bash_complete("meshctl describe svc ", api) == ["ratings"]
    assert bash_complete("meshctl get route ", api) == ["ratings-split"]
    assert bash_complete("meshctl get route ", f"http://127.0.0.1:{free_port()}") == []
    offered = bash_complete("meshctl proxy-config ", api)
    assert proxy in offered and "routes" in offered and "log" in offered
    assert bash_complete("meshctl proxy-config routes ", api) == [proxy]
    # the control plane named on the line wins over $AMI_CONTROL_PLANE
    nowhere = f"http://127.0.0.1:{free_port()}"
    assert bash_complete(f"meshctl --control-plane {api} stat ", nowhere) == ["ratings"]
    assert _complete(["--control-plane=" + api, "stat", ""], nowhere) == ["ratings"]


def _complete(words: list[str], control_plane: str) -> list[str]:
    """`meshctl __complete WORDS` itself (a word with `=` in it: bash would split it)."""
    out = subprocess.run([sys.executable, "-m", "meshctl", "__complete", *words],
                         capture_output=True, text=True, timeout=60, env=_env(control_plane))
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return out.stdout.split()


def test_zsh_loads_the_script_and_completes_through_bashcompinit() -> None:
    """zsh's bash emulation runs the same function: the script loads without a word on
    stderr, registers the completion, and the function gives the subcommands."""
    zsh = required_tool("zsh", hint="Debian package zsh")
    nowhere = f"http://127.0.0.1:{free_port()}"
    program = ("autoload -U compinit && compinit -u\n"
               "source <(meshctl completion zsh)\n"
               'print -r -- "${_comps[meshctl]}"\n'
               "emulate sh -c 'COMP_WORDS=(meshctl demo \"\"); COMP_CWORD=2; "
               "_meshctl_complete; printf \"%s\\n\" \"${COMPREPLY[@]}\"'\n")
    out = subprocess.run([zsh, "-f", "-c", program], capture_output=True, text=True,
                         timeout=60, env=_env(nowhere))
    assert out.returncode == 0 and out.stderr == "", out.stderr
    lines = out.stdout.splitlines()
    assert "_meshctl_complete" in lines[0]
    assert lines[1:] == ["down", "status", "up"]


def test_fish_completes_through_the_same_candidates(tmp_path: Path) -> None:
    """fish's own `complete -C` (what its Tab shows) over the script: subcommands, commands
    by prefix, and file names where a file is asked for."""
    fish = required_tool("fish", hint="Debian package fish")
    (tmp_path / "routes.yaml").write_text(ROUTE)
    nowhere = f"http://127.0.0.1:{free_port()}"
    program = ("meshctl completion fish | source\n"
               "complete -C 'meshctl demo '; echo ---\n"
               "complete -C 'meshctl de'; echo ---\n"
               "complete -C 'meshctl apply -f rou'\n")
    out = subprocess.run([fish, "--no-config", "-c", program], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path, env=_env(nowhere))
    assert out.returncode == 0 and out.stderr == "", out.stderr
    demo, commands, files = (part.split() for part in out.stdout.split("---\n"))
    assert demo == ["down", "status", "up"]
    assert commands == ["delete", "demo", "describe"]
    assert files == ["routes.yaml"]
