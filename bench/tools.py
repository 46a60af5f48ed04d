"""Making sure the reference servers, wrk and h2load are installed (apt-get when root)."""

from __future__ import annotations

import os
import shutil
import subprocess

REQUIRED = ("nginx", "haproxy", "wrk")
APT_PACKAGES = ("nginx-light", "haproxy", "wrk")
# h2load (HTTP/2 load) is needed only when an HTTP/2 path is selected.
H2_TOOLS = ("h2load",)
PACKAGE_OF = {
    "nginx": "nginx-light",
    "haproxy": "haproxy",
    "wrk": "wrk",
    "h2load": "nghttp2-client",
}


class ToolsMissing(RuntimeError):
    """A required binary is absent and cannot be installed."""


def binary(name: str) -> str:
    """Absolute path of a tool; nginx/haproxy live in /usr/sbin, often not on a user's PATH."""
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return shutil.which(name, path=path) or name


def missing_tools(names: tuple[str, ...] = REQUIRED) -> list[str]:
    """Tools not found on PATH, /usr/sbin or /sbin."""
    return [name for name in names if not os.path.isabs(binary(name))]


def ensure_tools(names: tuple[str, ...] = REQUIRED) -> None:
    """Install the Debian packages if a tool is missing and we are root; else raise."""
    missing = missing_tools(names)
    if not missing:
        return
    packages = list(APT_PACKAGES) + [
        PACKAGE_OF[n] for n in names if n in PACKAGE_OF and PACKAGE_OF[n] not in APT_PACKAGES
    ]
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ToolsMissing(
            f"missing {', '.join(missing)}; install them with: "
            f"sudo apt-get install -y {' '.join(packages)}"
        )
    subprocess.run(["apt-get", "install", "-y", *packages], check=True)
    still = missing_tools(names)
    if still:
        raise ToolsMissing(f"still missing after apt-get install: {', '.join(still)}")
