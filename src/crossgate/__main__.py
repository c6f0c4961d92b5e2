"""``python -m crossgate``: the same as the ``crossgate`` command."""

from crossgate.cli import main

raise SystemExit(main())
