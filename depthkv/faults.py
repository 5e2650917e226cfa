"""Named crash points for the reliability tests (fault injection); inert unless asked for.

``DEPTHKV_FAILPOINT=<name>[:<n>[:<action>]]`` makes the process act at the ``n``-th time (default 1)
it passes :func:`failpoint` ``(name)``: ``kill`` (default) sends itself SIGKILL — a crash with no
cleanup, no ``finally``, no flushed buffers, like a power cut or the OOM killer — and ``pause``
sleeps for an hour (to hold a lock while another process tries it). The variable is read at each
call, never at import. Points: ``atomic-write`` (a file's temporary copy is complete and fsynced,
not yet moved over the destination) and ``calibrate-ablation`` (one layer of one example
measured).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

__all__ = ["ENV", "failpoint"]

ENV = "DEPTHKV_FAILPOINT"
_hits: Counter[str] = Counter()


def failpoint(name: str) -> None:
    """Crash (or pause) here if ``DEPTHKV_FAILPOINT`` names this point and its count is reached."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, rest = spec.partition(":")
    if target != name:
        return
    count, _, action = rest.partition(":")
    _hits[name] += 1
    if _hits[name] != int(count or 1):
        return
    if (action or "kill") == "pause":
        time.sleep(3600)
    else:
        os.kill(os.getpid(), signal.SIGKILL)
