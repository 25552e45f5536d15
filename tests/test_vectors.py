"""UsedVectors / Host / VectorBusy: init_interrupts, free_interrupts,
could_be_syscall, direct_trap (seed lines 199-242, 282-295; ABI.md section 1)."""
import errno
import logging

import pytest

import lguest

DEFAULT_USED = set(range(0x21)) | {0x80, 0xEF} | set(range(0xF0, 0xF8)) | set(range(0xFA, 0x100))
DEFAULT_PERCPU = set(range(0x30, 0x40))


def private(used=(), percpu=()):
    return lguest.UsedVectors(used=used, percpu=percpu)


# --- the registry -----------------------------------------------------------

def test_default_registry_is_the_host_kernels():
    d = lguest.UsedVectors.default()
    assert d is lguest.UsedVectors.default()
    assert {v for v in range(256) if v in d} == DEFAULT_USED
    assert {v for v in range(256) if d.percpu(v)} == DEFAULT_PERCPU


def test_0x20_is_the_irq_move_cleanup_vector():
    # On the SMP + local APIC host the default models, boot marks 0x20 used
    # for IRQ-move cleanup: a syscall_vector of 0x20 cannot be reserved.
    d = lguest.UsedVectors.default()
    assert d.owner(0x20) == "IRQ move cleanup"
    h = lguest.Host(syscall_vector=0x20)
    with pytest.raises(lguest.VectorBusy) as e:
        h.init_interrupts()
    assert (e.value.errno, str(e.value), e.value.owner) == (errno.EBUSY, "couldn't reserve syscall 32",
                                                            "IRQ move cleanup")
    assert 0x20 in d  # still the host's


def test_host_defaults_to_process_wide_registry():
    h = lguest.Host()
    assert h.used_vectors is lguest.UsedVectors.default()
    assert h.syscall_vector == 0x80


def test_private_registry_holds_exactly_what_it_was_given():
    r = private(used=[1, 0x40, 0xFF], percpu=[0x31])
    assert [v for v in range(256) if v in r] == [1, 0x40, 0xFF]
    assert [v for v in range(256) if r.percpu(v)] == [0x31]
    assert 0x31 not in r
    r.reserve(0x41)
    assert 0x41 in r
    with pytest.raises(lguest.VectorBusy) as ei:
        r.reserve(0x41)
    assert ei.value.errno == errno.EBUSY
    r.release(0x41)
    assert 0x41 not in r
    r.reserve(0x41)
    assert 0x41 in r


@pytest.mark.parametrize("bad", [-1, 256, 1000])
def test_vectors_out_of_range_are_value_errors(bad):
    with pytest.raises(ValueError):
        lguest.UsedVectors(used=[bad])
    with pytest.raises(ValueError):
        lguest.UsedVectors(percpu=[bad])
    r = private()
    with pytest.raises(ValueError):
        r.reserve(bad)
    with pytest.raises(ValueError):
        r.release(bad)
    with pytest.raises(ValueError):
        lguest.Host(syscall_vector=bad, used_vectors=r)
    assert [v for v in range(256) if v in r] == []


def test_vector_busy_is_oserror_ebusy():
    assert issubclass(lguest.VectorBusy, OSError)


# --- init_interrupts / free_interrupts --------------------------------------

def test_plan9_vector_reserves_cleanly_and_frees():
    r = private(used=set(range(32)) | {0x80}, percpu=range(0x30, 0x40))
    h = lguest.Host(syscall_vector=0x40, used_vectors=r)
    assert 0x40 not in r
    h.init_interrupts()
    assert 0x40 in r
    assert h.syscall_vector == 0x40
    h.free_interrupts()
    assert 0x40 not in r
    assert [v for v in range(256) if v in r] == sorted(set(range(32)) | {0x80})


@pytest.mark.parametrize("vector,why", [(0x30, "percpu"), (0x3F, "percpu"), (0x05, "used"), (0x1F, "used"),
                                        (0xEF, "used")])
def test_busy_vector_raises_and_logs(caplog, vector, why):
    r = private(used=set(range(32)) | {0xEF}, percpu=range(0x30, 0x40))
    h = lguest.Host(syscall_vector=vector, used_vectors=r)
    before = [v for v in range(256) if v in r]
    with caplog.at_level(logging.ERROR, logger="lguest"):
        with pytest.raises(lguest.VectorBusy) as ei:
            h.init_interrupts()
    e = ei.value
    assert isinstance(e, OSError)
    assert e.errno == errno.EBUSY == 16
    assert f"couldn't reserve syscall {vector}" in str(e)
    msgs = [rec.getMessage() for rec in caplog.records
            if rec.name == "lguest" and rec.levelno == logging.ERROR]
    assert [m.rstrip("\n") for m in msgs] == [f"lg: couldn't reserve syscall {vector}"]
    # nothing reserved, and a free after a failed init releases nothing
    h.free_interrupts()
    assert [v for v in range(256) if v in r] == before


def test_busy_message_for_64(caplog):
    r = private(used=[0x40])
    h = lguest.Host(syscall_vector=64, used_vectors=r)
    with caplog.at_level(logging.ERROR, logger="lguest"):
        with pytest.raises(lguest.VectorBusy) as ei:
            h.init_interrupts()
    assert "couldn't reserve syscall 64" in str(ei.value)
    assert any(rec.getMessage().rstrip("\n") == "lg: couldn't reserve syscall 64"
               and rec.levelno == logging.ERROR and rec.name == "lguest" for rec in caplog.records)
    assert 0x40 in r


def test_syscall_0x80_never_reserves_nor_frees():
    # not in the registry: init does not add it
    r = private(used=range(32))
    h = lguest.Host(syscall_vector=0x80, used_vectors=r)
    h.init_interrupts()
    assert 0x80 not in r
    h.free_interrupts()
    # already in the registry (trap_init's): init does not fail, free keeps it
    r2 = private(used=[0x80])
    h2 = lguest.Host(syscall_vector=0x80, used_vectors=r2)
    h2.init_interrupts()
    h2.init_interrupts()  # no reservation, so no EBUSY either
    h2.free_interrupts()
    assert 0x80 in r2


def test_init_twice_is_busy():
    r = private()
    h = lguest.Host(syscall_vector=0x40, used_vectors=r)
    h.init_interrupts()
    with pytest.raises(lguest.VectorBusy) as ei:
        h.init_interrupts()
    assert ei.value.errno == errno.EBUSY
    assert 0x40 in r
    h.free_interrupts()
    assert 0x40 not in r


def test_free_is_idempotent_and_releases_only_own_reservation():
    r = private()
    a = lguest.Host(syscall_vector=0x40, used_vectors=r)
    b = lguest.Host(syscall_vector=0x40, used_vectors=r)
    a.init_interrupts()
    with pytest.raises(lguest.VectorBusy):
        b.init_interrupts()
    b.free_interrupts()          # b never reserved it
    assert 0x40 in r
    a.free_interrupts()
    assert 0x40 not in r
    a.free_interrupts()          # idempotent
    assert 0x40 not in r
    r.reserve(0x40)              # someone else takes it now
    a.free_interrupts()          # a must not release it
    assert 0x40 in r
    b.free_interrupts()
    assert 0x40 in r


def test_context_manager_reserves_and_releases():
    r = private()
    with lguest.Host(syscall_vector=0x41, used_vectors=r) as h:
        assert isinstance(h, lguest.Host)
        assert 0x41 in r
    assert 0x41 not in r
    r.reserve(0x42)
    with pytest.raises(lguest.VectorBusy):
        with lguest.Host(syscall_vector=0x42, used_vectors=r):
            pass  # pragma: no cover
    assert 0x42 in r


def test_syscall_vector_read_only_after_init():
    r = private()
    h = lguest.Host(syscall_vector=0x40, used_vectors=r)
    h.init_interrupts()
    with pytest.raises(Exception):  # noqa: B017 - the exception type is not specified
        h.syscall_vector = 0x41
    assert h.syscall_vector == 0x40
    h.free_interrupts()


# --- could_be_syscall / direct_trap ------------------------------------------

def c_could_be_syscall(num, syscall_vector):
    return num == 0x80 or num == syscall_vector


def c_direct_trap(num, syscall_vector):
    if num >= 32 and not c_could_be_syscall(num, syscall_vector):
        return False
    return num not in (14, 13, 7, 6, 31)


@pytest.mark.parametrize("sv", [0x80, 0x40, 0x05, 0x1F, 0x06, 0x00, 0xFF, 0x20])
def test_could_be_syscall_and_direct_trap_all_vectors(sv):
    h = lguest.Host(syscall_vector=sv, used_vectors=private())
    for num in range(256):
        cbs = h.could_be_syscall(num)
        dt = h.direct_trap(num)
        assert type(cbs) is bool and type(dt) is bool
        assert cbs == c_could_be_syscall(num, sv), num
        assert dt == c_direct_trap(num, sv), num


def test_direct_trap_explicit_sets():
    h = lguest.Host(syscall_vector=0x80, used_vectors=private())
    assert [n for n in range(256) if h.direct_trap(n)] == [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 15, 16, 17, 18,
                                                           19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 0x80]
    h40 = lguest.Host(syscall_vector=0x40, used_vectors=private())
    assert [n for n in range(32, 256) if h40.direct_trap(n)] == [0x40, 0x80]
    assert [n for n in range(256) if h40.could_be_syscall(n)] == [0x40, 0x80]


# --- check_syscall_vector (seed 212-220) -------------------------------------

def test_check_syscall_vector(core):
    for sv, written, expect in [(0x80, 0x80, True), (0x80, 0x40, False), (0x40, 0x40, True),
                                (0x40, 0x80, True), (0x40, 0x41, False), (0x80, 0, False)]:
        r = private()
        h = lguest.Host(syscall_vector=sv, used_vectors=r)
        with lguest.GuestMemory(4 * 4096) as m:
            g = h.new_guest(m, page_offset=0, clock=lguest.VirtualClock(), core=core)
            assert g.check_syscall_vector() is False          # lguest_data unset: get_user fails
            g.lguest_data = 0x100
            m.write_u32(0x100 + 1132, written)
            assert g.check_syscall_vector() is expect, (sv, written)
            # syscall_vec past the end of memory: the access fails -> False
            g.lguest_data = 4 * 4096 - 1135
            m.write_u32(4 * 4096 - 4, written)
            assert g.check_syscall_vector() is False
            g.lguest_data = 4 * 4096 - 1136
            assert g.check_syscall_vector() is expect
            del g
