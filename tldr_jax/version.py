"""The tldr_jax version: its one home (a leaf module, so any layer may import it).

``pyproject.toml`` reads it from here (``[tool.setuptools.dynamic]``); checkpoints record it in their
``config.json`` as ``tldr_jax_version``.
"""

#: The package version (PEP 440).
__version__ = "0.1.0"

__all__ = ["__version__"]
