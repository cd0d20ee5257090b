"""Video input: frame sampling, preprocessing, decoding (PyAV), synthetic clips, and :func:`load_clip`.

* :mod:`~tldr_jax.video.sampling`: which frames to read (:func:`sample_indices`);
* :mod:`~tldr_jax.video.preprocess`: resize, crop, normalise (:func:`preprocess`) and the one
  description of a model's preprocessing (:class:`Preprocessing`, :func:`preprocessing_for`);
* :mod:`~tldr_jax.video.decode`: reading and writing video files;
* :mod:`~tldr_jax.video.synthetic`: the procedural test clip and the embedded default clip;
* :mod:`~tldr_jax.video.windows`: the time windows (moments) of a long video (:func:`video_windows`);
* :mod:`~tldr_jax.video.clip`: :func:`load_clip`, the one path from a file (or a window of it) to a
  model input.
"""

from tldr_jax.video.clip import CLIP_EXTENSIONS, NPY_EXTENSIONS, load_clip, load_video
from tldr_jax.video.decode import (
    VIDEO_EXTENSIONS,
    VideoReadError,
    VideoReadWarning,
    check_fps,
    count_frames,
    decode_frames,
    frame_rate,
    frames_within,
    read_video,
    write_video,
)
from tldr_jax.video.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZATION,
    RESIZE,
    Preprocessing,
    center_crop,
    check_mean_std,
    denormalize,
    preprocess,
    preprocessing_for,
    resized_shape,
)
from tldr_jax.video.sampling import SAMPLING_MODES, sample_indices
from tldr_jax.video.synthetic import (
    DEFAULT_CLIP_PATH,
    build_default_clip,
    decode_frames_delta,
    default_clip,
    default_clip_frames,
    encode_frames_delta,
    make_test_video,
    synthetic_frames,
)
from tldr_jax.video.windows import Segment, Window, check_window, file_windows, video_windows

__all__ = [
    "CLIP_EXTENSIONS",
    "DEFAULT_CLIP_PATH",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZATION",
    "NPY_EXTENSIONS",
    "RESIZE",
    "SAMPLING_MODES",
    "VIDEO_EXTENSIONS",
    "Preprocessing",
    "Segment",
    "VideoReadError",
    "VideoReadWarning",
    "Window",
    "build_default_clip",
    "center_crop",
    "check_fps",
    "check_mean_std",
    "check_window",
    "count_frames",
    "decode_frames",
    "decode_frames_delta",
    "default_clip",
    "default_clip_frames",
    "denormalize",
    "encode_frames_delta",
    "file_windows",
    "frame_rate",
    "frames_within",
    "load_clip",
    "load_video",
    "make_test_video",
    "preprocess",
    "preprocessing_for",
    "read_video",
    "resized_shape",
    "sample_indices",
    "synthetic_frames",
    "video_windows",
    "write_video",
]
