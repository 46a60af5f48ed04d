"""Making sure the reference servers and wrk are installed (apt-get when running as root)."""

from __future__ import annotations

import os
import shutil
import subprocess

REQUIRED = ("nginx", "haproxy", "wrk")
APT_PACKAGES = ("nginx-light", "haproxy", "wrk")


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
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ToolsMissing(
            f"missing {', '.join(missing)}; install them with: "
            f"sudo apt-get install -y {' '.join(APT_PACKAGES)}"
        )
    subprocess.run(["apt-get", "install", "-y", *APT_PACKAGES], check=True)
    still = missing_tools(names)
    if still:
        raise ToolsMissing(f"still missing after apt-get install: {', '.join(still)}")
