"""``python -m checkpoints_convert SRC OUT [options]``."""

from checkpoints_convert.cli import main

raise SystemExit(main())
