"""The one exception type whose message is shown to the user as is, and what counts as a full disk."""

import errno
import re

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded")


class UserError(Exception):
    """A problem with the user's input, parameters or environment; printed without a traceback."""


class ClusterStopped(UserError):
    """Another worker of a multi-worker run is gone: after the message the process exits at once,
    as tearing down TensorFlow's broken collectives only prints destructors' errors."""


def is_disk_full(error: BaseException) -> bool:
    """ENOSPC/EDQUOT, raised by Python or by a library that only keeps the message (TensorFlow)."""
    if isinstance(error, UserError):
        return False
    if isinstance(error, OSError) and error.errno in DISK_FULL:
        return True
    return any(text in str(error) for text in DISK_FULL_TEXT)


def disk_full_path(error: BaseException) -> str | None:
    """The file a full disk stopped, when the error says: OSError.filename, or the path
    TensorFlow puts in its message."""
    if getattr(error, "filename", None):
        return str(error.filename)
    found = re.search(r"(/[^\s;'\"]+)[;:,]?\s+(?:No space left on device|Disk quota exceeded)", str(error))
    return found.group(1) if found else None
