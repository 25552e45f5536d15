"""The command line's start-up: imports with the cyclic garbage collector paused.

`lguest exec` is timed whole, start-up included (docs/EXEC.md, against
Qiling).  Its imports allocate enough to set off ~60 collections (~5 ms) of
objects that all live to the end of the process, so when the package is
imported for the command line (``python -m lguest``, the ``lguest`` script:
the test lguest/__init__.py makes for OPENBLAS_NUM_THREADS too) the
collector is off until the command has its modules; :func:`resume` then
freezes what start-up made (gc.freeze: out of every later sweep) and turns
it back on, before any guest runs.  A program importing lguest as a library
is left alone.

At the end, `lguest exec` leaves at once (:func:`leave`): the interpreter's
own teardown -- every module's dict, every object freed one by one, the
atexit hooks that close Unicorn engines the process is about to lose anyway
-- is ~4 ms of a run that has nothing left to write.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import NoReturn

#: Imported for the command line (``python -m lguest``, the ``lguest`` script).
command_line = sys.argv[:1] == ["-m"] or os.path.basename(sys.argv[0] or "") == "lguest"
paused = command_line and gc.isenabled()
if paused:
    gc.disable()


def resume() -> None:
    """Turn the collector back on if start-up paused it (once; idempotent)."""
    global paused
    if paused:
        paused = False
        gc.freeze()
        gc.enable()


def leave(status: int) -> NoReturn:
    """End the command-line process with ``status`` now, without the
    interpreter's teardown: stdout and stderr flushed first; every file the
    command wrote (--export, --record, --trace-out) is closed by then, and
    its engines and guest memory go with the process."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: the process started with that descriptor closed
                stream.flush()
        except (OSError, ValueError):  # a reader gone, a stream closed: nothing more to say on it
            pass
    os._exit(status)
