"""``python -m tldr_jax.video``: regenerate the embedded default clip (``assets/default_clip.npz``)."""

from tldr_jax.video.synthetic import build_default_clip

print(build_default_clip())
