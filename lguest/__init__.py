"""lguest: the lguest hypervisor's interrupt and trap machinery for emulators.

Two interchangeable cores implement the seed functions of
``drivers/lguest/interrupts_and_traps.c``: the compiled one
(``lguest._core``, Cython over raw pointers into guest memory) and the
pure-Python reference (``lguest.fallback``).  The compiled core is used when
it was built, unless ``LGUEST_PURE_PYTHON=1`` is set before import;
``lguest.CORE`` says which one is active.
"""

from __future__ import annotations

import logging
import os
import warnings
from types import ModuleType

from . import fallback
from .clock import SystemClock, VirtualClock, system_clock
from .constants import *  # noqa: F403 - the ABI numbers are part of the API
from .gates import Gate, decode_gate, gate
from .memory import GuestMemory
from .vectors import Host, UsedVectors, VectorBusy

# A library logs, the application decides where it goes.
logging.getLogger("lguest").addHandler(logging.NullHandler())

try:
    from . import _core as _compiled
except ImportError as exc:  # pragma: no cover - only when the build failed
    _compiled = None
    _compiled_error: ImportError | None = exc
else:
    _compiled_error = None

#: How to build the compiled extensions, for messages that find them missing.
BUILD_HINT = "build it with: pip install -e . (in the source tree; needs Cython and a C compiler)"


def _core_problem() -> str:
    """Why the compiled core is missing, in words a user can act on: Python's
    own message for an extension missing from a package being imported blames
    a circular import."""
    detail = str(_compiled_error)
    if isinstance(_compiled_error, ModuleNotFoundError) or "partially initialized" in detail \
            or "None in sys.modules" in detail:
        return "the compiled core (lguest._core) is not built"
    return f"the compiled core (lguest._core) is built but does not load ({detail})"


if os.environ.get("LGUEST_PURE_PYTHON", "") not in ("", "0"):
    core: ModuleType = fallback
elif _compiled is not None:
    core = _compiled
else:  # pragma: no cover
    warnings.warn(
        f"lguest: {_core_problem()}; using the pure-Python core (same behaviour, slower). "
        f"To fix: {BUILD_HINT}, or set LGUEST_PURE_PYTHON=1 to choose the Python core and silence this",
        RuntimeWarning,
        stacklevel=2,
    )
    core = fallback

CORE: str = core.NAME


def load_core(name: str | None = None) -> ModuleType:
    """The core module called ``name`` ("cython" or "python"); None: the active one."""
    if name is None:
        return core
    if name == "python":
        return fallback
    if name == "cython":
        if _compiled is None:
            raise ImportError(f"{_core_problem()}; {BUILD_HINT}")
        return _compiled
    raise ValueError(f"unknown core {name!r} (want 'cython' or 'python')")


#: The compiled wall clock (a native timer thread), when the extension is built.
NativeClock = getattr(_compiled, "NativeClock", None)

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

__all__ = [  # noqa: RUF022 - grouped by topic, constants come from lguest.constants
    "CORE", "load_core", "core", "fallback",
    "GuestMemory", "Host", "UsedVectors", "VectorBusy",
    "SystemClock", "VirtualClock", "NativeClock", "system_clock",
    "Guest", "Cpu", "Regs",
    "gate", "decode_gate", "Gate",
    "has_err", "idt_address", "idt_type", "idt_present", "default_idt_entry", "setup_default_idt_entries",
] + [name for name in dir() if name.isupper() and not name.startswith("_")]
