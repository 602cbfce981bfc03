"""A lower scheduling priority for the password-hashing threads."""

import contextlib
import os
import threading

# Hashing threads yield the CPU to the event loop's thread, so that cheap requests keep a
# short latency while logins use every core. (A lower priority needs no privilege.)
HASHING_NICENESS = 10


def lower_thread_priority() -> None:
    """Run in a new thread: lower its priority. Where that is not permitted (or not on
    Linux), the thread runs at normal priority."""
    if hasattr(os, "setpriority"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHING_NICENESS)
