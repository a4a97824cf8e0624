"""The fused block scan (group_scan.cc): a block's group maxima and each row's count of scores at
or above its threshold in one read of the scores, where TensorFlow's own ops read them twice and
write a byte per score in between (a fifth of the ranked pass at 668k items).

A TensorFlow custom op has to be compiled against the installed TensorFlow, so it is built on
first use with the machine's C++ compiler (about 15 s, once; cached per source, TensorFlow
version and CPU) and loaded; where it cannot be built the ranked pass counts with TensorFlow's ops,
with the same results, and says so once. BERT4REC_FUSED_SCAN=off turns it off."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
from pathlib import Path

import tensorflow as tf

from bert4rec.errors import UserError
from bert4rec.fileio import atomic_file

SOURCE = Path(__file__).with_name("group_scan.cc")
SWITCH = "BERT4REC_FUSED_SCAN"
log = logging.getLogger(__name__)


def _cpu_flags() -> str:
    """The CPU's instruction sets: a library built with -march=native must not reach another CPU
    through a shared cache."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bert4rec"


def _library(compiler: str) -> Path:
    """The built library: from the cache, or compiled into it (through a temporary, so concurrent
    builders and a killed build leave no half-written library)."""
    # -U__AVX512FP16__: on CPUs with AVX512-FP16 (Sapphire Rapids on) -march=native turns on the
    # half-precision code of TensorFlow's bundled Eigen, which GCC 12 does not compile; the kernel
    # has no half-precision arithmetic, so it loses nothing
    flags = ["-shared", "-fPIC", "-O3", "-march=native", "-U__AVX512FP16__", "-w",
             *tf.sysconfig.get_compile_flags(), *tf.sysconfig.get_link_flags()]
    key = hashlib.sha256("\n".join([SOURCE.read_text(), tf.__version__, compiler, *flags, _cpu_flags()])
                         .encode()).hexdigest()[:16]
    library = cache_dir() / f"group_scan-{key}.so"
    if library.exists():
        return library
    with atomic_file(library) as partial:  # a killed build's temporary goes with the next build
        log.info("building the fused scoring kernel (once, ~15 s) into %s", library.parent)
        subprocess.run([compiler, str(SOURCE), "-o", str(partial), *flags], check=True, capture_output=True,
                       text=True, timeout=600)
    return library


@functools.cache
def group_scan_op():
    """The loaded op's module, or None (said once) where it is switched off or cannot be built."""
    if os.environ.get(SWITCH, "on").lower() in ("off", "0", "false"):
        return None
    compiler = shutil.which(os.environ.get("CXX", "c++"))
    why = "no C++ compiler found (set CXX)"
    if compiler is not None:
        try:
            return tf.load_op_library(str(_library(compiler)))
        except subprocess.CalledProcessError as error:
            why = "the compiler failed: " + ((error.stderr or "").strip().splitlines() or ["no message"])[-1]
        except (OSError, UserError, subprocess.TimeoutExpired, tf.errors.OpError) as error:
            why = f"{type(error).__name__}: {error}"
    log.warning("ranked scoring uses TensorFlow's own ops (same results, slower on large catalogues): "
                "the fused kernel is not available: %s", why)
    return None


def group_scan(scores, threshold):
    """(maxima of each 64 consecutive scores of a row, per row the count of scores >= its
    threshold). scores: (batch, a multiple of 64) float32; threshold: (batch, 1)."""
    return group_scan_op().bert4rec_group_scan(scores, threshold)
