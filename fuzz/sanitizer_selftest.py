#!/usr/bin/env python3
"""Prove that the sanitizer build really catches bugs in compiled extension code.

Run it through fuzz/run_sanitized.sh (either flavour).  It

1. checks that the installed lguest._core is instrumented (nm: __asan_*,
   __ubsan_handle_*, and for the clang flavour __sanitizer_cov_* symbols)
   and is the venv's copy, not the source tree's;
2. compiles a tiny Cython extension with exactly the flags setup.py uses
   for LGUEST_SANITIZE=1 (same compiler as the venv's lguest build) and,
   each in a child process under the same runtime environment, makes it
   a) write one byte past a 16-byte malloc block  -> ASan heap-buffer-overflow
                                                      (gcc: UBSan object-size fires first)
   b) shift a 32-bit value by 40                   -> UBSan shift-exponent
   c) write one byte past the end of a GuestMemory(guard_pages=True)
                                                    -> SEGV on the guard page
   d) the same calls in bounds                      -> no report (control);
3. exits non-zero unless every expectation holds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap

FLAVOUR = os.environ.get("LGUEST_SAN_CC", "clang")
SAN_FLAGS = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]  # = setup.py

PYX = textwrap.dedent("""
    from libc.stdlib cimport malloc, free

    def heap_write(int i):
        cdef char *p = <char *>malloc(16)
        p[i] = 1
        free(p)

    def shift(int s):
        cdef unsigned int one = 1
        return one << s

    def poke(size_t address):
        (<char *>address)[0] = 1
""")

SETUP = textwrap.dedent("""
    from setuptools import Extension, setup
    from Cython.Build import cythonize
    flags = {flags!r}
    setup(name="oob", ext_modules=cythonize([Extension("oob", ["oob.pyx"], extra_compile_args=flags,
          extra_link_args=["-fsanitize=address,undefined"])], compiler_directives={{"language_level": "3"}}))
""")


def build(tmp: str) -> None:
    with open(os.path.join(tmp, "oob.pyx"), "w") as f:
        f.write(PYX)
    with open(os.path.join(tmp, "setup.py"), "w") as f:
        f.write(SETUP.format(flags=SAN_FLAGS))
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "PYTHONMALLOC", "PYTHONSAFEPATH")}
    if FLAVOUR == "clang":
        env.update(CC="clang", LDSHARED="clang -shared", CFLAGS="-fsanitize=fuzzer-no-link")
    else:
        env.update(CC="gcc")
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=tmp, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def child(tmp: str, code: str) -> tuple[int, str]:
    prog = f"import sys; sys.path.insert(0, {tmp!r}); import oob\n{code}"
    p = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=120)
    return p.returncode, p.stderr


def main() -> int:
    ok = True
    import lguest._core as core

    so = core.__file__
    print(f"lguest._core: {so}")
    if "site-packages" not in so:
        print("FAIL: not the sanitizer venv's copy")
        ok = False
    nm = subprocess.run(["nm", "-D", so], capture_output=True, text=True, check=True).stdout
    counts = {pfx: sum(1 for line in nm.splitlines() if pfx in line)
              for pfx in ("__asan_", "__ubsan_handle_", "__sanitizer_cov_")}
    print(f"instrumentation symbols in _core: {counts}")
    need_cov = FLAVOUR == "clang"
    if not counts["__asan_"] or not counts["__ubsan_handle_"] or (need_cov and not counts["__sanitizer_cov_"]):
        print("FAIL: _core is not instrumented")
        ok = False
    print(f"LD_PRELOAD={os.environ.get('LD_PRELOAD')}")

    with tempfile.TemporaryDirectory() as tmp:
        build(tmp)
        cases = [
            # gcc's -fsanitize=object-size (part of undefined) sees this one first
            ("heap overflow", "oob.heap_write(16)", ("AddressSanitizer: heap-buffer-overflow",
                                                     "with insufficient space for an object")),
            ("shift UB", "oob.shift(40)", "runtime error: shift exponent 40"),
            ("guard page", "from lguest import GuestMemory\nm = GuestMemory(8192, guard_pages=True)\n"
                           "oob.poke(m.address + m.size)", "AddressSanitizer: SEGV"),
            ("control", "oob.heap_write(15); oob.shift(31)\nfrom lguest import GuestMemory\n"
                        "m = GuestMemory(8192, guard_pages=True); oob.poke(m.address + m.size - 1)", None),
        ]
        for name, code, expect in cases:
            rc, err = child(tmp, code)
            if expect is None:
                good = rc == 0 and "Sanitizer" not in err and "runtime error" not in err
            else:
                good = rc != 0 and any(e in err for e in ((expect,) if isinstance(expect, str) else expect))
            ok &= good
            first = next((line for line in err.splitlines() if "ERROR" in line or "runtime error" in line), "")
            print(f"{'ok  ' if good else 'FAIL'} {name:14s} exit={rc} {first.strip()[:110]}")
    print("sanitizer self-test", "PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
