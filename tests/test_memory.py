"""GuestMemory: the anonymous mmap holding guest-physical RAM (API.md)."""
import ctypes
import mmap

import pytest

import lguest

PAGE = 4096


@pytest.mark.parametrize("size", [1, 100, 4095, 4097, 8191, 3 * 4096 + 1])
def test_size_must_be_page_multiple(size):
    with pytest.raises(ValueError):
        lguest.GuestMemory(size)


@pytest.mark.parametrize("pages", [1, 2, 16])
def test_zero_filled_and_size(pages):
    with lguest.GuestMemory(pages * PAGE) as m:
        assert m.size == pages * PAGE
        assert m.read(0, m.size) == bytes(pages * PAGE)
        assert m.read_u32(m.size - 4) == 0


def test_address_is_host_memory():
    with lguest.GuestMemory(2 * PAGE) as m:
        assert isinstance(m.address, int) and m.address != 0
        m.write(0x10, b"lguest!")
        assert ctypes.string_at(m.address + 0x10, 7) == b"lguest!"
        m.write_u32(PAGE, 0xDEADBEEF)
        assert ctypes.string_at(m.address + PAGE, 4) == b"\xef\xbe\xad\xde"
        # and the other way: write through ctypes, read through the accessor
        ctypes.memmove(m.address + 2 * PAGE - 4, b"\x01\x02\x03\x04", 4)
        assert m.read_u32(2 * PAGE - 4) == 0x04030201
        assert m.read(2 * PAGE - 4, 4) == b"\x01\x02\x03\x04"


def test_little_endian_accessors():
    with lguest.GuestMemory(PAGE) as m:
        m.write_u32(8, 0x11223344)
        assert m.read(8, 4) == b"\x44\x33\x22\x11"
        m.write(12, b"\x78\x56\x34\x12")
        assert m.read_u32(12) == 0x12345678
        m.write_u32(16, 0xFFFFFFFF)
        assert m.read_u32(16) == 0xFFFFFFFF
        m.write_u32(16, 0)
        assert m.read(8, 12) == b"\x44\x33\x22\x11\x78\x56\x34\x12\x00\x00\x00\x00"
        # unaligned u32 is fine for the host's own accessors
        m.write_u32(1, 0xAABBCCDD)
        assert m.read(0, 6) == b"\x00\xdd\xcc\xbb\xaa\x00"
        assert m.read_u32(1) == 0xAABBCCDD


def test_last_bytes_reachable_by_host_accessors():
    # The host accessors are not lguest_address_ok: the last word is fine.
    with lguest.GuestMemory(PAGE) as m:
        m.write_u32(PAGE - 4, 0xCAFEF00D)
        assert m.read_u32(PAGE - 4) == 0xCAFEF00D
        m.write(PAGE - 1, b"\x7f")
        assert m.read(PAGE - 1, 1) == b"\x7f"
        assert m.read(PAGE, 0) == b""


@pytest.mark.parametrize(
    "op",
    [
        lambda m: m.read(PAGE - 3, 4),
        lambda m: m.read(PAGE, 1),
        lambda m: m.read(-1, 1),
        lambda m: m.write(PAGE - 1, b"ab"),
        lambda m: m.write(PAGE, b"a"),
        lambda m: m.write(-4, b"abcd"),
        lambda m: m.read_u32(PAGE - 2),
        lambda m: m.read_u32(PAGE),
        lambda m: m.write_u32(PAGE - 3, 1),
        lambda m: m.write_u32(1 << 32, 1),
    ],
)
def test_out_of_range_is_index_error(op):
    with lguest.GuestMemory(PAGE) as m:
        m.write_u32(PAGE - 4, 0x01020304)
        with pytest.raises(IndexError):
            op(m)
        # a refused write changed nothing
        assert m.read(PAGE - 8, 8) == b"\x00\x00\x00\x00\x04\x03\x02\x01"


def test_buffer_protocol():
    with lguest.GuestMemory(2 * PAGE) as m:
        mv = memoryview(m)
        try:
            assert mv.nbytes == 2 * PAGE
            assert not mv.readonly
            mv[5] = 7
            assert m.read(5, 1) == b"\x07"
            m.write(100, b"xyz")
            assert bytes(mv[100:103]) == b"xyz"
        finally:
            mv.release()


def test_from_mmap_shares_storage():
    mm = mmap.mmap(-1, 2 * PAGE)
    mm[0:4] = b"abcd"
    m = lguest.GuestMemory.from_mmap(mm)
    assert m.size == 2 * PAGE
    assert m.read(0, 4) == b"abcd"
    m.write(4, b"x")
    assert mm[4] == ord("x")
    m.write_u32(PAGE, 0x01020304)
    assert mm[PAGE:PAGE + 4] == b"\x04\x03\x02\x01"
    assert ctypes.string_at(m.address, 5) == b"abcdx"
    m.close()


def test_close_and_context_manager():
    m = lguest.GuestMemory(PAGE)
    with m as entered:
        assert entered is m
        m.write(0, b"q")
    with pytest.raises(ValueError):
        m.read(0, 1)
    m.close()  # closing twice is harmless
    m2 = lguest.GuestMemory(PAGE)
    m2.close()
    with pytest.raises(ValueError):
        m2.write_u32(0, 1)
