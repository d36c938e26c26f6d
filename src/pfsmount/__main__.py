"""`python -m pfsmount` is the `pfsmount` command."""

from __future__ import annotations

import sys

from pfsmount.cli import main

sys.exit(main())
