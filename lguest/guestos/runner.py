"""``lguest exec``: boot the guest kernel on Unicorn and run one static i386 program.

:func:`run_program` is the Python entry point; the ``lguest exec`` command is
a thin layer over it.  The host side is small: pack the root into a newc
image, write the boot block (what to run, argv/envp, the clock, the syscall
vector), serve the console device when the kernel NOTIFYs it, and read the
results the kernel leaves in the boot block at SHUTDOWN.
"""

from __future__ import annotations

import os
import select
import stat
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..constants import PAGE_SIZE
from ..unicorn import UnicornLauncher
from . import layout as L
from .build import KernelUnavailable, kernel_path
from .cpio import ImageTooLarge, data_offset, pack_tree, unpack_tree
from .syscalls import name as syscall_name

#: Exit statuses of lguest's own outcomes (those of ``timeout``/``env``).
EXIT_TIMEOUT = 124
EXIT_LGUEST = 125        # usage errors, a guest kernel that died or was killed
EXIT_CANNOT_RUN = 126    # not a static ELF32 i386 program
EXIT_NOT_FOUND = 127
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

DEFAULT_MEMORY = 128 << 20
SIGPIPE = 13
E2BIG = 7  # the kernel's status with R_NOEXEC/R_NOMEM: more arguments than it takes
#: The kernel's tick: the clock lguest_data.time follows (and nanosleep's grain).
TICK_NS = 4_000_000
#: CLOCK_REALTIME at guest time 0 under the virtual clock: runs repeat exactly.
VIRTUAL_EPOCH = 1_700_000_000
DEFAULT_ENV = ("PATH=/bin:/usr/bin:/sbin:/usr/sbin", "HOME=/", "LANG=C")

_SIGNALS = {1: "SIGHUP", 2: "SIGINT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE",
            9: "SIGKILL", 11: "SIGSEGV", 13: "SIGPIPE", 15: "SIGTERM"}


class ExecError(Exception):
    """An outcome of lguest's own (not the program's): ``status`` is the exit code, ``args[0]`` the line."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ExecResult:
    """What a run ended with.  ``status`` is the program's exit status (128+N
    when signal N ended it) or one of lguest's own codes, with ``message``
    saying why; ``stdout``/``stderr`` hold the output when captured."""

    status: int
    stdout: bytes = b""
    stderr: bytes = b""
    message: str | None = None
    signal: int | None = None
    syscalls: dict[str, int] = field(default_factory=dict)
    unsupported: dict[str, int] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    #: With ``replay=``: how the run differs from the recording (empty:
    #: identical); None otherwise.
    replay: list[str] | None = None
    #: With ``replay=``: the recording's inputs and checkpoints (its size).
    replay_inputs: int = 0


class _Console:
    """The console device: drain the kernel's stdout/stderr rings, fill its stdin ring."""

    def __init__(self, mem: Any, out: Callable[[bytes], None], err: Callable[[bytes], None],
                 stdin: Callable[[int, bool], tuple[bytes | None, bool]]) -> None:
        self.mem, self.out, self.err, self.stdin = mem, out, err, stdin

    def _u32(self, name: str) -> int:
        return struct.unpack("<I", self.mem.read(L.CONS_PA + L.CONS[name], 4))[0]

    def _set(self, name: str, value: int) -> None:
        self.mem.write(L.CONS_PA + L.CONS[name], struct.pack("<I", value & 0xFFFF_FFFF))

    def drain(self) -> None:
        for s, sink in ((0, self.out), (1, self.err)):
            head, tail = self._u32(f"out_head{s}"), self._u32(f"out_tail{s}")
            used = (head - tail) & 0xFFFF_FFFF
            if not used:
                continue
            if used > L.RING_SIZE:  # the guest's counters: never trust them past the ring
                used = L.RING_SIZE
                tail = (head - used) & 0xFFFF_FFFF
            base = L.RING_OUT_PA + s * L.RING_SIZE
            at = tail & (L.RING_SIZE - 1)
            first = min(used, L.RING_SIZE - at)
            data = self.mem.read(base + at, first)
            if used > first:
                data += self.mem.read(base, used - first)
            self._set(f"out_tail{s}", head)
            sink(data)

    def __call__(self, addr: int) -> None:
        self.drain()
        want = self._u32("in_want")
        if want:
            head, tail = self._u32("in_head"), self._u32("in_tail")
            room = L.RING_SIZE - min((head - tail) & 0xFFFF_FFFF, L.RING_SIZE)
            # in_nowait (poll/select): only what stdin holds now, None if nothing yet
            data, hup = self.stdin(min(want, room, L.RING_SIZE), not self._u32("in_nowait"))
            self._set("in_hup", int(hup))
            if data is None:
                return
            if not data:
                self._set("in_eof", 1)
                return
            at = head & (L.RING_SIZE - 1)
            first = min(len(data), L.RING_SIZE - at)
            self.mem.write(L.RING_IN_PA + at, data[:first])
            if len(data) > first:
                self.mem.write(L.RING_IN_PA, data[first:])
            self._set("in_head", head + len(data))


StdinReader = Callable[[int, bool], tuple[bytes | None, bool]]


def _stdin_reader(stdin: bytes | BinaryIO | int | None,
                  deadline: Callable[[], float | None] = lambda: None) -> StdinReader:
    """A reader of at most n bytes of the program's stdin: ``(data, hup)``.
    With ``wait`` it waits for input (b"": the end of it); without (the
    guest's poll/select asks what is there now) data is None when nothing
    is.  ``hup``: the writer is gone, what is left is all there will be (a
    pipe's POLLHUP; bytes given whole are such an input).  A file descriptor
    is polled up to ``deadline()`` (a time.monotonic() value, or None): a
    stdin that never comes must not outlast --timeout, and the wait is a
    poll() a signal interrupts."""
    if stdin is None:
        return lambda n, wait: (b"", True)
    if isinstance(stdin, (bytes, bytearray, memoryview)):
        buf = memoryview(bytes(stdin))
        pos = 0

        def from_bytes(n: int, wait: bool) -> tuple[bytes | None, bool]:
            nonlocal pos
            chunk = bytes(buf[pos:pos + n])
            pos += len(chunk)
            return chunk, True
        return from_bytes
    fd: int | None = stdin if isinstance(stdin, int) else None
    if fd is None and hasattr(stdin, "fileno"):
        try:
            fd = stdin.fileno()
        except (OSError, ValueError):
            fd = None
    if fd is not None:
        rfd = fd
        poller = select.poll()
        poller.register(rfd, select.POLLIN)

        def from_fd(n: int, wait: bool) -> tuple[bytes | None, bool]:
            while True:
                end = deadline()
                ms: float | None = None if wait else 0
                if end is not None and wait:
                    ms = (end - time.monotonic()) * 1000
                    if ms <= 0:
                        raise _Stop(EXIT_TIMEOUT, "")
                ready = poller.poll(ms)
                if not ready:
                    if not wait:
                        return None, False
                    continue
                hup = bool(ready[0][1] & select.POLLHUP)
                if not ready[0][1] & (select.POLLIN | select.POLLHUP):  # POLLERR/POLLNVAL: unreadable
                    return b"", True
                try:
                    return os.read(rfd, n), hup
                except BlockingIOError:  # a non-blocking stdin, readied and drained by someone else
                    if not wait:
                        return None, False
                    continue
                except OSError:  # a closed or unreadable stdin (CI has none) is an empty one
                    return b"", True
        return from_fd
    return lambda n, wait: (stdin.read(n) or b"", False)  # type: ignore[union-attr]


def _fd_writer(fd: int, deadline: Callable[[], float | None]) -> Callable[[bytes], None]:
    """A sink writing to file descriptor ``fd``.  With a deadline, and a pipe,
    socket or terminal (whose reader may stall), each write waits in poll()
    for room and writes at most PIPE_BUF bytes, which a pipe with room takes
    without blocking: a stalled reader cannot hold the run past --timeout.
    Other files, and runs without a timeout, get plain blocking writes."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        mode = 0  # a closed fd: the first write reports it
    stalls = stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)
    poller = select.poll()
    poller.register(fd, select.POLLOUT)

    def write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            end = deadline() if stalls else None
            if end is None:
                view = view[os.write(fd, view):]
                continue
            wait = (end - time.monotonic()) * 1000
            if wait <= 0:
                raise _Stop(EXIT_TIMEOUT, "")
            if poller.poll(wait):
                view = view[os.write(fd, view[:select.PIPE_BUF]):]
    return write


def _read_program(host: Path, cap: int) -> bytes:
    """PROGRAM given without a root: a regular host file, read without
    blocking (a fifo) and never past the image cap (a huge or growing file)."""
    try:
        fd = os.open(host, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise ExecError(f"lguest: {host}: not found", EXIT_NOT_FOUND) from exc
    except OSError as exc:  # EACCES, ELOOP, ...: what a shell reports as 126
        raise ExecError(f"lguest: {host}: cannot run: {exc.strerror}", EXIT_CANNOT_RUN) from exc
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ExecError(f"lguest: {host}: cannot run: is a directory", EXIT_CANNOT_RUN)
        if not stat.S_ISREG(st.st_mode):
            raise ExecError(f"lguest: {host}: cannot run: not a regular file", EXIT_CANNOT_RUN)
        if st.st_size > cap:
            raise ImageTooLarge(f"{host}: {st.st_size} bytes, more than the image cap of {cap} bytes; "
                                f"give more --memory")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(cap + 1)
        if len(data) > cap:
            raise ImageTooLarge(f"{host}: more than the image cap of {cap} bytes; give more --memory")
        return data
    except IsADirectoryError as exc:
        raise ExecError(f"lguest: {host}: cannot run: is a directory", EXIT_CANNOT_RUN) from exc
    except OSError as exc:
        raise ExecError(f"lguest: {host}: cannot run: {exc.strerror}", EXIT_CANNOT_RUN) from exc
    finally:
        os.close(fd)


def _root_image(program: str, root: str | os.PathLike[str] | None, cap: int) -> tuple[bytes, str]:
    """The image and the program's path inside it.  Without a root the image
    holds just the program (a host path), at that same path."""
    if root is not None:
        if not Path(root).is_dir():
            raise ExecError(f"lguest: --root {root}: not a directory", EXIT_LGUEST)
        path = program if program.startswith("/") else "/" + program
        try:
            return pack_tree(root, cap=cap), path
        except OSError as exc:  # an unreadable file or directory in the root
            where = exc.filename if exc.filename is not None else root
            raise ExecError(f"lguest: --root {root}: cannot read {where}: {exc.strerror}", EXIT_LGUEST) from exc
    host = Path(program)
    data = _read_program(host, cap)
    path = "/" + str(host.resolve()).lstrip("/")
    return pack_tree(None, {path: data}, cap=cap), path


def _check_export(export: str | os.PathLike[str]) -> None:
    """--export DIR must be a directory lguest can write, or creatable: say so
    before the program runs, not after."""
    p = Path(export)
    while not os.path.lexists(p) and p.parent != p:
        p = p.parent
    if not p.is_dir():
        why = "not a directory" if p == Path(export) else f"{p} is not a directory"
        raise ExecError(f"lguest: --export {export}: {why}", EXIT_LGUEST)
    if not os.access(p, os.W_OK | os.X_OK):
        raise ExecError(f"lguest: --export {export}: {p} is not writable", EXIT_LGUEST)


#: The kernel maps all RAM at PAGE_OFFSET (0xC0000000), below the Switcher's top 4 MiB.
MAX_MEMORY = 0xFFC0_0000 - L.PAGE_OFFSET
#: run_program's default cap on captured (not streamed) stdout plus stderr.
DEFAULT_OUTPUT_LIMIT = 256 << 20


class _EnteredOnly:
    """A launcher entered, and exited only if the body raises (run_program's
    ``_leaving``: the process ends next and takes the engine with it)."""

    def __init__(self, launcher: Any) -> None:
        self.launcher = launcher

    def __enter__(self) -> Any:
        return self.launcher.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self.launcher.__exit__(*exc) if exc[0] is not None else False


class _Stop(Exception):
    """Raised from the console device to end the run: (status, message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def run_program(program: str, args: Sequence[str] = (), *, root: str | os.PathLike[str] | None = None,
                memory: int = DEFAULT_MEMORY, clock: str = "virtual", syscall_vector: int = 0x80,
                timeout: float | None = None, env: Sequence[str] | None = None,
                stdin: bytes | BinaryIO | int | None = None,
                stdout: Callable[[bytes], None] | int | None = None,
                stderr: Callable[[bytes], None] | int | None = None,
                export: str | os.PathLike[str] | None = None, seed: int = 0,
                tty: tuple[bool, bool, bool] = (False, False, False),
                tty_size: tuple[int, int] = (24, 80), core: Any = None,
                output_limit: int = DEFAULT_OUTPUT_LIMIT,
                record: str | os.PathLike[str] | None = None,
                replay: str | os.PathLike[str] | dict[str, Any] | None = None,
                trace_out: str | os.PathLike[str] | None = None, _leaving: bool = False) -> ExecResult:
    """Run ``program`` (a path inside ``root``; without a root, a host file)
    with ``args`` under the guest kernel and return an :class:`ExecResult`.

    Output goes to the ``stdout``/``stderr`` callables or file descriptors
    (written so that a stalled reader cannot hold the run past ``timeout``),
    or is captured into the result when they are None.  ``stdin``: bytes, a file or fd, or None
    (empty).  ``export``: write the final tree (the root as the program left
    it) to that host directory.  lguest's own failures raise no exception:
    the result carries one of the EXIT_* codes and a ``message``.  ``core``:
    the core to build the guest with (a name or module; default the active one).
    ``output_limit``: at most this many bytes of stdout plus stderr are
    captured; a program that writes more is stopped (EXIT_LGUEST).  A
    ``stdout``/``stderr`` callable that raises BrokenPipeError ends the run
    as SIGPIPE would end the program natively (status 141).

    ``record``: log every input of the run to that file -- stdin as it
    enters the console ring, the wall clock's timer fires and the
    timestamps the host writes, irqs, rdtsc, each with the guest's position
    (lguest.host.record) -- plus the options and the results;  ``replay``: a
    recording (a path or its loaded dict) whose inputs are fed back instead
    (stdin is not read; the clock, the epoch, the seed and the tty flags
    are the recording's), the result's ``replay`` listing what differs.
    ``trace_out``: write the run's timeline (lguest.host.trace: deliveries,
    system calls as direct traps, hypercalls, timer fires, the end) there,
    whatever way the run ends.

    ``_leaving`` is the command line's (lguest._startup.leave), for a
    process that ends right after: a run that ends normally leaves the
    engine and the guest memory to the process's end rather than tearing
    them down (~2.5 ms).  Nothing else may run in that process after it.
    """
    out_buf, err_buf = bytearray(), bytearray()

    def capture(buf: bytearray) -> Callable[[bytes], None]:
        def sink(data: bytes) -> None:
            # the guest decides how much it writes: captured output is host memory, so it has a cap
            room = output_limit - len(out_buf) - len(err_buf)
            buf.extend(data[:max(room, 0)])
            if len(data) > room:
                raise _Stop(EXIT_LGUEST, f"captured output passed its limit of {output_limit} bytes "
                                         f"(output_limit); the program was stopped")
        return sink
    def guarded(sink: Callable[[bytes], None], name: str) -> Callable[[bytes], None]:
        # The host cannot hand a write error back to the program (its writes
        # went into the ring long ago): a stream that fails (closed, disk
        # full) ends the run with one line.  A reader gone is SIGPIPE, below.
        def write(data: bytes) -> None:
            try:
                sink(data)
            except BrokenPipeError:
                raise
            except OSError as exc:
                raise _Stop(EXIT_LGUEST, f"cannot write its {name}: {exc.strerror or exc}") from exc
        return write
    deadline: float | None = None   # set when the run starts

    def sink_of(target: Callable[[bytes], None] | int | None, buf: bytearray, name: str) -> Callable[[bytes], None]:
        if target is None:
            return capture(buf)
        if isinstance(target, int):
            return guarded(_fd_writer(target, lambda: deadline), name)
        return guarded(target, name)
    out_sink = sink_of(stdout, out_buf, "stdout")
    err_sink = sink_of(stderr, err_buf, "stderr")
    t0 = time.monotonic()

    def done(status: int, message: str | None = None, **kw: Any) -> ExecResult:
        return ExecResult(status, bytes(out_buf), bytes(err_buf), message, elapsed=time.monotonic() - t0, **kw)

    rec_data: dict[str, Any] | None = None
    if replay is not None:
        if record is not None:
            return done(EXIT_LGUEST, "lguest: --record and --replay are exclusive")
        try:
            from ..host import record as record_mod
            rec_data = replay if isinstance(replay, dict) else record_mod.load(os.fspath(replay))
        except (OSError, ValueError) as exc:
            return done(EXIT_LGUEST, f"lguest: --replay: {exc}")
        if not isinstance(rec_data.get("exec"), dict):
            return done(EXIT_LGUEST, "lguest: --replay: not a recording of lguest exec (lguest run --replay "
                                     "replays those)")
        # What the host chose for the recorded run is the recording's now.
        recorded = rec_data["exec"]
        clock, seed = rec_data["clock"], int(recorded["seed"])
        tty = (bool(recorded["tty"][0]), bool(recorded["tty"][1]), bool(recorded["tty"][2]))
        tty_size = (int(recorded["tty_size"][0]), int(recorded["tty_size"][1]))
    # The results a replay must reproduce: what the program wrote, hashed.
    logged = record is not None or rec_data is not None
    hashes: dict[str, Any] = {}
    sizes = {"stdout": 0, "stderr": 0}
    if logged:
        import hashlib  # only here: its OpenSSL costs every start-up ~2 ms
        hashes = {"stdout": hashlib.sha256(), "stderr": hashlib.sha256()}
        def hashed(name: str, sink: Callable[[bytes], None]) -> Callable[[bytes], None]:
            def write(data: bytes) -> None:
                hashes[name].update(data)
                sizes[name] += len(data)
                sink(data)
            return write
        out_sink, err_sink = hashed("stdout", out_sink), hashed("stderr", err_sink)

    try:
        if not 0 < memory <= MAX_MEMORY or memory % PAGE_SIZE:
            raise ExecError(f"lguest: --memory: {memory} bytes is out of range for lguest exec: a multiple of 4 KiB "
                            f"up to {MAX_MEMORY >> 20} MiB (the kernel maps all of it at 0x{L.PAGE_OFFSET:X}, "
                            f"below the Switcher)", EXIT_LGUEST)
        if export is not None:
            _check_export(export)
        kernel = kernel_path()
        # The image may take at most half of memory: the program needs the rest.
        image, path = _root_image(program, root, cap=memory // 2)
    except ExecError as exc:
        return done(exc.status, str(exc))
    except ImageTooLarge as exc:
        return done(EXIT_LGUEST, f"lguest: {exc}")
    except KernelUnavailable as exc:
        return done(EXIT_LGUEST, f"lguest: {exc}")

    argv = [path, *args]
    envp = list(DEFAULT_ENV if env is None else env)
    blob = b"".join(s.encode("utf-8", "surrogateescape") + b"\0" for s in argv + envp)

    # Top of RAM: the Launcher's initial page tables; below them argv/envp, then the image.
    n_tables = -(-memory // PAGE_SIZE // 1024)
    top = memory - (n_tables + 1) * PAGE_SIZE
    args_pa = (top - len(blob)) & ~(PAGE_SIZE - 1)
    image_pa = (args_pa - len(image)) & ~(PAGE_SIZE - 1)
    # The program's bytes page-aligned in guest memory (newc aligns data to 4
    # bytes only): the kernel maps its read-only segments from the image
    # rather than copying them -- under the emulator every guest store is a
    # slow call, and copying a 2 MiB program costs half a million.
    prog_at = data_offset(image, path)
    if prog_at is not None:
        image_pa -= prog_at % PAGE_SIZE
    if image_pa < L.KERNEL_PA + (4 << 20):
        return done(EXIT_LGUEST, f"lguest: {memory >> 10} KiB of guest memory is too little for a "
                                 f"{len(image)}-byte root image; give more --memory")
    flags = (L.BF_EXPORT if export is not None else 0) | (L.BF_STDIN_TTY if tty[0] else 0) \
        | (L.BF_STDOUT_TTY if tty[1] else 0) | (L.BF_STDERR_TTY if tty[2] else 0)
    # epoch_sec is CLOCK_REALTIME at guest time 0.  The wall clock *is*
    # CLOCK_REALTIME (the host writes time_ns() into lguest_data), so its
    # guest time 0 is the Unix epoch: adding today's date on top of it gave
    # a time past 2038 that a 32-bit program's date printed as 1970.
    epoch = VIRTUAL_EPOCH if clock == "virtual" else 0
    if rec_data is not None:
        epoch = int(rec_data["exec"]["epoch"])
    # What a recording says of the run, and a replay compares: built only
    # then (hashing the root image is ~1 ms per MiB).
    exec_header: dict[str, Any] = {}
    if logged:
        exec_header = {"program": path, "args": list(args), "env": envp,
                       "root_sha256": hashlib.sha256(image).hexdigest(),  # imported above (logged)
                       "export": export is not None, "epoch": epoch, "seed": seed, "tty": list(tty),
                       "tty_size": list(tty_size)}
    boot = L.pack_bootinfo(magic=L.BOOT_MAGIC, mem_size=memory, image_pa=image_pa, image_len=len(image),
                           args_pa=args_pa, args_len=len(blob), argc=len(argv), envc=len(envp),
                           syscall_vector=syscall_vector, tick_ns=TICK_NS, epoch_sec=epoch,
                           seed_lo=seed & 0xFFFF_FFFF, seed_hi=(seed >> 32) & 0xFFFF_FFFF, flags=flags,
                           tty_rows=tty_size[0], tty_cols=tty_size[1], alloc_limit_pa=image_pa)

    def console(chunk: bytes) -> None:  # the early console: the kernel's own last words
        err_sink(chunk)

    lg = UnicornLauncher(memory=memory, syscall_vector=syscall_vector, page_offset=L.PAGE_OFFSET,
                         clock=clock, console=console, console_limit=4096, core=core,
                         record=record is not None, replay=rec_data)
    read_stdin = _stdin_reader(stdin, lambda: deadline)

    def stdin_bytes(n: int, wait: bool) -> tuple[bytes | None, bool]:
        """What enters the stdin ring: the host's, logged with the guest's
        position when recording; the recording's when replaying (a guest
        asking elsewhere, or for more, ends the replay: b"" then).  Logged
        as the bytes' hex ("" the end of the input, the writer gone) -- or,
        when the answer is more than that (poll found nothing yet, or bytes
        and the writer gone), as [hex or None, hup]."""
        replayer = lg.replayer
        if replayer is not None:
            value = replayer.sync("stdin")
            if value is None:
                return b"", True
            if isinstance(value, str):
                return bytes.fromhex(value), not value
            return (None if value[0] is None else bytes.fromhex(value[0])), bool(value[1])
        data, hup = read_stdin(n, wait)
        if lg.recorder is not None:
            plain = data is not None and hup == (not data)
            lg.recorder.sync("stdin", data.hex() if plain else [None if data is None else data.hex(), hup])
        return data, hup

    with _EnteredOnly(lg) if _leaving else lg:
        mem = lg.memory
        mem.write(L.BOOTINFO_PA, boot)
        mem.write(L.CONS_PA, struct.pack("<I", 0x534E4F43))  # "CONS"
        mem.write(args_pa, blob)
        mem.write(image_pa, image)
        lg.load_elf(kernel)
        cons = _Console(mem, out_sink, err_sink, stdin_bytes)
        lg.launcher.devices[L.CONS_PA] = cons
        timeline = lg.start_timeline() if trace_out is not None else None
        stopped: _Stop | None = None
        result: Any = None
        try:
            if timeout is not None and timeout != float("inf"):
                deadline = time.monotonic() + timeout
            result = lg.run(timeout=timeout)
        except _Stop as exc:  # from the console device: stdin waited past --timeout, or output passed its cap
            stopped = exc
        except BrokenPipeError:  # a sink's reader is gone: natively the program would die of SIGPIPE
            stopped = _Stop(128 + SIGPIPE, "killed by SIGPIPE (its output was closed)")
        finally:
            try:
                cons.drain()
            except _Stop as exc:
                stopped = stopped or exc
            except BrokenPipeError:
                stopped = stopped or _Stop(128 + SIGPIPE, "killed by SIGPIPE (its output was closed)")
            if timeline is not None:
                timeline.write(trace_out)  # type: ignore[arg-type]
        res = L.unpack_results(mem.read(L.BOOTINFO_PA, PAGE_SIZE))
        counts = _counts(mem, res["counts_pa"])
        unsupported = _counts(mem, res["enosys_pa"])
        # the kernel's list of pieces (guest words): _gather checks it against guest RAM, else None
        exported = _gather(mem, res["export_pa"], res["export_len"], memory) if export is not None else None
        stats = dict(lg.stats)
        kw: dict[str, Any] = {"syscalls": counts, "unsupported": unsupported, "stats": stats}
        if logged:
            final = {"stdout_sha256": hashes["stdout"].hexdigest(), "stdout_bytes": sizes["stdout"],
                     "stderr_sha256": hashes["stderr"].hexdigest(), "stderr_bytes": sizes["stderr"],
                     "result": res["result"], "status": res["status"], "syscalls": counts}
            if record is not None:  # result None: the host stopped the run itself (saved as interrupted)
                lg.save_recording(record, result, kernel, header={"exec": exec_header}, final=final)
            if rec_data is not None and result is not None:
                report = lg.replay_report(result, kernel, final=final)
                want = rec_data["exec"]
                report += [f"{key}: recorded {want.get(key)!r}, replayed {exec_header[key]!r}"
                           for key in ("program", "args", "env", "root_sha256", "export")
                           if want.get(key) != exec_header[key]]
                kw["replay"] = report
                kw["replay_inputs"] = len(rec_data["events"]) + len(rec_data.get("sync", []))
    if stopped is not None and stopped.status != EXIT_TIMEOUT:
        sig = {"signal": SIGPIPE} if stopped.status == 128 + SIGPIPE else {}
        return done(stopped.status, f"lguest: {path}: {stopped}", **sig, **kw)
    if stopped is not None or result.reason == "timeout":
        return done(EXIT_TIMEOUT, f"lguest: {path}: timed out after {timeout} s", **kw)
    if result.reason != "dead" or result.message != "CRASH: exit":
        # the kernel's own words (guest memory): escaped, so the line stays one line and inert
        why = repr(result.message)[1:-1] if result.message else result.reason
        return done(EXIT_LGUEST, f"lguest: the guest kernel died: {why}", **kw)
    if export is not None:
        if exported is None and res["export_len"]:
            return done(EXIT_LGUEST, f"lguest: --export {export}: the guest kernel's exported tree lies outside "
                                     f"guest memory", **kw)
        if exported is None:  # the kernel always writes a trailer: no image means it had no room for one
            return done(EXIT_LGUEST, f"lguest: --export {export}: the guest kernel left no exported tree "
                                     f"(out of guest memory for it?); give more --memory", **kw)
        try:
            unpack_tree(exported, export)
        except (OSError, ValueError) as exc:
            # names are the guest's: quoted (repr), so no newline or terminal escape reaches the user raw
            why = f"{exc.filename!r}: {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else str(exc)
            return done(EXIT_LGUEST, f"lguest: --export {export}: {why}", **kw)
    kind, status = res["result"], res["status"]
    if kind == L.R_EXIT:
        return done(status & 0xFF, **kw)
    if kind == L.R_SIGNAL:
        return done(128 + status, f"lguest: {path}: killed by {_SIGNALS.get(status, f'signal {status}')}",
                    signal=status, **kw)
    if kind == L.R_NOTFOUND:
        return done(EXIT_NOT_FOUND, f"lguest: {path}: not found in the root", **kw)
    if kind in (L.R_NOEXEC, L.R_NOMEM) and status == E2BIG:  # execve's own answer: a shell says 126
        return done(EXIT_CANNOT_RUN, f"lguest: {path}: cannot run: argument list too long", **kw)
    if kind == L.R_NOEXEC:
        return done(EXIT_CANNOT_RUN, f"lguest: {path}: cannot run: not a static ELF32 i386 executable", **kw)
    if kind == L.R_NOMEM:
        return done(EXIT_LGUEST, f"lguest: {path}: out of guest memory loading it (give more --memory)", **kw)
    return done(EXIT_LGUEST, f"lguest: the guest kernel ended without a result ({kind})", **kw)


def _gather(mem: Any, list_pa: int, pieces: int, memory: int) -> bytes | None:
    """The exported cpio: the kernel's list of ``pieces`` {pa, len} pairs at
    ``list_pa`` (file data stays where it lies in guest memory, see
    export_tree in kernel.c), joined.  The guest's words are checked, never
    trusted: the list and every piece inside memory, and the whole no larger
    than memory (the bound a flat copy had); else None (nothing exported)."""
    if not pieces or pieces > memory // 8 or list_pa + 8 * pieces > memory:
        return None
    words = struct.unpack(f"<{2 * pieces}I", mem.read(list_pa, 8 * pieces))
    total = 0
    for pa, n in zip(words[::2], words[1::2], strict=True):
        total += n
        if pa + n > memory or total > memory:
            return None
    return b"".join(mem.read(pa, n) for pa, n in zip(words[::2], words[1::2], strict=True))


def _counts(mem: Any, pa: int) -> dict[str, int]:
    if not pa or pa + 4 * L.NSYSCALLS > mem.size:
        return {}
    words = struct.unpack(f"<{L.NSYSCALLS}I", mem.read(pa, 4 * L.NSYSCALLS))
    return {syscall_name(i): n for i, n in enumerate(words) if n}


def print_exec_stats(result: ExecResult, out: Any = sys.stderr) -> None:
    """--stats: system calls by name, unsupported ones, traps and hypercalls."""
    print(f"lguest: {result.elapsed:.3f} s", file=out)
    print(f"{'system call':<24} {'count':>10}", file=out)
    for nm, n in sorted(result.syscalls.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"{nm:<24} {n:>10}", file=out)
    if result.unsupported:
        print("unsupported (returned -ENOSYS):", file=out)
        for nm, n in sorted(result.unsupported.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"{nm:<24} {n:>10}", file=out)
    s = result.stats
    def total(prefix: str) -> int:
        return sum(v for k, v in s.items() if k.startswith(prefix) and isinstance(v, int))
    print(f"{'direct traps':<24} {total('direct'):>10}", file=out)
    print(f"{'reflected traps':<24} {total('reflected'):>10}", file=out)
    print(f"{'hypercalls':<24} {total('hypercall'):>10}", file=out)
    print(f"{'interrupts':<24} {total('irq'):>10}", file=out)
