"""``python -m tldr_jax.cli``: the ``tldr-jax`` command."""

import sys

from tldr_jax.cli.main import main

sys.exit(main())
