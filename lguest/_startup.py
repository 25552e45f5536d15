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
"""

from __future__ import annotations

import gc
import os
import sys

paused = (sys.argv[:1] == ["-m"] or os.path.basename(sys.argv[0] or "") == "lguest") and gc.isenabled()
if paused:
    gc.disable()


def resume() -> None:
    """Turn the collector back on if start-up paused it (once; idempotent)."""
    global paused
    if paused:
        paused = False
        gc.freeze()
        gc.enable()
