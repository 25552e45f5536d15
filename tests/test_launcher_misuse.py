"""Host-side misuse of UnicornLauncher: each case here once hung, leaked or
raised the wrong exception (found by attacking the merged containment work).

Every guest is real i386 code assembled at test time and run by Unicorn.
"""

from __future__ import annotations

import gc
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("unicorn")

import lguest  # noqa: E402
from lguest.memory import GuestMemory  # noqa: E402
from lguest.unicorn import UnicornLauncher  # noqa: E402

SPIN = b"\xeb\xfe"  # jmp .
ROOT = str(Path(lguest.__file__).resolve().parent.parent)


def launcher(core, **kw):
    kw.setdefault("memory", 1 << 20)
    kw.setdefault("used_vectors", lguest.UsedVectors(used=range(32)))
    return UnicornLauncher(core=core, **kw)


# --- Ctrl-C ------------------------------------------------------------------------------------------------------
SIGINT_CHILD = textwrap.dedent("""
    import signal, sys, time
    sys.path.insert(0, {root!r})
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a background child starts with SIGINT ignored
    import lguest
    from lguest.unicorn import UnicornLauncher
    image = bytes.fromhex({image!r})
    with UnicornLauncher(memory=1 << 20, core={core!r}, clock={clock!r},
                         used_vectors=lguest.UsedVectors(used=range(32))) as lg:
        lg.memory.write(0x8000 + 20, b"\\xff" * 64)
        lg.memory.write_u32(0x8000 + 1132, 0x80)
        lg.load_flat(image, 0x1000, 0x1000)
        print("running", flush=True)
        try:
            lg.run()  # no timeout: only Ctrl-C ends it
        except KeyboardInterrupt:
            print("interrupted", flush=True)
""")
# LGUEST_INIT(0x8000), then HALT for ever; or a plain spin.
HALT_FOREVER = bytes.fromhex("b801000000" "bb00800000" "0f01c1" "b80a000000" "0f01c1" "ebf4")
GUESTS = {"spin": SPIN, "halt": HALT_FOREVER}


@pytest.mark.parametrize("clock", ["virtual", "wall"])
@pytest.mark.parametrize("guest", sorted(GUESTS))
def test_ctrl_c_ends_a_run_without_timeout(core, guest, clock):
    """A guest that never leaves the emulator (or sleeps halted, which the
    compiled core does on a condvar no signal interrupts) used to make
    run() deaf to SIGINT: on the main thread the run now hands Python the
    control every 50 ms, so KeyboardInterrupt arrives promptly."""
    child = SIGINT_CHILD.format(root=ROOT, image=GUESTS[guest].hex(), core=core.NAME, clock=clock)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "running"
        time.sleep(0.3)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
    assert out.strip() == "interrupted" and proc.returncode == 0
    assert elapsed < 0.5 + 0.5  # generous: the interpreter's exit is in it too


# --- lifetime ------------------------------------------------------------------------------------------------------
def test_an_abandoned_launcher_is_freed(core):
    """Entered, never exited, dropped: the hooks, the core's native-API
    capsule, the cpu and its backend form a cycle the garbage collector
    cannot see through; the launcher's finaliser tears it down instead
    (before: every abandoned launcher kept its guest memory for ever)."""
    lg = launcher(core).__enter__()
    memory = lg.memory
    del lg
    gc.collect()
    assert memory.closed


EXIT_CHILD = textwrap.dedent("""
    import sys, threading, time
    sys.path.insert(0, {root!r})
    import lguest
    from lguest.unicorn import UnicornLauncher
    lg = UnicornLauncher(memory=1 << 20, core={core!r}, used_vectors=lguest.UsedVectors(used=range(32)))
    lg.__enter__()
    lg.load_flat(bytes.fromhex({image!r}), 0x1000, 0x1000)
    if {mode!r} == "ran":
        lg.run(timeout=0.05)
    elif {mode!r} == "running":  # a daemon thread is inside run() when the interpreter exits
        threading.Thread(target=lg.run, daemon=True).start()
        time.sleep(0.2)
    print("exiting", flush=True)
""")


@pytest.mark.parametrize("mode", ["entered", "ran", "running"])
def test_a_launcher_still_entered_at_interpreter_exit_does_not_crash_it(core, mode):
    """Unicorn's binding closes its engines from an atexit hook; a launcher
    still entered was torn down after that, by its finaliser, and unmapped
    memory from a freed engine: SIGSEGV at exit (rc -11).  The launcher's own
    atexit hook now tears live launchers down first (breaking out a run
    still going on a daemon thread)."""
    child = EXIT_CHILD.format(root=ROOT, core=core.NAME, image=SPIN.hex(), mode=mode)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout.strip()) == (0, "exiting"), proc.stderr[-2000:]


FORGOTTEN_CHILD = textwrap.dedent("""
    import gc, sys
    sys.path.insert(0, {root!r})
    import unicorn
    import lguest
    from lguest.unicorn import UnicornLauncher

    closed = set()
    def guarded(name):
        real = getattr(unicorn.Uc, name)
        def call(self, *args, **kw):
            if id(self) in closed:
                print("called", name, "on a closed engine", flush=True)
                sys.exit(3)
            return real(self, *args, **kw)
        setattr(unicorn.Uc, name, call)
    for name in ("mem_unmap", "hook_del", "emu_stop", "reg_read", "reg_write", "ctl_flush_tb"):
        guarded(name)

    for i in range(3):
        lg = UnicornLauncher(memory=1 << 20, core={core!r}, used_vectors=lguest.UsedVectors(used=range(32)))
        lg.__enter__()
        lg.load_flat(bytes.fromhex({image!r}), 0x1000, 0x1000)
        lg.run(timeout=0.02)
        # What the collector does when the engine is garbage in the same
        # cycle: weakref callbacks first -- the binding's finalizer closes
        # the engine -- then the launcher's __del__.
        closed.add(id(lg.uc))
        lg.uc._Uc__finalizer()
        del lg          # never exited: only the garbage collector can free it
        gc.collect()
        closed.clear()
    print("collected", flush=True)
""")


def test_a_forgotten_launcher_whose_engine_was_closed_first_is_collected_safely(core):
    """A launcher entered and never exited is a reference cycle, and the
    collector runs weakref callbacks before finalisers: when the engine is
    garbage in the same collection, Unicorn's binding has closed it (its
    weakref.finalize) before the launcher's __del__ runs, which then
    unmapped memory from the freed engine -- SIGSEGV in uc_mem_unmap in the
    middle of a program, at whatever allocation set off the collection.
    The finaliser now sees the engine closed and lets go of everything
    without calling into it."""
    child = FORGOTTEN_CHILD.format(root=ROOT, core=core.NAME, image=SPIN.hex())
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout.strip()) == (0, "collected"), (proc.returncode, proc.stdout,
                                                                          proc.stderr[-2000:])


def test_entering_twice_raises_and_a_launcher_can_be_reused(core):
    lg = launcher(core)
    with lg:
        with pytest.raises(RuntimeError, match="already entered"):
            lg.__enter__()
        lg.load_flat(SPIN, 0x1000, 0x1000)
        assert lg.run(timeout=0.05).reason == "timeout"
    with lg:  # after a clean exit, a fresh guest
        lg.load_flat(SPIN, 0x1000, 0x1000)
        assert lg.run(timeout=0.05).reason == "timeout"


def test_control_calls_racing_teardown_raise_runtime_error(core):
    """break_out()/send_irq() from another thread while __exit__ runs used
    to fail with AttributeError half-way; now RuntimeError, or success."""
    errors: list[BaseException] = []
    for _ in range(30):
        lg = launcher(core).__enter__()
        lg.load_flat(SPIN, 0x1000, 0x1000)
        stop = threading.Event()

        def poke(lg=lg, stop=stop):
            while not stop.is_set():
                for call in (lg.break_out, lambda: lg.send_irq(1)):
                    try:
                        call()
                    except RuntimeError:
                        pass
                    except BaseException as exc:  # noqa: BLE001 - the point of the test
                        errors.append(exc)

        t = threading.Thread(target=poke)
        t.start()
        lg.__exit__(None, None, None)
        stop.set()
        t.join()
    assert errors == []


@pytest.mark.parametrize("call", ["exit", "run"])
def test_teardown_or_run_from_the_run_thread_raises_at_once(core, call):
    """A console sink is called on the run thread: __exit__ there used to
    wait 5 s for its own run (then blame "another thread"), run() there
    claimed another thread was running."""
    outcome = []
    lg = launcher(core)

    def sink(chunk):
        try:
            lg.__exit__(None, None, None) if call == "exit" else lg.run(timeout=0.1)
        except RuntimeError as exc:
            outcome.append(str(exc))

    lg._console_arg = sink
    with lg:
        # NOTIFY(a string): LGUEST_INIT, then NOTIFY, then spin
        lg.memory.write(0x8000 + 20, b"\xff" * 64)
        lg.memory.write_u32(0x8000 + 1132, 0x80)
        lg.memory.write(0x3000, b"hi\n\0")
        code = bytes.fromhex("b801000000" "bb00800000" "0f01c1" "b811000000" "bb00300000" "0f01c1" "ebfe")
        lg.load_flat(code, 0x1000, 0x1000)
        t0 = time.monotonic()
        result = lg.run(timeout=0.3)
        assert time.monotonic() - t0 < 0.3 + 0.5
        assert result.reason == "timeout"
    assert len(outcome) == 1 and "inside its own run" in outcome[0]


# --- guest memory racing close() ---------------------------------------------------------------------------------
def test_accessors_racing_close_report_closed_memory():
    """read/write/read_u32/write_u32 on another thread while the memory
    closes: the only error is ValueError("guest memory is closed") (before:
    TypeError, or ValueError about a released memoryview)."""
    bad: list[str] = []
    for _ in range(200):
        mem = GuestMemory(1 << 16)
        go = threading.Event()

        def hammer(mem=mem, go=go):
            go.wait()
            for _ in range(200):
                try:
                    mem.read(0, 64)
                    mem.write(0, b"x" * 16)
                    mem.write_u32(8, mem.read_u32(8) + 1)
                except ValueError as exc:
                    if str(exc) != "guest memory is closed":
                        bad.append(repr(exc))
                    return
                except Exception as exc:  # noqa: BLE001 - the point of the test
                    bad.append(repr(exc))
                    return

        t = threading.Thread(target=hammer)
        t.start()
        go.set()
        try:
            mem.close()
        except BufferError:  # a slice was alive at that instant: refused, memory still open
            pass
        t.join()
        mem.close()
    assert bad == []
