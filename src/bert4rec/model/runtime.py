"""TensorFlow's process-wide set-up: a quiet import; the strategy, seeds, determinism, precision.

TensorFlow's C++ layer prints start-up lines straight to file descriptor 2 before Python's
logging exists; users read the `E0000 ... failed call to cuInit` among them as a failure. They
are kept, in `startup_log()`, for whoever needs them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path


def startup_log() -> Path:
    folder = Path(tempfile.gettempdir()) / f"bert4rec-{os.getuid()}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "tensorflow-startup.log"


@contextlib.contextmanager
def _stderr_to(path: Path):
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(path, "wb") as log:
            os.dup2(log.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def quiet_import() -> None:
    """Import TensorFlow and Keras and start the device layer with fd 2 sent to startup_log()."""
    if "tensorflow" in sys.modules and "keras" in sys.modules:
        return
    try:
        target = startup_log()
    except OSError:
        target = Path(os.devnull)
    with _stderr_to(target):
        import keras  # noqa: F401
        import tensorflow as tf

        if "TF_CONFIG" not in os.environ:  # a multi-worker strategy must come before the first op
            tf.constant(0)  # the first op initialises the platforms (the cuInit probe)
    import absl.logging

    absl.logging.set_verbosity(absl.logging.WARNING)


def start(distribution: str, seed: int, deterministic_ops: bool, mixed_precision: str):
    """The distribution strategy (first: a multi-worker one must exist before any op runs), then
    seeds, op determinism and the precision policy; before any model is built."""
    import keras
    import tensorflow as tf

    from bert4rec.model.distribute import make_strategy

    try:
        target = startup_log()
    except OSError:
        target = Path(os.devnull)
    with _stderr_to(target):
        strategy = make_strategy(distribution)
    keras.utils.set_random_seed(seed)
    if deterministic_ops:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy("float32" if mixed_precision == "off" else mixed_precision)
    return strategy
