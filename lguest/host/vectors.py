"""The module parameter ``syscall_vector`` and the host's used-vector table.

In the kernel, ``syscall_vector`` is a read-only module parameter (default
0x80, Linux's own).  A guest that wants another system-call vector (Plan 9
uses 0x40) can only have it if the host kernel does not already use that
vector, so loading the module reserves it in the host's ``used_vectors``
bitmap, and unloading frees it.  :class:`UsedVectors` is that bitmap plus the
per-CPU IRQ vector map; :class:`Host` is the loaded module.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..constants import HOST_PERCPU_VECTORS, HOST_VECTOR_OWNERS, SYSCALL_VECTOR, is_direct_trap
from ..cores import load_core
from ..validate import check_vector, to_u32

if TYPE_CHECKING:
    import logging

    from ..memory import GuestMemory


def _log() -> logging.Logger:
    """The package's logger, with the library's NullHandler (the application
    decides where records go).  Imported here, on the one path that logs
    (a busy vector), rather than at start-up: logging costs ~3 ms to import."""
    import logging
    log = logging.getLogger("lguest")
    if not any(isinstance(h, logging.NullHandler) for h in log.handlers):
        log.addHandler(logging.NullHandler())
    return log


class VectorBusy(OSError):
    """A vector could not be reserved: it is in use (``errno.EBUSY``)."""

    def __init__(self, vector: int, message: str, owner: str | None = None) -> None:
        super().__init__(errno.EBUSY, message)
        self.vector = vector
        self.owner = owner

    def __str__(self) -> str:
        return str(self.strerror)




class UsedVectors:
    """The host's ``used_vectors`` bitmap and per-CPU vector map.

    ``UsedVectors(used, percpu)`` is a private table holding exactly those
    vectors; :meth:`default` is the process-wide one, seeded with what the
    host kernel owns at boot.  All methods are thread-safe.
    """

    _default: UsedVectors | None = None
    _default_lock = threading.Lock()

    def __init__(self, used: Iterable[int] = (), percpu: Iterable[int] = (),
                 owners: dict[int, str] | None = None) -> None:
        self._lock = threading.RLock()
        self._used: dict[int, str] = {}
        for v in used:
            self._used[check_vector(v)] = (owners or {}).get(v, "host")
        self._percpu = frozenset(check_vector(v) for v in percpu)

    @classmethod
    def default(cls) -> UsedVectors:
        """The process-wide table every :class:`Host` shares by default."""
        with cls._default_lock:
            if cls._default is None:
                cls._default = cls(HOST_VECTOR_OWNERS, HOST_PERCPU_VECTORS, owners=HOST_VECTOR_OWNERS)
            return cls._default

    def __contains__(self, v: object) -> bool:
        return v in self._used

    def percpu(self, v: int) -> bool:
        """True if a per-CPU host IRQ has ``v`` (``vector_used_by_percpu_irq``)."""
        return check_vector(v) in self._percpu

    def owner(self, v: int) -> str | None:
        """Who holds ``v``: a description, or None if it is free."""
        check_vector(v)
        with self._lock:
            if v in self._used:
                return self._used[v]
        if v not in self._percpu:
            return None
        return f"per-CPU legacy IRQ {v - 0x30}" if 0x30 <= v < 0x40 else "per-CPU IRQ"

    def reserve(self, v: int, owner: str = "lguest") -> None:
        """Mark ``v`` used; :class:`VectorBusy` if it already is."""
        check_vector(v)
        with self._lock:
            holder = self.owner(v)
            if holder is not None:
                raise VectorBusy(v, f"vector {v} ({v:#x}) is in use by {holder}", holder)
            self._used[v] = owner

    def try_reserve(self, v: int, owner: str = "lguest") -> bool:
        try:
            self.reserve(v, owner)
        except VectorBusy:
            return False
        return True

    def release(self, v: int) -> None:
        """Clear ``v`` (``clear_bit``); releasing a free vector is harmless."""
        check_vector(v)
        with self._lock:
            self._used.pop(v, None)

    def table(self) -> list[tuple[int, str]]:
        """Every taken vector with its owner, in vector order."""
        with self._lock:
            rows = dict(self._used)
        for v in self._percpu:
            rows.setdefault(v, self.owner(v) or "per-CPU IRQ")
        return sorted(rows.items())

    def __repr__(self) -> str:
        return f"<UsedVectors {len(self._used)} used, {len(self._percpu)} per-CPU>"


class Host:
    """The lguest module as loaded into a host: its parameter and reservation.

    ``syscall_vector`` is fixed once :meth:`init_interrupts` has run (the
    kernel's parameter is read-only, 0444).
    """

    def __init__(self, syscall_vector: int = SYSCALL_VECTOR, used_vectors: UsedVectors | None = None) -> None:
        self._syscall_vector = check_vector(syscall_vector)
        self.used_vectors = used_vectors if used_vectors is not None else UsedVectors.default()
        self._reserved = False
        self._initialised = False
        self._has_guests = False

    @property
    def syscall_vector(self) -> int:
        return self._syscall_vector

    @syscall_vector.setter
    def syscall_vector(self, v: int) -> None:
        if self._initialised or self._has_guests:
            raise AttributeError("syscall_vector is read-only once interrupts are initialised or guests exist")
        self._syscall_vector = check_vector(v)

    # --- module load / unload -------------------------------------------------
    def init_interrupts(self) -> None:
        """Reserve a non-default syscall vector, or raise :class:`VectorBusy`."""
        v = self._syscall_vector
        if v == SYSCALL_VECTOR:
            self._initialised = True
            return
        used = self.used_vectors
        with used._lock:
            holder = used.owner(v)
            if holder is None:
                used._used[v] = "lguest syscall_vector"
                self._reserved = self._initialised = True
                return
        _log().error("lg: couldn't reserve syscall %u", v)
        raise VectorBusy(v, f"couldn't reserve syscall {v}", holder)

    def free_interrupts(self) -> None:
        """Release the vector :meth:`init_interrupts` reserved; idempotent."""
        if self._reserved:
            self.used_vectors.release(self._syscall_vector)
            self._reserved = False

    def __enter__(self) -> Host:
        self.init_interrupts()
        return self

    def __exit__(self, *exc: object) -> None:
        self.free_interrupts()

    # --- the two predicates direct traps hinge on ------------------------------
    def could_be_syscall(self, num: int) -> bool:
        """Linux's 0x80 or the vector this module was loaded with."""
        num = to_u32(num, "vector")
        return num == SYSCALL_VECTOR or num == self._syscall_vector

    def direct_trap(self, num: int) -> bool:
        """Could trap ``num`` go straight to the guest without the host?"""
        return is_direct_trap(to_u32(num, "vector"), self._syscall_vector)

    # --- guests ---------------------------------------------------------------
    def new_guest(self, memory: GuestMemory, *, page_offset: int = 0xC0000000, clock: Any = None,
                  core: str | ModuleType | None = None) -> Any:
        """A new :class:`Guest` on ``memory``, built by ``core`` (default: the active one)."""
        mod = load_core(core) if core is None or isinstance(core, str) else core
        self._has_guests = True
        return mod.Guest(self, memory, page_offset=page_offset, clock=clock)

    def __repr__(self) -> str:
        return f"<Host syscall_vector={self._syscall_vector:#x}{' reserved' if self._reserved else ''}>"
