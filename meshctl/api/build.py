"""What this build of Ami is: its version and Python runtime, as every part reports them."""

from __future__ import annotations

import sys

from meshctl import __version__

VERSION = __version__
PYTHON = "{}.{}.{}".format(*sys.version_info[:3])
# Register.build, proxy-status's proxyBuild, `meshctl version`: for people, never parsed.
BUILD = f"{sys.implementation.name} {PYTHON}"
UNKNOWN = "unknown"  # the version of a proxy built before proxies reported one
