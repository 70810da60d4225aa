"""``python -m reconciler`` is ``patchctl``."""

from reconciler.cli import main

raise SystemExit(main())
