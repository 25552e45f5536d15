"""Record and replay a guest's run: ``lguest run --record FILE`` / ``--replay FILE``.

A guest on the emulator is deterministic except for what reaches it from
outside; a recording logs exactly that, each input with the guest's
*position* when it took effect -- guest blocks executed (the native hook's
count) and eip:

* ``irq``: ``send_irq`` from another thread or a device;
* ``timer``: the guest's clock event firing under the wall clock (the
  virtual clock's fires are a function of the blocks run, so they are not
  inputs);
* ``time``: the timestamp the host writes into lguest_data under the wall
  clock, when it changed, before the entry that may read it;
* the TSC rate the host tells the guest (in the header);
* ``end``: where a run that did not end by the guest's own doing (timeout,
  break-out) stopped.

Inputs the guest *asks for* are logged apart, in ``sync``, in the order it
took them, each with the position it asked at: ``rdtsc``/``rdtscp`` (the
host's TSC; the native hook hands each one to :meth:`Recorder.tsc`, at the
instruction's own block count and eip) and ``stdin`` (the bytes a device
put into the guest when it asked for them: ``lguest exec``'s console,
:meth:`Recorder.sync`).  They need no stop of their own: the guest reaches
them by itself, and the replay answers each from the log after checking
that the guest asks at the same position.

**Recording makes inputs synchronous.**  An input arriving while the guest
runs is queued and the emulator stopped at its next block start (a host
stop the guest cannot see); it is applied there, at a position the replay
can reach again, and logged with a hash of the registers at that stop.
An input arriving while the guest is not running (halted, or between two
entries) is applied at once, at the position of the last stop.  Every
:func:`checkpoint_interval` blocks a checkpoint (position, register hash
and a CRC of guest memory) is logged too.

**Replaying** runs the guest with a block budget that ends exactly at the
next logged position (``NativeHooks.resume``'s absolute budget), checks the
eip and register hash there, and applies the input; a wall-clock recording
is replayed on a clock that never fires by itself (:class:`ReplayClock`).
The first position whose eip or hash differs -- another image, other
options, a changed host -- kills the replay with a message naming that
checkpoint; at the end the console, the counters and the final registers
are compared with the recording's.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

from ..clock import SystemClock, VirtualClock
from ..constants import LD_BLOCKED_INTERRUPTS, LD_IRQ_ENABLED, LD_TIME
from .jsonfile import write_json_atomic

FORMAT = "lguest-record/1"

#: A checkpoint is logged at the first host stop after this many blocks --
#: or after one block per 16 bytes of guest memory, if that is more.  A
#: checkpoint hashes all of guest memory (~20 ms for 128 MiB here) and a
#: block takes ~50 ns, so the checkpoints cost a few per cent of the guest's
#: time whatever its memory size; at a fixed 2**18 blocks a 128 MiB
#: ``lguest exec`` run spent longer hashing than running (sha256sum of
#: 1 MiB: 0.21 s unrecorded, 0.44 s recorded).  A replay follows the
#: recording's own checkpoints, so the interval is the recorder's choice.
CHECKPOINT_BLOCKS = 1 << 18


def checkpoint_interval(memory_size: int) -> int:
    """Blocks between two checkpoints for a guest of ``memory_size`` bytes."""
    return max(CHECKPOINT_BLOCKS, memory_size >> 4)

#: The registers hashed at a checkpoint: all but trapnum and errcode (how
#: the emulator stopped is the host's business, not the guest's state).
_HASHED = [i for i in range(18) if i not in (11, 12)]

#: Counters a replay must reproduce (the rest count host stops).
GUEST_COUNTERS = ("irq", "direct_", "reflected_", "hypercall_", "vector_", "blocks", "kills")


def regs_hash(regs_array: Any) -> str:
    """The 18 register words (``regs.words`` or ``regs.array``) but two, hashed."""
    return hashlib.sha256(struct.pack("<16I", *(int(regs_array[i]) for i in _HASHED))).hexdigest()[:16]


def state_hash(cpu: Any) -> str:
    """A checkpoint's hash: the registers and a CRC of all guest memory but
    the timestamp field of lguest_data (the host's, logged on its own).
    Memory goes in because two runs can sit at the same eip with the same
    registers and still differ (a counter in memory, another image)."""
    g = cpu.guest
    view = g.memory.view
    ld = g.lguest_data
    if ld is not None and ld + LD_TIME + 8 <= len(view):
        crc = zlib.crc32(view[ld + LD_TIME + 8:], zlib.crc32(view[:ld + LD_TIME]))
    else:
        crc = zlib.crc32(view)
    return f"{regs_hash(cpu.regs.words)}:{crc:08x}"


def guest_counters(stats: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in sorted(stats.items()) if k.startswith(GUEST_COUNTERS)}


def file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _deliverable(cpu: Any) -> bool:
    """Would maybe_do_interrupt deliver now?  The rule of abi.h's
    lg_irq_deliverable (a running cpu: irq_enabled non-zero, any bit)."""
    g = cpu.guest
    pending = int(cpu.irqs_pending)
    if not pending or g.lguest_data is None:
        return False
    blocked = g.ld_read_u32(LD_BLOCKED_INTERRUPTS)
    enabled = g.ld_read_u32(LD_IRQ_ENABLED)
    pending &= ~(blocked or 0)
    eip = int(cpu.regs.eip)
    if not pending or not enabled or g.noirq_start <= eip < g.noirq_end:
        return False
    irq = (pending & -pending).bit_length() - 1
    return bool(cpu.idt_words[32 + irq, 1] & 0x8000)


def run_through_slices(hooks: Any, budget_end: int, deadline_ns: int, slice_reasons: Any) -> int:
    """Run the guest, going on through the stops the main thread's time
    slices make (a run loop turn there could deliver an irq at a position
    only the wall clock chose); Python still runs between two slices, so
    Ctrl-C is seen.  Returns at any other stop or at the deadline."""
    while True:
        err = int(hooks.resume(budget_end, deadline_ns, -1))
        if err or int(hooks.reason) not in slice_reasons:
            return err
        if deadline_ns and time.monotonic_ns() >= deadline_ns:
            return err


def keep_irqs_in_sight(cpu: Any, hooks: Any, budget_end: int) -> int:
    """The budget end for an entry, so that a pending irq is taken at the
    block start where it becomes deliverable -- a position, so the same in
    the recording and the replay.  The compiled core's hook sees the cpu's
    pending irqs and stops there by itself.  The pure-Python core's hook
    is only poked and stops at the next block start whatever it finds: poke
    it when an irq is deliverable now, and while one is pending but masked
    run one block per entry (the run loop looks again after each)."""
    if hooks.has_native_core or not int(cpu.irqs_pending):
        return budget_end
    if _deliverable(cpu):
        hooks.poke()
        return budget_end
    one = int(hooks.blocks) + 1
    return one if not budget_end else min(budget_end, one)


class RecordingClock(SystemClock):
    """The wall clock of a recorded run: a fire reaches the guest through
    the recorder (queued, applied at a loggable point), not directly."""

    def __init__(self, recorder: Recorder | None) -> None:
        super().__init__()
        self.recorder = recorder

    def arm(self, key: Any, expiry_ns: int, callback: Callable[[], None]) -> None:
        recorder = self.recorder
        assert recorder is not None
        super().arm(key, expiry_ns, lambda: recorder.input("timer", callback))

    def advance_to_next(self) -> bool:
        """The run loop's halted path: the queued inputs are applied here."""
        recorder = self.recorder
        return recorder is not None and recorder.halted_point()


class RecordingVirtualClock(VirtualClock):
    """The virtual clock of a recorded run: a halted guest takes the queued
    inputs before its clock jumps to the next timer."""

    recorder: Recorder | None = None

    def advance_to_next(self) -> bool:
        recorder = self.recorder
        if recorder is not None and recorder.halted_point():
            return True
        return super().advance_to_next()


class ReplayClock:
    """The clock of a replayed wall-clock run: time stands still and a timer
    fires only when the replay says the recording's did (:meth:`fire`)."""

    realtime = False

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns
        self._armed: dict[Any, tuple[int, Callable[[], None]]] = {}
        self._lock = threading.Lock()
        self.replayer: Replayer | None = None

    def now_ns(self) -> int:
        return self._now

    def arm(self, key: Any, expiry_ns: int, callback: Callable[[], None]) -> None:
        with self._lock:
            self._armed[key] = (expiry_ns, callback)

    def cancel(self, key: Any) -> None:
        with self._lock:
            self._armed.pop(key, None)

    def armed(self, key: Any) -> int | None:
        with self._lock:
            entry = self._armed.get(key)
        return None if entry is None else entry[0]

    def fire(self) -> bool:
        """Fire the armed timer (the recording's fire); False if none is armed."""
        with self._lock:
            if not self._armed:
                return False
            key = min(self._armed, key=lambda k: self._armed[k][0])
            expiry, callback = self._armed.pop(key)
            self._now = max(self._now, expiry)
        callback()
        return True

    def advance_to_next(self) -> bool:
        """A halted guest: the inputs recorded here wake it; with none the
        replay has diverged (the recorded guest was woken by one)."""
        replayer = self.replayer
        if replayer is not None and not replayer.halted_point():
            replayer.halted_without_input()
        return True


class ReplayVirtualClock(VirtualClock):
    """The virtual clock of a replayed run: a halted guest takes the inputs
    recorded there before its clock jumps to the next timer."""

    replayer: Replayer | None = None

    def advance_to_next(self) -> bool:
        replayer = self.replayer
        if replayer is not None and replayer.halted_point():
            return True
        return super().advance_to_next()


#: Where a recorded input was applied: just before the guest was entered
#: again after a stop, or on the run loop's halted path.
ENTRY, HALTED = "entry", "halted"


class Recorder:
    """Logs a run's inputs (see the module text); the backend runs each
    entry through :meth:`execute`, the clock's ``advance_to_next`` calls
    :meth:`halted_point`.  Inputs from other threads are only queued: the
    run's thread applies them at those two points, where the guest sits at
    the last stop's position."""

    def __init__(self, cpu: Any, hooks: Any, send_irq: Callable[[int], None], *, host_stop_reasons: Any = (),
                 wall: bool = False) -> None:
        """``host_stop_reasons``: the hooks' reason for a stop at a wall-clock
        time (the deadline, or a time slice); ``wall``: log the timestamps the
        host writes into lguest_data (the virtual clock's are reproducible)."""
        self.cpu = cpu
        self.hooks = hooks
        self._send_irq = send_irq
        self._host_stops = frozenset(host_stop_reasons)
        self._wall = wall
        self._time = b""
        self._lock = threading.Lock()
        self._queue: list[tuple[str, Any]] = []
        self.events: list[list[Any]] = []
        self._stop = (0, int(cpu.regs.eip), regs_hash(cpu.regs.words))  # the last stop's position, registers
        self._checkpoint_every = checkpoint_interval(len(cpu.guest.memory.view))
        self._next_checkpoint = self._checkpoint_every
        #: the synchronous inputs: [blocks, eip, kind, value] in the order the guest took them
        self.syncs: list[list[Any]] = []

    def sync(self, kind: str, value: Any, blocks: int | None = None, eip: int | None = None) -> None:
        """Log an input the guest asked for (run's thread; default position:
        the guest's now -- between two entries, the last stop's)."""
        self.syncs.append([int(self.hooks.blocks) if blocks is None else blocks,
                           int(self.cpu.regs.eip) if eip is None else eip, kind, value])

    def tsc(self, rdtscp: bool, blocks: int, eip: int, host_tsc: int) -> int:
        """The native hook's rdtsc handler: the host's TSC, logged."""
        self.syncs.append([blocks, eip, "rdtscp" if rdtscp else "rdtsc", host_tsc])
        return host_tsc

    def input(self, kind: str, value: Any) -> None:
        """An input from any thread: "irq" (a number) or "timer" (the fire callback)."""
        with self._lock:
            self._queue.append((kind, value))
        self.hooks.request_stop()  # a running guest stops at its next block start
        self.cpu.wake()  # a halted one wakes

    def _read_time(self) -> bytes | None:
        g = self.cpu.guest
        if g.lguest_data is None or g.lguest_data + LD_TIME + 8 > g.memory.size:
            return None
        return g.memory.read(g.lguest_data + LD_TIME, 8)

    def _apply_queue(self, point: str) -> bool:
        """Apply and log the queued inputs, and (before an entry, under the
        wall clock) the timestamp the host wrote into lguest_data if it
        changed -- the guest may read it.  Each is logged with the blocks at
        the last stop and the eip and registers *here*: the run loop may have
        moved the guest since the stop without running a block (an
        interrupt delivered), and an input applied before that delivery and
        one applied after it must not be replayed at the same point."""
        with self._lock:
            queued, self._queue = self._queue, []
        now = self._read_time() if self._wall and point == ENTRY else None
        new_time = now is not None and now != self._time
        if not queued and not new_time:
            return False
        blocks = self._stop[0]
        eip, h = int(self.cpu.regs.eip), regs_hash(self.cpu.regs.words)
        for kind, value in queued:
            if kind == "irq":
                self._send_irq(value)
                self.events.append([blocks, eip, "irq", value, h, point])
            else:
                value()  # the guest's clock event: irq 0 pending
                self.events.append([blocks, eip, "timer", None, h, point])
        if new_time and now is not None:
            self._time = now
            self.events.append([blocks, eip, "time", now.hex(), h, ENTRY])
        return bool(queued)

    def halted_point(self) -> bool:
        return self._apply_queue(HALTED)

    def execute(self, hooks: Any, budget: int, deadline_ns: int) -> int:
        self._apply_queue(ENTRY)
        cpu = self.cpu
        budget_end = keep_irqs_in_sight(cpu, hooks, int(hooks.blocks) + budget if budget else 0)
        err = run_through_slices(hooks, budget_end, deadline_ns, self._host_stops)
        blocks = int(hooks.blocks)
        self._stop = (blocks, int(cpu.regs.eip), regs_hash(cpu.regs.words))
        if blocks >= self._next_checkpoint:  # registers and memory
            self.events.append([blocks, self._stop[1], "checkpoint", None, state_hash(cpu), "stop"])
            self._next_checkpoint = blocks + self._checkpoint_every
        return err

    def end(self, reason: str) -> None:
        """The run ended for the host's reasons (timeout, break-out): where."""
        cpu = self.cpu
        self.events.append([self._stop[0], int(cpu.regs.eip), "end", reason, regs_hash(cpu.regs.words),
                            HALTED if cpu.halted else ENTRY])

    def save(self, path: str, header: dict[str, Any], final: dict[str, Any]) -> None:
        data = {"format": FORMAT, **header, "events": self.events, "sync": self.syncs, "final": final}
        write_json_atomic(path, data, prefix=".lguest-record-")


class Replayer:
    """Feeds a recording's inputs back at their positions (see the module text)."""

    def __init__(self, data: dict[str, Any], cpu: Any, hooks: Any, send_irq: Callable[[int], None],
                 clock: Any, *, timer_reason: int, host_stop_reasons: Any = ()) -> None:
        """``timer_reason``: the hooks' stop reason for a used-up block
        budget; ``host_stop_reasons``: as for :class:`Recorder`."""
        if data.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} recording")
        self.data = data
        self.cpu = cpu
        self.hooks = hooks
        self._send_irq = send_irq
        self.clock = clock
        self.events = list(data["events"])
        self.index = 0  # the next event
        self.diverged: str | None = None
        self.ended: str | None = None
        self._timer_reason = timer_reason
        self._host_stops = frozenset(host_stop_reasons)
        self._stop = (0, int(cpu.regs.eip), regs_hash(cpu.regs.words))
        self._last_miss: tuple[int, int, str] | None = None
        self._time: bytes | None = None  # the recorded lguest_data timestamp now
        self.syncs = list(data.get("sync", []))
        self.sync_index = 0  # the next synchronous input
        clock.replayer = self

    def _name(self, i: int) -> str:
        blocks, eip, kind = self.events[i][:3]
        return f"checkpoint {i + 1} of {len(self.events)} ({kind} at {blocks} blocks, eip {eip:#010x})"

    def _diverge(self, why: str) -> None:
        if self.diverged is None:
            self.diverged = why
            self.cpu.guest.kill(f"replay diverged: {why}")

    def _sync_name(self, i: int) -> str:
        blocks, eip, kind = self.syncs[i][:3]
        return f"{kind} {i + 1} of {len(self.syncs)} (at {blocks} blocks, eip {eip:#010x})"

    def sync(self, kind: str, blocks: int | None = None, eip: int | None = None) -> Any:
        """The recorded value of the input the guest asks for now (see
        :meth:`Recorder.sync`), or None when the replay has diverged -- the
        guest asks elsewhere, for something else, or for more than the
        recording holds (the guest is killed with that message)."""
        blocks = int(self.hooks.blocks) if blocks is None else blocks
        eip = int(self.cpu.regs.eip) if eip is None else eip
        if self.diverged is not None:
            return None
        i = self.sync_index
        if i >= len(self.syncs):
            self._diverge(f"the guest asked for {kind} at {blocks} blocks, eip {eip:#010x}, after the last of "
                          f"the {len(self.syncs)} recorded")
            return None
        rec_blocks, rec_eip, rec_kind, value = self.syncs[i]
        if (rec_blocks, rec_eip, rec_kind) != (blocks, eip, kind):
            self._diverge(f"{self._sync_name(i)} differs: the guest asked for {kind} at {blocks} blocks, "
                          f"eip {eip:#010x}")
            return None
        self.sync_index += 1
        return value

    def tsc(self, rdtscp: bool, blocks: int, eip: int, host_tsc: int) -> int:
        """The native hook's rdtsc handler: the recorded TSC."""
        value = self.sync("rdtscp" if rdtscp else "rdtsc", blocks, eip)
        if value is None:
            self.hooks.request_stop()  # killed: no guest block more
            return host_tsc
        return int(value)

    def halted_without_input(self) -> None:
        where = self._name(self.index) if self.index < len(self.events) else "after the last checkpoint"
        self._diverge(f"the guest halted at {self._stop[0]} blocks, eip {self._stop[1]:#010x} with nothing "
                      f"recorded to wake it (next: {where})")

    def _apply(self, point: str) -> bool:
        """Apply the inputs recorded at the last stop's position for this point."""
        applied = False
        cpu = self.cpu
        here = (self._stop[0], int(cpu.regs.eip))
        while self.index < len(self.events) and self.diverged is None:
            blocks, eip, kind, value, h, where = self.events[self.index]
            if kind == "checkpoint" or (blocks, eip) != here or where != point:
                break
            regs = regs_hash(cpu.regs.words)
            if h != regs:
                self._diverge(f"{self._name(self.index)} differs: registers {regs} instead of {h}")
                break
            self.index += 1
            applied = True
            if kind == "irq":
                self._send_irq(int(value))
            elif kind == "timer":
                if self.clock is None or not hasattr(self.clock, "fire") or not self.clock.fire():
                    self._diverge(f"{self._name(self.index - 1)}: no timer armed to fire")
            elif kind == "time":
                self._time = bytes.fromhex(value)
            elif kind == "end":
                self.ended = str(value)
                self.cpu.break_out = True
        return applied

    def halted_point(self) -> bool:
        return self._apply(HALTED)

    def execute(self, hooks: Any, budget: int, deadline_ns: int) -> int:
        """One entry: the inputs recorded before it, then the guest up to
        the next recorded position at most."""
        self._apply(ENTRY)
        g = self.cpu.guest
        if self._time is not None and g.lguest_data is not None and g.lguest_data + LD_TIME + 8 <= g.memory.size:
            g.memory.write(g.lguest_data + LD_TIME, self._time)  # over whatever this run's clock wrote
        blocks = int(hooks.blocks)
        if self.cpu.break_out or self.diverged is not None:
            hooks.request_stop()  # the recorded run ended here: no guest instruction more
            return int(hooks.resume(0, deadline_ns, -1))
        budget_end = keep_irqs_in_sight(self.cpu, hooks, blocks + budget if budget else 0)
        if self.index < len(self.events):
            target = int(self.events[self.index][0])
            if target < blocks:
                self._diverge(f"{self._name(self.index)} was passed at {blocks} blocks")
                hooks.request_stop()
                return int(hooks.resume(0, deadline_ns, -1))
            budget_end = target if not budget_end else min(budget_end, target)
        err = run_through_slices(hooks, budget_end, deadline_ns, self._host_stops)
        cpu = self.cpu
        self._stop = (int(hooks.blocks), int(cpu.regs.eip), regs_hash(cpu.regs.words))
        self._check(at_block_start=int(hooks.reason) == self._timer_reason)
        return err

    def _check(self, *, at_block_start: bool) -> None:
        """At a stop: pass the checkpoints logged here, and notice a replay
        that is not going where the recording went."""
        blocks, eip, regs = self._stop
        while self.index < len(self.events) and self.diverged is None:
            ev_blocks, ev_eip, kind, _value, ev_h, _where = self.events[self.index]
            if ev_blocks < blocks:
                self._diverge(f"{self._name(self.index)} was passed: at {blocks} blocks, eip {eip:#010x}")
                return
            if ev_blocks > blocks:
                return
            if kind == "checkpoint" and ev_eip == eip:
                here = state_hash(self.cpu)
                if here != ev_h:
                    self._diverge(f"{self._name(self.index)} differs: state {here} instead of {ev_h}")
                    return
            if ev_eip != eip:
                # Not there yet: a trap inside the block (its budget stop
                # comes next), or an input applied after the host moved the
                # guest without running a block (an interrupt delivered at
                # this position: the next entry stops again at once, and the
                # input is applied there).  The same budget stop twice: the
                # guest is not going there.
                if at_block_start and (blocks, eip, regs) == self._last_miss:
                    self._diverge(f"{self._name(self.index)} differs: the guest is at eip {eip:#010x}")
                if at_block_start:
                    self._last_miss = (blocks, eip, regs)
                return
            self._last_miss = None
            if kind == "end" and _where == ENTRY and ev_h == regs:
                # The recorded run ended right at this stop, before its run
                # loop took anything further: end here too.  Left to the
                # next entry, the loop would first deliver an irq that fell
                # due at this stop (a timer whose expiry is the block where
                # the deadline was seen), which the recorded run never did.
                self.index += 1
                self.ended = str(_value)
                self.cpu.break_out = True
                return
            if kind != "checkpoint":
                return  # an input: applied before the next entry (or on the halted path)
            self.index += 1




def load(path: str) -> dict[str, Any]:
    with open(path) as f:
        data: dict[str, Any] = json.load(f)
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} recording")
    return data
