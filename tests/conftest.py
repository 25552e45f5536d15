"""Shared fixtures: every core test runs once per core.

Every expected value in these tests is derived by hand from the seed
(interrupts_and_traps.c) and ABI.md / API.md, never from the implementation.
"""
import os

import pytest
from hypothesis import HealthCheck, settings
from lgtest import (
    LD_BLOCKED,
    LD_IRQ_ENABLED,
    LD_SYSCALL_VEC,
    MEM_SIZE,
    load_core_or_fail,
    prepare,
    pure_python_only,
    set_regs,
)

import lguest

# Hypothesis profiles: "ci" (default) and "long"; pick with HYPOTHESIS_PROFILE.
_common = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile("ci", max_examples=300, **_common)
settings.register_profile("long", max_examples=20000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(params=["python", "cython"])
def core(request):
    """The core module under test: lguest.fallback or lguest._core."""
    if request.param == "cython" and pure_python_only():
        pytest.skip("LGUEST_PURE_PYTHON=1: the compiled core is not tested")
    mod = load_core_or_fail(request.param)
    assert mod.NAME == request.param
    return mod


@pytest.fixture
def clock():
    return lguest.VirtualClock()


@pytest.fixture
def host():
    # private registry: tests never touch the process-wide one
    return lguest.Host(used_vectors=lguest.UsedVectors(used=range(32)))


@pytest.fixture
def mem():
    m = lguest.GuestMemory(MEM_SIZE)
    yield m
    m.close()


@pytest.fixture
def guest(host, mem, clock, core):
    return host.new_guest(mem, page_offset=0, clock=clock, core=core)


@pytest.fixture
def cpu(guest):
    return guest.new_cpu()


@pytest.fixture
def kcpu(cpu, mem):
    """The cpu of a guest kernel ready to run (lgtest.prepare)."""
    return prepare(cpu, mem)


@pytest.fixture
def set_ld(guest):
    """set_ld(gpa, irq_enabled=0x200, blocked=0, syscall_vec=None):
    register lguest_data at guest-physical `gpa` and write its fields."""
    def _set(gpa, irq_enabled=0x200, blocked=0, syscall_vec=None):
        guest.lguest_data = gpa
        guest.memory.write_u32(gpa + LD_IRQ_ENABLED, irq_enabled)
        guest.memory.write_u32(gpa + LD_BLOCKED, blocked)
        if syscall_vec is not None:
            guest.memory.write_u32(gpa + LD_SYSCALL_VEC, syscall_vec)
        return gpa
    return _set


@pytest.fixture
def kernel_regs(cpu):
    """Guest kernel state as lguest_arch_setup_regs leaves it (ss = 0x69:
    same-privilege delivery), with recognisable values."""
    set_regs(cpu, eax=0x11, ebx=0x22, ecx=0x33, edx=0x44, esi=0x55, edi=0x66,
             ebp=0x77, gs=0, fs=0, ds=0x69, es=0x69, trapnum=0, errcode=0xE4E4,
             eip=0xC0101234, cs=0x61, eflags=0x202, esp=0x3000, ss=0x69)
    return cpu
