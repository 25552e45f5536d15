"""The Launcher for a guest on Unicorn: its lifetime, loading, running.

:class:`UnicornLauncher` owns a :class:`lguest.Host` (reserving the syscall
vector), the guest's RAM (one copy, mapped into Unicorn with
``mem_map_ptr``), the Guest and its cpu 0, the engine, a
:class:`~.backend.UnicornBackend`, and a :class:`lguest.host.launcher.Launcher`
that drives them through :func:`lguest.host.run.run_guest`.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import unicorn as _unicorn
from unicorn import unicorn_const as _ucc

from ..clock import VirtualClock
from ..constants import PAGE_SIZE, SWITCHER_ADDR
from ..host.launcher import DEFAULT_CONSOLE_LIMIT, Launcher, RunResult
from ..host.stats import Stats
from ..host.vectors import Host
from ..memory import GuestMemory
from ..validate import to_bytes, to_timeout, to_u32
from .backend import UnicornBackend
from .elf import parse_elf32
from .engine import TCG_BUFFER_SIZE, check_version, engine_open
from .exits import REASON_DEADLINE, REASON_TIMER
from .paging import initial_page_tables
from .stats import flat_stats
from .switcher import GUEST_FLAT_SEGMENTS

if TYPE_CHECKING:
    from ..host import record as record_mod

# lguest.host.record (with json, zlib and hashlib, ~4 ms) is imported where
# a recording or a replay is made: a plain run never needs it.


class UnicornLauncher:
    """lguest's Launcher for a guest running on Unicorn (see the module text).

    ``with UnicornLauncher(memory=16 << 20) as lg: lg.load_elf(path); result = lg.run()``
    """

    #: Virtual clock: guest nanoseconds per executed basic block (Unicorn
    #: translation block).  A block is a handful of instructions, so this is
    #: a guest that runs a few hundred million instructions a second.
    ns_per_block = 10

    #: On the main thread, run() returns to Python at least this often (a
    #: host stop the guest cannot see) so that signal handlers -- Ctrl-C --
    #: run while a guest spins inside the emulator.
    SIGNAL_SLICE_NS = 50_000_000

    def __init__(self, memory: int, *, syscall_vector: int = 0x80, page_offset: int = 0,
                 clock: str = "virtual", console: Callable[[bytes], None] | Any = None,
                 used_vectors: Any = None, native_direct: bool = True, core: Any = None,
                 console_limit: int = DEFAULT_CONSOLE_LIMIT, trace_size: int = 0,
                 record: bool = False, replay: Any = None) -> None:
        """``record``: log this guest's inputs (:meth:`save_recording`);
        ``replay``: a recording (a path, or :func:`lguest.host.record.load`'s
        dict) whose inputs are fed back instead of any from outside; its
        clock mode replaces ``clock``.  See :mod:`lguest.host.record`."""
        if record and replay is not None:
            raise ValueError("record and replay are exclusive")
        if replay is not None:
            from ..host import record as record_mod
            replay = record_mod.load(replay) if isinstance(replay, (str, os.PathLike)) else replay
            clock = replay["clock"]
        if clock not in ("virtual", "wall"):
            raise ValueError('clock must be "virtual" or "wall"')
        if isinstance(memory, bool) or not isinstance(memory, int) or memory <= 0 or memory % PAGE_SIZE:
            raise ValueError(f"memory must be a positive multiple of {PAGE_SIZE}")
        if page_offset % (4 << 20) or not 0 <= page_offset < SWITCHER_ADDR:
            raise ValueError("page_offset must be a multiple of 4 MiB below the Switcher")
        if page_offset and page_offset < memory:
            raise ValueError("page_offset must lie above guest RAM")
        if page_offset + memory > SWITCHER_ADDR or memory > SWITCHER_ADDR:
            raise ValueError("guest memory overlaps the Switcher")
        self._record = bool(record)
        self._replay_data: dict[str, Any] | None = replay
        self._gdb: Any = None
        self.recorder: record_mod.Recorder | None = None
        self._replayer: record_mod.Replayer | None = None
        self.memory_size = memory
        self.syscall_vector = syscall_vector
        self.page_offset = page_offset
        self.clock_mode = clock
        self._console_arg = console
        self._console_limit = console_limit
        self._trace_size = trace_size
        self._used_vectors = used_vectors
        self._native_direct = native_direct
        self._core = core
        self.host: Any = None
        self.memory: GuestMemory | None = None
        self.guest: Any = None
        self.cpu: Any = None
        self.uc: Any = None
        self.backend: UnicornBackend | None = None
        self.launcher: Launcher | None = None
        self.entry: int | None = None
        # One run at a time: the engine, the native hooks' state and the
        # cpu are not thread-safe.  Held for the whole of run().
        self._run_lock = threading.Lock()
        self._run_thread: int | None = None  # ident of the thread inside run(), if any
        self._memory_hold: Any = None

    # --- lifetime ------------------------------------------------------------------------------
    def __enter__(self) -> UnicornLauncher:
        if self.host is not None or self.backend is not None:
            raise RuntimeError("UnicornLauncher is already entered (one with block at a time)")
        check_version()
        host = Host(self.syscall_vector, self._used_vectors)
        host.init_interrupts()  # VectorBusy if another module has the vector
        self.host = host
        try:
            self._setup()
        except BaseException:
            self._teardown()
            raise
        _track(self)
        return self

    #: __exit__ during a run on another thread breaks the guest out and
    #: waits this long for run() to return before giving up.
    teardown_wait = 5.0

    def __exit__(self, *exc: Any) -> None:
        """Tear down.  If another thread is inside run(), break it out and
        wait (run returns within a block of the request); RuntimeError, with
        nothing released, if it has not returned after ``teardown_wait``."""
        if self._run_thread == threading.get_ident():
            raise RuntimeError("UnicornLauncher cannot be torn down from inside its own run (a console or "
                               "device callback); call break_out() there and leave the with block after run()")
        if not self._run_lock.acquire(blocking=False):
            try:
                self.break_out()
            except RuntimeError:
                pass  # already torn down by another thread
            if not self._run_lock.acquire(timeout=self.teardown_wait):
                raise RuntimeError("UnicornLauncher is still running a guest on another thread; not torn down")
        try:
            self._teardown()
        finally:
            self._run_lock.release()

    def _setup(self) -> None:
        self.memory = mem = GuestMemory(self.memory_size)
        virtual = self.clock_mode == "virtual"
        clock: Any = VirtualClock() if virtual else None
        if self._record or self._replay_data is not None:
            from ..host import record as record_mod
        if self._record:  # the recorder is hooked in below
            clock = record_mod.RecordingVirtualClock() if virtual else record_mod.RecordingClock(None)
        elif self._replay_data is not None:
            clock = record_mod.ReplayVirtualClock() if virtual else record_mod.ReplayClock()
        self.guest = g = self.host.new_guest(mem, page_offset=self.page_offset, clock=clock, core=self._core)
        self.cpu = cpu = g.new_cpu()
        # lguest_arch_setup_regs (the loader sets eip), and setup_guest_gdt's flat segments.
        cpu.setup_regs(0)
        gdt = cpu.gdt_words
        for i, (a, b) in GUEST_FLAT_SEGMENTS.items():
            gdt[i, 0], gdt[i, 1] = a, b
        self.uc = uc = _unicorn.Uc(_ucc.UC_ARCH_X86, _ucc.UC_MODE_32)
        # Cap the translation cache before anything initialises the engine
        # (Unicorn sizes the code buffer once, at its lazy init, on the first
        # mem_map): see TCG_BUFFER_SIZE.
        uc.ctl_set_tcg_buffer_size(TCG_BUFFER_SIZE)
        # Unicorn maps the pages themselves: hold the memory open until
        # mem_unmap (GuestMemory.close() raises meanwhile).
        hold = mem.hold()
        hold.__enter__()
        self._memory_hold = hold
        uc.mem_map_ptr(0, mem.size, _ucc.UC_PROT_ALL, mem.address)
        self.backend = backend = UnicornBackend(uc, cpu, virtual=self.clock_mode == "virtual",
                                                ns_per_block=self.ns_per_block,
                                                native_direct=self._native_direct)
        if not backend.hooks.has_native_core:
            # The pure-Python core's wall clock sets pending bits the hook
            # cannot see: poll every 1 ms.  A recorded or replayed clock
            # pokes the hook itself (lguest.host.record.keep_irqs_in_sight).
            polled = self.clock_mode == "wall" and not self._record and self._replay_data is None
            backend.hooks.slice_ns = 1_000_000 if polled else 0
        if self.page_offset:
            g.pgdir = initial_page_tables(mem, self.page_offset)
            backend.enable_paging()
        stats = Stats(trace_size=self._trace_size)
        self.launcher = Launcher(cpu, backend, console=self._console_arg, console_limit=self._console_limit,
                                 stats=stats, host_idt=backend.host_idt_words)
        backend.stats = stats  # traps the hook reflects itself are counted there
        if self._record:
            self.recorder = backend.runner = record_mod.Recorder(
                cpu, backend.hooks, self._deliver_irq, host_stop_reasons=(REASON_DEADLINE,), wall=not virtual)
            clock.recorder = self.recorder
            backend.hooks.set_tsc_handler(self.recorder.tsc)  # rdtsc: an input (only here: no cost otherwise)
        elif self._replay_data is not None:
            self._replayer = backend.runner = record_mod.Replayer(
                self._replay_data, cpu, backend.hooks, self._deliver_irq, clock, timer_reason=REASON_TIMER,
                host_stop_reasons=(REASON_DEADLINE,))
            g.tsc_khz = int(self._replay_data.get("tsc_khz", g.tsc_khz))
            backend.hooks.set_tsc_handler(self._replayer.tsc)

    def _teardown(self) -> None:
        if self._gdb is not None:
            self._gdb.close()
        if self.backend is not None and self.cpu is not None:
            self._final_stats = self.stats  # still readable after the with block
        backend, self.backend = self.backend, None
        # Closed already when the collector frees this launcher together with
        # its engine (see engine_open): then nothing may call into it.
        closed = self.uc is not None and not engine_open(self.uc)
        if backend is not None:
            backend.close(engine_closed=closed)
        unmapped = True
        if self.uc is not None:
            if not closed:
                try:
                    self.uc.mem_unmap(0, self.memory_size)
                except _unicorn.UcError:
                    unmapped = self._memory_hold is None  # mapped, or never mapped
            self.uc = None  # the last reference: the engine is closed
        if self._memory_hold is not None and unmapped:
            self._memory_hold.__exit__(None, None, None)
            self._memory_hold = None
        if backend is not None:
            backend.release_switcher()  # Unicorn no longer maps it
        if self.launcher is not None:
            self.launcher.context.host_idt = None  # a view of the Switcher, released above
        if self.memory is not None:
            try:
                self.memory.close()
            except (BufferError, RuntimeError):  # a view or a hold still lives: the GC frees it
                pass
        if self.host is not None:
            self.host.free_interrupts()
            self.host = None

    def __del__(self) -> None:
        # A launcher entered but never exited (an exception, a forgotten with
        # block) is otherwise never freed: the native hooks, the core's native
        # API capsule, the cpu and its backend form a cycle the garbage
        # collector cannot see through (capsules are not traversed).
        if getattr(self, "backend", None) is not None and getattr(self, "_run_thread", None) is None:
            try:
                self._teardown()
            except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to report to
                pass

    # --- loading ----------------------------------------------------------------------------------
    def _check_live(self) -> None:
        if self.backend is None:
            raise RuntimeError("use UnicornLauncher as a context manager")

    def load_flat(self, data: bytes, load_address: int, entry: int) -> None:
        """Copy a raw image to guest-physical ``load_address``; start at ``entry``."""
        self._check_live()
        data = to_bytes(data)
        load_address, entry = to_u32(load_address, "load_address"), to_u32(entry, "entry")
        if load_address + len(data) > self.memory.size:
            raise ValueError("image does not fit in guest memory")
        self.memory.write(load_address, data)
        self.cpu.regs.eip = entry
        self.entry = entry

    def load_elf(self, path: Any) -> int:
        """Load an ELF32 i386 executable: PT_LOAD segments at their physical
        addresses, bss zeroed; start at its entry point (virtual when
        page_offset is set: the initial page tables map it).  Returns the entry."""
        self._check_live()
        with open(path, "rb") as f:
            data = f.read()
        entry, segments = parse_elf32(data)
        for paddr, raw, memsz in segments:
            if paddr + memsz > self.memory.size:
                raise ValueError(f"ELF segment at {paddr:#x} ({memsz:#x} bytes) does not fit in guest memory")
            self.memory.write(paddr, raw + bytes(memsz - len(raw)))
        self.cpu.regs.eip = entry
        self.entry = entry
        return entry

    # --- running -----------------------------------------------------------------------------------
    def run(self, timeout: float | None = None) -> RunResult:
        """Run until the guest dies ("dead"), asks to reboot ("restart"), a
        break-out ("break") or ``timeout`` seconds ("timeout")."""
        timeout = to_timeout(timeout)
        if self._run_thread == threading.get_ident():
            raise RuntimeError("UnicornLauncher.run() called from inside its own run (a console or device callback)")
        if not self._run_lock.acquire(blocking=False):
            raise RuntimeError("UnicornLauncher.run() is already running on another thread")
        try:
            self._check_live()
            backend = self.backend
            hooks = backend.hooks
            backend.deadline_ns = 0 if timeout is None else time.monotonic_ns() + int(timeout * 1e9)
            # Python runs signal handlers only between bytecodes, and a guest
            # that never leaves the emulator never gives it one: on the main
            # thread (where SIGINT lands) the native loop hands back control
            # every SIGNAL_SLICE_NS, so Ctrl-C raises KeyboardInterrupt soon.
            # The slice is a host stop like the clock's: the guest cannot see it.
            slice_ns = hooks.slice_ns
            if threading.current_thread() is threading.main_thread():
                hooks.slice_ns = min(slice_ns, self.SIGNAL_SLICE_NS) if slice_ns else self.SIGNAL_SLICE_NS
            self._run_thread = threading.get_ident()
            try:
                result = self.launcher.run(timeout)
                if self._gdb is not None and result.reason in ("dead", "restart"):
                    self._gdb.guest_ended(result.reason, result.message)
                if self._replayer is not None and self._replayer.ended is not None and result.reason == "break":
                    result = RunResult(self._replayer.ended)  # where the recorded run was stopped
                return result
            finally:
                self._run_thread = None
                backend.deadline_ns = 0
                hooks.slice_ns = slice_ns
        finally:
            self._run_lock.release()

    def serve_gdb(self, port: int = 0) -> int:
        """Debug the guest with gdb: listen on 127.0.0.1:``port`` (0: a free
        port) and return the port.  The next run() waits for gdb to attach
        before the guest's next instruction (``run(timeout)``, break_out()
        and Ctrl-C still end it) and serves it until it detaches or the
        guest ends.  See :mod:`lguest.unicorn.gdbstub`."""
        from .gdbstub import GdbStub

        self._check_live()
        if self.backend.runner is not None:
            raise RuntimeError("a gdb stub, a recording or a replay is already attached")
        stub = GdbStub(self, port)
        self.backend.runner = self._gdb = stub
        sink = self.launcher._sink

        def console(chunk: bytes) -> None:
            if sink is not None:
                sink(chunk)
            stub.console(chunk)

        self.launcher._sink = console
        return stub.port

    def start_timeline(self, limit: int | None = None) -> Any:
        """Record a :class:`lguest.host.trace.Timeline` of this guest's
        deliveries, hypercalls, timer fires and kill from now on (before
        run()); returns it (``timeline.write(path)`` saves the JSON)."""
        from ..host.trace import DEFAULT_LIMIT, DIRECT_CAPACITY, Timeline, TimelineStats

        self._check_live()
        if self.backend.timeline is not None:
            raise RuntimeError("a timeline is already being recorded")
        timeline = Timeline(DEFAULT_LIMIT if limit is None else limit, clock=self.clock_mode)
        clock, backend = self.guest.clock, self.backend
        if self.clock_mode == "virtual":
            now_ns = clock.now_ns
        else:
            backend.timeline_t0 = t0 = time.monotonic_ns()

            def now_ns() -> int:
                return time.monotonic_ns() - t0
        old = self.launcher.context.stats
        stats = TimelineStats(timeline, self.cpu, now_ns, trace_size=self._trace_size or 64)
        stats.hypercalls, stats.reflected_traps = old.hypercalls, old.reflected_traps
        stats.kills, stats.entries = old.kills, old.entries
        self.launcher.context.stats = stats
        if not isinstance(clock, VirtualClock):  # the wall clock's fires happen in a timer thread
            stats.watch_wall_timer(clock)
        else:
            arm = clock.arm

            def traced_arm(key: Any, expiry_ns: int, callback: Callable[[], None]) -> None:
                def fired() -> None:
                    stats.timer()
                    callback()
                arm(key, expiry_ns, fired)
            clock.arm = traced_arm  # type: ignore[method-assign]
        backend.hooks.trace_direct(DIRECT_CAPACITY)
        backend.timeline = timeline
        return timeline

    def _live_parts(self) -> tuple[Launcher, Any]:
        """(launcher, hooks), read once: another thread's __exit__ may clear
        the attributes between two reads."""
        launcher, backend = self.launcher, self.backend
        hooks = backend.hooks if backend is not None else None
        if launcher is None or hooks is None:
            raise RuntimeError("UnicornLauncher is not entered (or already torn down)")
        return launcher, hooks

    def send_irq(self, irq: int) -> None:
        """Raise virtual irq ``irq`` (LHREQ_IRQ); thread-safe, honoured at the next guest block.
        Recorded when recording; refused (RuntimeError) while replaying."""
        launcher, hooks = self._live_parts()
        if self._replayer is not None:
            raise RuntimeError("a replay takes its irqs from the recording")
        if not isinstance(irq, int) or isinstance(irq, bool) or not 0 <= irq < 32:
            launcher.send_irq(irq)  # the same refusal as without a recording
        recorder = self.recorder
        if recorder is not None:
            recorder.input("irq", irq)
            return
        launcher.send_irq(irq)
        hooks.poke()

    @property
    def replayer(self) -> record_mod.Replayer | None:
        """The replay feeding this guest its inputs (``replay=``), or None."""
        return self._replayer

    def _deliver_irq(self, irq: int) -> None:
        launcher, hooks = self._live_parts()
        launcher.send_irq(irq)
        hooks.poke()

    # --- record and replay (lguest.host.record) --------------------------------------------------
    def _header(self, image: str | None) -> dict[str, Any]:
        from ..host import record as record_mod
        return {"image_sha256": record_mod.file_digest(image) if image else None, "memory": self.memory_size,
                "page_offset": self.page_offset, "clock": self.clock_mode, "syscall_vector": self.syscall_vector,
                "ns_per_block": self.ns_per_block, "tsc_khz": int(self.guest.tsc_khz), "entry": self.entry}

    def _final(self, result: RunResult | None) -> dict[str, Any]:
        import hashlib

        from ..host import record as record_mod
        console = self.console
        return {"reason": None if result is None else result.reason,
                "message": None if result is None else result.message,
                "console_sha256": hashlib.sha256(console).hexdigest(), "console_bytes": len(console),
                "counters": record_mod.guest_counters(self.stats),
                "registers": record_mod.regs_hash(self.cpu.regs.words)}

    def save_recording(self, path: Any, result: RunResult | None, image: str | None = None, *,
                       header: dict[str, Any] | None = None, final: dict[str, Any] | None = None) -> None:
        """Write the recording of this run (after run(); ``result`` is its
        result, None if it was interrupted) to ``path`` (atomically).
        ``header``: more header keys (a layer above: ``lguest exec``'s
        options); ``final``: more results a replay must reproduce (kept
        under ``final["extra"]``, compared by :meth:`replay_report`)."""
        if self.recorder is None:
            raise RuntimeError("not recording (UnicornLauncher(record=True))")
        if result is None or result.reason not in ("dead", "restart"):
            self.recorder.end(result.reason if result is not None else "interrupted")
        head = {**(header or {}), **self._header(image)}
        self.recorder.save(os.fspath(path), head, {**self._final(result), "extra": dict(final or {})})

    def replay_report(self, result: RunResult, image: str | None = None, *,
                      final: dict[str, Any] | None = None) -> list[str]:
        """After a replay's run(): how it differs from the recording (empty:
        identical); ``final``: the replay's values of the recording's
        ``final["extra"]`` (see :meth:`save_recording`)."""
        if self._replayer is None or self._replay_data is None:
            raise RuntimeError("not replaying (UnicornLauncher(replay=...))")
        rec = self._replay_data
        got_extra = dict(final or {})
        out = []
        if self._replayer.diverged is not None:
            out.append(f"diverged: {self._replayer.diverged}")
        header = self._header(image)
        for key in ("image_sha256", "memory", "page_offset", "syscall_vector", "ns_per_block", "entry"):
            if rec.get(key) != header[key] and (key != "image_sha256" or image is not None):
                out.append(f"{key}: recorded {rec.get(key)!r}, replayed {header[key]!r}")
        final, want = self._final(result), rec["final"]
        for key in ("reason", "message", "console_sha256", "console_bytes", "registers"):
            if final[key] != want[key]:
                out.append(f"{key}: recorded {want[key]!r}, replayed {final[key]!r}")
        if final["counters"] != want["counters"]:
            diff = {k for k in set(final["counters"]) | set(want["counters"])
                    if final["counters"].get(k) != want["counters"].get(k)}
            out.append("counters: " + ", ".join(f"{k} recorded {want['counters'].get(k)} replayed "
                                                 f"{final['counters'].get(k)}" for k in sorted(diff)))
        if self._replayer.index < len(self._replayer.events) and self._replayer.diverged is None:
            out.append(f"{len(self._replayer.events) - self._replayer.index} recorded inputs never reached")
        want_extra = rec["final"].get("extra") or {}
        for key in sorted(set(want_extra) | set(got_extra)):
            if want_extra.get(key) != got_extra.get(key):
                out.append(f"{key}: recorded {want_extra.get(key)!r}, replayed {got_extra.get(key)!r}")
        left = len(self._replayer.syncs) - self._replayer.sync_index
        if left and self._replayer.diverged is None:
            out.append(f"{left} recorded rdtsc/stdin inputs never asked for (the next: "
                       f"{self._replayer._sync_name(self._replayer.sync_index)})")
        return out

    def break_out(self) -> None:
        """Make run() return "break" soon (LHREQ_BREAK); thread-safe."""
        launcher, hooks = self._live_parts()
        launcher.break_out()
        hooks.request_stop()

    @property
    def console(self) -> bytes:
        """The newest ``console_limit`` bytes of early-console output."""
        return self.launcher.console if self.launcher is not None else b""

    @property
    def console_dropped(self) -> int:
        """Early-console bytes dropped from the front to keep ``console_limit``."""
        return self.launcher.console_dropped if self.launcher is not None else 0

    @property
    def stats(self) -> dict[str, int]:
        """A flat mapping of counters (all ints): see :func:`lguest.unicorn.stats.flat_stats`."""
        if self.backend is None:
            return dict(getattr(self, "_final_stats", {}))
        if self.cpu is None or self.launcher is None:
            return {}
        return flat_stats(self.cpu, self.launcher.stats, self.backend)

    @property
    def run_stats(self) -> Stats | None:
        """The run's :class:`lguest.host.stats.Stats` (its trace holds the last
        ``trace_size`` events), None outside the ``with`` block."""
        return self.launcher.stats if self.launcher is not None else None


# --- launchers still entered when the interpreter exits ------------------------------------------
# Unicorn's binding closes every engine from an atexit hook (its weakref
# finalizers run there).  A launcher still entered at that point -- a
# forgotten with block, an exception that skipped __exit__ -- would be torn
# down later, by __del__ during module teardown, and call mem_unmap on a freed
# engine: a segfault at exit.  So live launchers are torn down from an atexit
# hook of our own, re-registered after each engine is made: atexit runs hooks
# last-registered first, so ours always runs before the binding's.
_live: weakref.WeakSet[UnicornLauncher] = weakref.WeakSet()


def _track(launcher: UnicornLauncher) -> None:
    _live.add(launcher)
    atexit.unregister(_teardown_live)
    atexit.register(_teardown_live)


def _teardown_live() -> None:
    for launcher in list(_live):
        if launcher.backend is None:
            continue
        try:
            # Breaks out a run on a (daemon) thread and waits teardown_wait.
            launcher.__exit__(None, None, None)
        except Exception:  # noqa: BLE001 - interpreter exit: nothing left to report to
            pass
