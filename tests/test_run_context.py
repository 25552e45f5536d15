"""The run context: the host's per-cpu state lives in one explicit object,
not in attributes hung on the cpu (both cores).

Before: the run loop set ``cpu.backend``, ``cpu.stats`` and ``cpu.host_idt``
(the compiled classes declared ``cdef dict __dict__`` for it), the handlers
read them back with ``getattr``, and both cores' ``Cpu.run`` imported the
run loop above them.
"""

from __future__ import annotations

import pytest
from lgtest import LD, set_regs

import lguest
from lguest.host.hypercalls import HcallArgs, do_hcall
from lguest.host.launcher import Launcher
from lguest.host.run import GuestKilled, RunContext, ScriptedBackend, run_guest
from lguest.host.stats import Stats

LHCALL_TS, LHCALL_NEW_PGTABLE = 8, 4


@pytest.mark.parametrize("name", ["backend", "stats", "host_idt", "anything"])
def test_cpu_and_guest_take_no_attributes_of_their_own(cpu, guest, name):
    with pytest.raises(AttributeError):
        setattr(cpu, name, object())
    with pytest.raises(AttributeError):
        setattr(guest, name, object())
    assert not hasattr(cpu, "__dict__") or lguest.core_of(cpu) is lguest.fallback


def test_the_compiled_classes_have_no_dict():
    core = lguest.load_core("cython")
    for cls in (core.Guest, core.Cpu, core.Regs):
        assert "__dict__" not in dir(cls), cls


def test_cores_have_no_run_method(core):
    # The cores sit below the run loop: running a cpu is lguest.host.run's.
    assert not hasattr(core.Cpu, "run")


def test_core_of_finds_the_cpus_own_core(cpu, guest, core):
    assert lguest.core_of(cpu) is core and lguest.core_of(guest) is core
    assert lguest.core_of(cpu.regs) is core
    with pytest.raises(TypeError):
        lguest.core_of(object())


def test_handlers_use_the_context_they_are_given(cpu, guest):
    guest.lguest_data = LD
    backend = ScriptedBackend([])
    ctx = RunContext(cpu, backend, stats=Stats())
    do_hcall(cpu, HcallArgs(LHCALL_NEW_PGTABLE, 0x3000), ctx)
    do_hcall(cpu, HcallArgs(LHCALL_TS, 1), ctx)
    assert backend.calls == [("new_pgtable", 0x3000)]
    assert dict(ctx.stats.hypercalls) == {LHCALL_NEW_PGTABLE: 1, LHCALL_TS: 1}
    do_hcall(cpu, HcallArgs(LHCALL_TS, 0))  # no context: no backend, nothing counted
    assert dict(ctx.stats.hypercalls) == {LHCALL_NEW_PGTABLE: 1, LHCALL_TS: 1}


def test_a_launcher_keeps_one_context_across_runs(cpu, guest):
    guest.lguest_data = LD
    guest.memory.write(LD + 20, b"\xff" * 64)  # an empty async ring
    steps = [dict(trapnum=31, eax=17, ebx=0x2000), dict(trapnum=31, eax=17, ebx=0x2100)]
    seen: list[bytes] = []
    launcher = Launcher(cpu, ScriptedBackend(steps), devices={0x2000: lambda a: seen.append(b"a"),
                                                               0x2100: lambda a: seen.append(b"b")})
    result = launcher.run(timeout=5)
    assert result.reason == "dead" and seen == [b"a", b"b"]
    assert launcher.context.host_idt is not None and launcher.stats is launcher.context.stats
    assert launcher.stats.hypercalls[17] == 2 and launcher.stats.entries == 3
    with pytest.raises(ValueError, match="another backend"):
        run_guest(cpu, ScriptedBackend([]), context=launcher.context)


def test_the_first_entry_into_a_fresh_context_tells_the_backend_everything(cpu, guest):
    from lguest.constants import CHANGED_ALL

    set_regs(cpu, eip=0x5000)
    cpu.changed = 0
    backend = ScriptedBackend([dict(trapnum=32)])
    ctx = RunContext(cpu, backend)
    assert ctx.host_idt is None and cpu.changed == 0  # building a context changes nothing
    with pytest.raises(GuestKilled):
        run_guest(cpu, backend, context=ctx)
    assert backend.entries[0][2] == CHANGED_ALL and backend.entries[1][2] == 0
