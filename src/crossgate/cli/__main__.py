"""``python -m crossgate.cli``: the same as the ``crossgate`` command (kept for ``accelerate launch -m``)."""

from crossgate.cli import main

raise SystemExit(main())
