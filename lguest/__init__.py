"""lguest: the lguest hypervisor's interrupt and trap machinery for emulators.

Two interchangeable cores implement the seed functions of
``drivers/lguest/interrupts_and_traps.c``: the compiled one
(``lguest._core``, Cython over raw pointers into guest memory) and the
pure-Python reference (``lguest.fallback``).  The compiled core is used when
it was built, unless ``LGUEST_PURE_PYTHON=1`` is set before import;
``lguest.CORE`` says which one is active.
"""

from __future__ import annotations

import os as _os
import sys as _sys

# The command line (`lguest ...`, `python -m lguest ...`, where this runs
# before numpy is imported): numpy's OpenBLAS, which lguest never calls,
# starts a thread per core at import that busy-waits for a while; on a
# small machine it takes a core from the guest and doubles numpy's import
# time (~60 ms).  A program importing lguest as a library keeps its own
# setting.
if "numpy" not in _sys.modules and (_sys.argv[:1] == ["-m"] or _os.path.basename(_sys.argv[0] or "") == "lguest"):
    _os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# _startup first: the command line imports with the cyclic garbage collector paused (see there)
from . import _startup, fallback  # noqa: E402, F401 - after the setting above
from .clock import SystemClock, VirtualClock, system_clock
from .constants import *  # noqa: F403 - the ABI numbers are part of the API
from .cores import active as core
from .cores import compiled as _compiled_core
from .cores import core_of, load_core
from .gates import Gate, decode_gate, gate
from .host.vectors import Host, UsedVectors, VectorBusy
from .memory import GuestMemory

# A library logs, the application decides where it goes: the "lguest"
# logger gets its NullHandler where it is first used (host.vectors._log),
# so that importing logging (~3 ms) is not part of every start-up.

CORE: str = core.NAME

#: The compiled wall clock (a native timer thread), when the extension is built.
NativeClock = getattr(_compiled_core(), "NativeClock", None)

Guest = core.Guest
Cpu = core.Cpu
Regs = core.Regs
has_err = core.has_err
idt_address = core.idt_address
idt_type = core.idt_type
idt_present = core.idt_present
default_idt_entry = core.default_idt_entry
setup_default_idt_entries = core.setup_default_idt_entries

__version__ = "0.1.0"


def get_include() -> str:
    """The directory holding ``lguest/lguest.h`` (the public C API, see
    docs/API.md "The C API") and ``lguest/abi.h``: pass it to the C
    compiler's include path.  Cython code cimports ``lguest.lguest``
    (``lguest/lguest.pxd``, installed with the package)."""
    import os

    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "include")


__all__ = [  # noqa: RUF022 - grouped by topic, constants come from lguest.constants
    "CORE", "load_core", "core_of", "core", "fallback",
    "GuestMemory", "Host", "UsedVectors", "VectorBusy",
    "SystemClock", "VirtualClock", "NativeClock", "system_clock",
    "Guest", "Cpu", "Regs",
    "gate", "decode_gate", "Gate",
    "has_err", "idt_address", "idt_type", "idt_present", "default_idt_entry", "setup_default_idt_entries",
    "get_include",
] + [name for name in dir() if name.isupper() and not name.startswith("_")]

