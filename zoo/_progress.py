"""Progress bars (tqdm) on stderr, for the command line and long library calls that ask for them.

When stderr is not a terminal (CI logs, tests, a pipe) the bar still works, but redraws at
most every 15 s instead of 10 times a second, so a log gets a few lines, not thousands.
"""

from __future__ import annotations

import sys


def bar(total: int, desc: str, enabled: bool = True, unit: str = "img"):
    """A tqdm bar counting `total` `unit`s; `enabled=False` gives one that shows nothing."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled, dynamic_ncols=tty,
                mininterval=0.1 if tty else 15.0)
