"""The ``lguest`` command, run as a user would: in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lguest.cli import parse_int, parse_size, parse_vector


def lguest(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "LGUEST_SYSCALL_VECTOR"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "lguest", *args], capture_output=True, text=True,
                          env=full_env, timeout=60)


def test_help_documents_every_option() -> None:
    top = lguest("--help")
    assert top.returncode == 0
    assert "vectors" in top.stdout and "run" in top.stdout
    run = lguest("run", "--help")
    assert run.returncode == 0
    for option in ("--syscall-vector", "--memory", "--page-offset", "--timeout", "--stats", "--trace", "IMAGE"):
        assert option in run.stdout
    vec = lguest("vectors", "--help")
    assert vec.returncode == 0 and "--syscall-vector" in vec.stdout


def test_vectors_table_lists_host_owners() -> None:
    out = lguest("vectors")
    assert out.returncode == 0
    assert "  0x80  Linux system call" in out.stdout
    assert "  0xef  local APIC timer" in out.stdout
    assert "  0x30  per-CPU legacy IRQ 0" in out.stdout
    assert "syscall vector 0x80: Linux's own, always available" in out.stdout


@pytest.mark.parametrize("spelling", ["0x40", "64", "0X40"])
def test_free_vector_in_hex_or_decimal(spelling: str) -> None:
    out = lguest("vectors", "--syscall-vector", spelling)
    assert out.returncode == 0, out.stderr
    assert "syscall vector 0x40 (64): free, can be reserved" in out.stdout


def test_busy_vector_exits_nonzero_with_one_clear_line() -> None:
    out = lguest("vectors", "--syscall-vector", "0x31")
    assert out.returncode == 1
    assert out.stdout.strip().splitlines()[-1] == (
        "lguest: couldn't reserve syscall 49: vector in use by per-CPU legacy IRQ 1")
    # The library's own error log goes to the "lguest" logger, not the terminal.
    assert out.stderr == ""


def test_environment_sets_the_default_vector() -> None:
    out = lguest("vectors", env={"LGUEST_SYSCALL_VECTOR": "0xfd"})
    assert out.returncode == 1
    assert "lguest: couldn't reserve syscall 253: vector in use by reschedule IPI" in out.stdout


def test_0x20_is_busy_with_its_owner_named() -> None:
    out = lguest("vectors", "--syscall-vector", "0x20")
    assert out.returncode == 1
    assert out.stdout.strip().splitlines()[-1] == (
        "lguest: couldn't reserve syscall 32: vector in use by IRQ move cleanup")
    table = lguest("vectors")
    assert "  0x20  IRQ move cleanup" in table.stdout.splitlines()


@pytest.mark.parametrize("bad", ["0x100", "-1", "banana", "1.5"])
def test_invalid_vector_is_a_usage_error(bad: str) -> None:
    out = lguest("vectors", "--syscall-vector", bad)
    assert out.returncode == 2
    assert "--syscall-vector" in out.stderr


def test_run_with_missing_image_is_a_clear_error() -> None:
    out = lguest("run", "/nonexistent/guest.elf")
    assert out.returncode == 2
    assert out.stderr.startswith("lguest: ")


def test_run_without_the_unicorn_extra(tmp_path) -> None:
    # A stub 'unicorn' package that fails to import stands in for a missing extra.
    fake = tmp_path / "unicorn"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('No module named unicorn')\n")
    image = tmp_path / "guest.elf"
    image.write_bytes(b"\x7fELF")
    env = {"PYTHONPATH": str(tmp_path)}
    out = lguest("run", str(image), env=env)
    assert out.returncode == 2
    assert "pip install 'lguest[unicorn]'" in out.stderr


def test_parsers() -> None:
    assert parse_int("0x1f") == 31 and parse_int("31") == 31
    assert parse_vector("0xff") == 255
    assert parse_size("16M") == 16 << 20 and parse_size("0x10000") == 0x10000 and parse_size("64k") == 65536
