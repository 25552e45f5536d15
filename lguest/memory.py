"""Guest-physical memory: one anonymous mmap shared by host and emulator.

Byte 0 of the mapping is guest-physical address 0.  ``address`` is the host
virtual address of that byte, so an emulator can map the very same pages
(Unicorn's ``mem_map_ptr``) and the compiled core can work on them through a
raw pointer.  The accessors here are the *host's* own: they raise on misuse.
The guest-facing path, with lguest's bounds rule and kill-on-failure, lives in
the cores.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .constants import PAGE_SIZE
from .validate import to_index, to_u32

MAX_GUEST_MEMORY = 1 << 32  # a non-PAE 32-bit guest addresses 4 GiB at most

_libc = ctypes.CDLL(None, use_errno=True)
_mprotect = _libc.mprotect
_mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_mprotect.restype = ctypes.c_int


try:  # Python < 3.12 has no __buffer__: the extension lends a C-level one.
    from ._memory import BufferExporter as _Base
except ImportError:  # pragma: no cover - only without the extension
    _Base = object


class GuestMemory(_Base):  # type: ignore[misc,valid-type]
    """Zero-filled guest RAM backed by an mmap.

    Lifetime rules (see docs/SECURITY.md, "Thread safety"): ``close()``
    raises ``RuntimeError`` while any :meth:`hold` is active (an emulator
    runs on the pages), ``BufferError`` while a memoryview is alive, and
    otherwise detaches every guest before unmapping.  ``__init__`` runs once.
    """

    # Class-level defaults: an instance whose __init__ never ran (or failed)
    # reads as closed memory instead of raising AttributeError.
    _view: memoryview | None = None
    _size = 0
    _holds = 0
    _lock = threading.Lock()  # replaced per instance in _attach

    def __init__(self, size: int, *, guard_pages: bool = False) -> None:
        """``size`` bytes of zeroed RAM.  With ``guard_pages`` an inaccessible
        page sits on each side, so any host access outside guest memory
        faults at once instead of corrupting a neighbour (for tests and fuzzing)."""
        # A second __init__ would remap under every guest and emulator that
        # holds the old address: refuse it, whatever state we are in.
        if "_mmap" in self.__dict__:
            raise RuntimeError("GuestMemory is already initialised; create a new one")
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"guest memory size must be a positive multiple of {PAGE_SIZE}, got {size!r}")
        if size > MAX_GUEST_MEMORY:
            raise ValueError(f"guest memory size {size:#x} exceeds 4 GiB")
        guard = PAGE_SIZE if guard_pages else 0
        mm = mmap.mmap(-1, size + 2 * guard, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if guard:
            base = ctypes.addressof(ctypes.c_char.from_buffer(mm))
            for page in (base, base + guard + size):
                if _mprotect(ctypes.c_void_p(page), ctypes.c_size_t(PAGE_SIZE), 0) != 0:
                    mm.close()
                    raise OSError(ctypes.get_errno(), "mprotect of a guard page failed")
        self._attach(mm, owned=True, offset=guard, size=size)

    @classmethod
    def from_mmap(cls, mm: mmap.mmap) -> GuestMemory:
        """Wrap an existing writable mmap (its length is the memory size)."""
        if not isinstance(mm, mmap.mmap):
            raise TypeError("from_mmap needs an mmap.mmap")
        # The exported buffer's length, not len(mm): a subclass may lie in
        # __len__, and the cores trust this size for every raw access.
        try:
            with memoryview(mm) as probe:
                size = probe.nbytes
        except ValueError as exc:  # a closed mmap
            raise ValueError(f"unusable mmap: {exc}") from None
        if size == 0 or size > MAX_GUEST_MEMORY or size % PAGE_SIZE:
            raise ValueError(f"unusable mmap size {size} (want a positive multiple of {PAGE_SIZE}, at most 4 GiB)")
        self = cls.__new__(cls)
        self._attach(mm, owned=False, offset=0, size=size)
        return self

    def _attach(self, mm: mmap.mmap, owned: bool, offset: int, size: int) -> None:
        self._lock = threading.Lock()  # guards _holds against close()
        self._holds = 0
        self._mmap = mm
        self._owned = owned
        # A long-lived export pins the mapping: nobody can close the mmap
        # underneath a core holding a raw pointer into it (mmap.close()
        # raises BufferError while an export exists).
        whole = memoryview(mm)
        if whole.readonly:
            whole.release()
            raise ValueError("guest memory must be writable")
        self._whole = whole
        self._view = whole[offset:offset + size]
        probe = ctypes.c_char.from_buffer(mm)
        self._address = ctypes.addressof(probe) + offset
        del probe
        self._guard = offset
        self._size = size
        if _Base is not object:
            self._set_buffer(self._address, self._size)
        self._users: weakref.WeakSet[Any] = weakref.WeakSet()

    # --- properties -----------------------------------------------------------
    @property
    def size(self) -> int:
        return self._size

    @property
    def address(self) -> int:
        """Host address of guest-physical byte 0."""
        self._check_open()
        return self._address

    @property
    def closed(self) -> bool:
        return self._view is None

    @property
    def mmap(self) -> mmap.mmap:
        self._check_open()
        return self._mmap

    @property
    def view(self) -> memoryview:
        """A writable memoryview of the whole memory."""
        return self._live_view()

    def _check_open(self) -> None:
        self._live_view()

    def _live_view(self) -> memoryview:
        # Read once: close() on another thread may clear it between two reads.
        view = self._view
        if view is None:
            raise ValueError("guest memory is closed")
        return view

    @staticmethod
    def _closed_meanwhile(view: memoryview, exc: Exception) -> Exception:
        """The error for an access that lost a race with close(): if the view
        was released under it (memoryview then raises ValueError or, from
        struct, TypeError), report it the way every accessor reports closed
        memory; any other error is the caller's own."""
        try:
            view.nbytes  # noqa: B018 - raises ValueError once released
        except ValueError:
            return ValueError("guest memory is closed")
        return exc

    def _check_range(self, gpa: Any, n: Any) -> tuple[int, int]:
        # Python ints first: numpy scalars would wrap in ``gpa + n``.
        gpa, n = to_index(gpa, "gpa"), to_index(n, "n")
        if gpa < 0 or n < 0 or gpa + n > self._size:
            raise IndexError(f"guest-physical range {gpa:#x}+{n} outside memory of {self._size:#x} bytes")
        return gpa, n

    # --- host-side accessors --------------------------------------------------
    # Each takes the view once and converts a lost race with close() into
    # the usual ValueError("guest memory is closed"); the bytes stay mapped
    # while a slice of the view exists (mmap.close() refuses), so the race
    # can only ever cost an exception, never a stale access.
    def read(self, gpa: int, n: int) -> bytes:
        view = self._live_view()
        gpa, n = self._check_range(gpa, n)
        try:
            return bytes(view[gpa:gpa + n])
        except (ValueError, TypeError) as exc:
            raise self._closed_meanwhile(view, exc) from None

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        view = self._live_view()
        data = memoryview(data).cast("B")
        gpa, n = self._check_range(gpa, len(data))
        try:
            view[gpa:gpa + n] = data
        except (ValueError, TypeError) as exc:
            raise self._closed_meanwhile(view, exc) from None

    def read_u32(self, gpa: int) -> int:
        view = self._live_view()
        gpa, _ = self._check_range(gpa, 4)
        try:
            return struct.unpack_from("<I", view, gpa)[0]
        except (ValueError, TypeError) as exc:
            raise self._closed_meanwhile(view, exc) from None

    def write_u32(self, gpa: int, value: int) -> None:
        view = self._live_view()
        gpa, _ = self._check_range(gpa, 4)
        value = to_u32(value, "value")
        try:
            struct.pack_into("<I", view, gpa, value)
        except (ValueError, TypeError) as exc:
            raise self._closed_meanwhile(view, exc) from None

    def __len__(self) -> int:
        return self._size

    def __buffer__(self, flags: int) -> memoryview:  # Python >= 3.12
        return self._live_view()[:]

    # --- users and lifetime ---------------------------------------------------
    def _register(self, user: Any) -> None:
        """A core object holding a raw pointer; detached on close()."""
        self._check_open()
        self._users.add(user)

    @contextmanager
    def hold(self) -> Iterator[GuestMemory]:
        """Keep the memory mapped for the duration of a ``with`` block.

        For code that uses the pages without the GIL or behind Python's back
        (an emulator running on ``address``, a native hook): while any hold
        is active, ``close()`` raises ``RuntimeError`` instead of unmapping.
        Holds nest and may be taken from any thread; a closed memory cannot
        be held (``ValueError``).
        """
        with self._lock:
            self._check_open()
            self._holds += 1
        try:
            yield self
        finally:
            with self._lock:
                self._holds -= 1

    @property
    def held(self) -> int:
        """How many holds are active."""
        return self._holds

    def close(self) -> None:
        """Detach every guest using this memory, then unmap it. Idempotent.

        ``RuntimeError`` while held; ``BufferError`` while a memoryview is alive.
        """
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._view is None:
            return
        if self._holds:
            raise RuntimeError(f"GuestMemory in use ({self._holds} active hold(s)): "
                               "stop the guest that runs on it before closing")
        if getattr(self, "_exports", 0):
            raise BufferError("guest memory is still exported (a memoryview is alive); release it first")
        # Detach every guest *before* unmapping: between munmap and a later
        # detach another thread could enter a core call that still holds
        # the old pointer (the API fuzzer's threaded phase hit exactly that,
        # SIGSEGV).  If the unmap is then refused, the guests are re-attached.
        users = list(self._users)
        for user in users:
            user._detach_memory()
        if _Base is not object:
            self._set_buffer(None, 0)
        self._view.release()
        self._whole.release()
        if self._owned:
            try:
                self._mmap.close()
            except BufferError:
                self._whole = memoryview(self._mmap)
                self._view = self._whole[self._guard:self._guard + self._size]
                if _Base is not object:
                    self._set_buffer(self._address, self._size)
                for user in users:
                    reattach = getattr(user, "_attach_memory", None)
                    if reattach is not None:
                        reattach()
                raise BufferError("guest memory is still exported (a memoryview is alive); release it first") from None
        self._view = None

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("cannot pickle GuestMemory objects: they own a host mapping")

    def __repr__(self) -> str:
        state = "closed" if self._view is None else f"at {self._address:#x}"
        return f"<GuestMemory {self._size:#x} bytes {state}>"
