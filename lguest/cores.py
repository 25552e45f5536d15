"""Which core: the active one, one by name, and the one a cpu belongs to.

Two interchangeable cores implement the seed functions of
``drivers/lguest/interrupts_and_traps.c``: the compiled one
(``lguest._core``, Cython over raw pointers into guest memory) and the
pure-Python reference (``lguest.fallback``).  The compiled core is active
when it was built, unless ``LGUEST_PURE_PYTHON=1`` is set before import.

Everything above the core layer that needs "the core of this cpu" (its IDT
helpers, ``has_err``) asks :func:`core_of`: a guest built with one core is
served by that core whatever the active one is.
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType
from typing import Any

from . import fallback

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
    active: ModuleType = fallback
elif _compiled is not None:
    active = _compiled
else:  # pragma: no cover
    warnings.warn(
        f"lguest: {_core_problem()}; using the pure-Python core (same behaviour, slower). "
        f"To fix: {BUILD_HINT}, or set LGUEST_PURE_PYTHON=1 to choose the Python core and silence this",
        RuntimeWarning,
        stacklevel=2,
    )
    active = fallback


def load_core(name: str | None = None) -> ModuleType:
    """The core module called ``name`` ("cython" or "python"); None: the active one."""
    if name is None:
        return active
    if name == "python":
        return fallback
    if name == "cython":
        if _compiled is None:
            raise ImportError(f"{_core_problem()}; {BUILD_HINT}")
        return _compiled
    raise ValueError(f"unknown core {name!r} (want 'cython' or 'python')")


def compiled() -> ModuleType | None:
    """The compiled core module, or None when it was not built."""
    return _compiled


def core_of(obj: Any) -> ModuleType:
    """The core whose class ``obj`` (a Cpu, Guest or Regs) is an instance of."""
    if _compiled is not None and isinstance(obj, (_compiled.Cpu, _compiled.Guest, _compiled.Regs)):
        return _compiled
    if isinstance(obj, (fallback.Cpu, fallback.Guest, fallback.Regs)):
        return fallback
    raise TypeError(f"{type(obj).__name__} is not a class of either lguest core")
