"""`python -m meshctl` is the same as the `meshctl` command."""

import sys

from meshctl.cli import main

sys.exit(main())
