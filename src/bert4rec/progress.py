"""Progress bars that show on a terminal and stay quiet in logs and tests."""

from __future__ import annotations

from tqdm.auto import tqdm


def progress(iterable=None, **kwargs):
    kwargs.setdefault("disable", None)  # None: only when attached to a terminal
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
