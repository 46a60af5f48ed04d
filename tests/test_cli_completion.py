"""Shell completion: `meshctl completion bash|zsh|fish` loaded into a real bash (zsh, fish) that
completes command lines as a user's Tab would, against a real `meshctl serve` with a sidecar
and a Route (services, object and proxy names), and offline (commands, options, choices,
files; nothing, and no error, when the control plane is not there)."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
    """What Tab offers at the end of ``line`` in a bash that sourced the script (COMP_LINE
    and COMP_POINT as bash sets them; bash_tab has bash's own COMP_WORDS too)."""
    words = shlex.split(line) + ([""] if line.endswith(" ") else [])
    program = (f"source <(meshctl completion bash)\n"
               f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
               f"COMP_CWORD={len(words) - 1}\n"
               f"COMP_LINE={shlex.quote(line)}\n"
               f"COMP_POINT={len(line)}\n"
               "_meshctl_complete\n"
               'printf "%s\\n" "${COMPREPLY[@]}"\n')
    out = subprocess.run(["bash", "-c", program], capture_output=True, text=True, timeout=60,
                         cwd=cwd, env=_env(control_plane))
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return [w for w in out.stdout.splitlines() if w]


def bash_tab(line: str, control_plane: str, tmp: Path) -> list[str]:
    """The words a real interactive bash runs `meshctl` with once ``line`` was typed and Tab's
    completions inserted (readline's insert-completions: every candidate, sorted): readline
    splits the line into COMP_WORDS as for a user. `meshctl` is then a function writing its
    arguments to a file (the script's `command meshctl` still runs the real one)."""
    out = tmp / "args"
    out.unlink(missing_ok=True)
    leader, follower = pty.openpty()
    shell = subprocess.Popen(["bash", "--norc", "--noprofile", "-i"], stdin=follower,
                             stdout=follower, stderr=follower, cwd=tmp, start_new_session=True,
                             env={**_env(control_plane), "PS1": "$ ", "TERM": "dumb"})
    os.close(follower)
    keys = ("source <(meshctl completion bash)\n"
            "bind '\"\\C-t\": insert-completions'\n"
            f"meshctl() {{ printf '%s\\n' \"$@\" > {shlex.quote(str(out))}; }}\n"
            f"{line}\x14\nexit\n")
    drained = threading.Thread(target=_drain, args=(leader,), daemon=True)
    drained.start()
    try:
        os.write(leader, keys.encode())
        assert shell.wait(timeout=60) == 0
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()
        drained.join(10)
        os.close(leader)
    return out.read_text().splitlines()


def _drain(fd: int) -> None:
    """Read the terminal's output until it closes (a full pty would block the shell)."""
    try:
        while os.read(fd, 65536):
            pass
    except OSError:
        pass


def _env(control_plane: str, lookup_timeout: str = "20") -> dict[str, str]:
    """The environment of a Tab; ``lookup_timeout`` (AMI_COMPLETION_TIMEOUT): the default 1 s
    is a hair trigger on a loaded CI machine, where a lookup that finds names is the point."""
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
            "AMI_CONTROL_PLANE": control_plane, "AMI_COMPLETION_TIMEOUT": lookup_timeout}


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


def test_bash_tab_with_the_control_plane_on_the_line(mesh: tuple[MeshProcess, str],
                                                     tmp_path: Path) -> None:
    """A real bash splits COMP_WORDS at ':' and '=' too, so a URL was many words and the
    command was not found (Tab offered the command names as Route names)."""
    api = mesh[0].info["api"]
    nowhere = f"http://127.0.0.1:{free_port()}"
    assert bash_tab(f"meshctl --control-plane {api} get route ", nowhere, tmp_path) == [
        "--control-plane", api, "get", "route", "ratings-split"]
    assert bash_tab(f"meshctl --control-plane={api} stat ", nowhere, tmp_path) == [
        f"--control-plane={api}", "stat", "ratings"]
    assert bash_tab("meshctl get route --namespace=default ", api, tmp_path) == [
        "get", "route", "--namespace=default", "ratings-split"]


def test_namespace_written_with_equals_or_attached(mesh: tuple[MeshProcess, str]) -> None:
    """`--namespace=NS` and `-nNS` name the namespace as `-n NS` does (they were ignored:
    the Routes of `default` were offered)."""
    api = mesh[0].info["api"]
    for option in ("--namespace=other", "-nother", "-n other"):
        assert _complete(["get", "route", *option.split(), ""], api) == [], option
    for option in ("--namespace=default", "-ndefault"):
        assert _complete(["get", "route", option, ""], api) == ["ratings-split"], option


ODD_NAMES = ["$(touch pwned)", "`touch pwned2`", "a b", "*", "ok-name", "x\x1b[31m"]


class _OddNames(BaseHTTPRequestHandler):
    """Not a control plane: answers every GET with proxies and objects named ODD_NAMES."""

    def do_GET(self) -> None:
        body = json.dumps({"kind": "RouteList",
                           "proxies": [{"name": n, "service": n} for n in ODD_NAMES],
                           "items": [{"metadata": {"name": n}} for n in ODD_NAMES]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


def test_only_names_are_offered_and_nothing_is_run(tmp_path: Path) -> None:
    """Whatever answers at the address, Tab offers only what can be a name: bash's compgen -W
    ran a `$(...)` it was given, and a `*` became the files of the directory."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OddNames)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    odd = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert bash_tab("meshctl stat ", odd, tmp_path) == ["stat", "ok-name"]
        assert bash_tab("meshctl get route ", odd, tmp_path) == ["get", "route", "ok-name"]
        assert _complete(["proxy-config", "routes", ""], odd) == ["ok-name"]
    finally:
        server.shutdown()
        server.server_close()
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def _trickle(listener: socket.socket) -> None:
    """Answer every connection with an endless response head, a byte at a time."""
    def one(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nX-Pad: ")
            while not stop.wait(0.2):
                conn.sendall(b"a")

    stop = threading.Event()
    with contextlib.suppress(OSError):
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=one, args=(conn,), daemon=True).start()
    stop.set()


def test_a_control_plane_answering_a_byte_at_a_time_does_not_hold_tab() -> None:
    """The lookup has one deadline in all; the client's timeout bounds each read only, and a
    byte every 0.2 s held Tab for as long as the server kept sending."""
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=_trickle, args=(listener,), daemon=True).start()
    try:
        slow = f"http://127.0.0.1:{listener.getsockname()[1]}"
        # the default 1 s, within _complete's 60 s deadline
        assert _complete(["stat", ""], slow, lookup_timeout="1") == []
        assert _complete(["get", "route", ""], slow, lookup_timeout="1") == []
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()


def _complete(words: list[str], control_plane: str, lookup_timeout: str = "20") -> list[str]:
    """`meshctl __complete WORDS` itself (a word with `=` in it: bash would split it)."""
    out = subprocess.run([sys.executable, "-m", "meshctl", "__complete", *words],
                         capture_output=True, text=True, timeout=60,
                         env=_env(control_plane, lookup_timeout))
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
               "COMP_LINE=\"meshctl demo \"; COMP_POINT=13; "
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
