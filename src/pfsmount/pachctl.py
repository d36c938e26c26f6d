"""``python -m pfsmount.pachctl``: the ``pachctl`` that pfsmount puts on the user code's PATH.

It serves ``pachctl next datum`` and ``pachctl version``, accepts and ignores the start-up
commands pipelines call to reach a cluster (``connect``, ``config``, ``auth whoami``/``login``),
and refuses the rest; see ``pfsmount.shims.pachctl_main``.
"""

from __future__ import annotations

import sys

from pfsmount.shims import pachctl_main


def main() -> None:
    """Run the shim with this process's arguments and exit with its status."""
    sys.exit(pachctl_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
