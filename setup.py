"""Build the compiled modules; everything else is pure Python.

* ``lguest._core`` -- the seed functions over raw guest memory, their
  Python face and the native API (``lguest/_core.pyx``);
* ``lguest._clock`` -- the native timer wheel and ``NativeClock``;
* ``lguest._memory`` -- the buffer exporter of ``GuestMemory``;
* ``lguest.unicorn._uchook`` -- the native Unicorn hooks (no Unicorn headers or
  library at build time: it calls libunicorn through function pointers
  handed over at run time).

Their C lives in headers beside the ``.pyx`` files and in
``lguest/include/lguest/abi.h`` (the facts shared by C, Cython and Python);
each extension lists the headers it includes in ``depends`` so an edit
rebuilds it.

Set LGUEST_SANITIZE=1 to build with AddressSanitizer and UBSan (with debug
info).  Otherwise the extensions are linked without debug info (-Wl,--strip-debug:
the wheel is a tenth of the size); LGUEST_KEEP_DEBUG=1 keeps it for gdb/perf.
"""

import importlib.util
import os
import subprocess
import sys
from glob import glob
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_py import build_py


class build_py_with_kernel(build_py):
    """Also build the lguest exec guest kernel (lguest/guestos/kernel, C for
    i386) into the package.  Where gcc cannot target i386 the package still
    installs; `lguest exec` then builds it on first use or says how to."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install builds it into a cache on first use
        dest = os.path.join(self.build_lib, "lguest", "guestos")
        src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lguest", "guestos", "kernel")
        try:
            subprocess.run(["make", "-s", "-C", src, f"O={os.path.abspath(dest)}"], check=True, capture_output=True)
            # lguest/guestos/build.py alone (it imports nothing of the package)
            spec = importlib.util.spec_from_file_location("_lguest_kernel_build", os.path.join(src, "..", "build.py"))
            kernel_build = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(kernel_build)
            # The stamp hashes the sources as shipped beside the kernel (a build
            # from the sdist may leave some out), so the installed package's
            # own check finds them equal.
            kernel_build.SOURCES = Path(dest) / "kernel"
            with open(os.path.join(dest, "lguest-kernel.hash"), "w") as f:
                f.write(kernel_build.source_hash())
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"lguest: the guest kernel was not built ({exc}); lguest exec will build it on first use",
                  file=sys.stderr)

extra_compile = ["-O3"]
extra_link: list[str] = [] if os.environ.get("LGUEST_KEEP_DEBUG") else ["-Wl,--strip-debug"]
if os.environ.get("LGUEST_SANITIZE"):
    flags = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]
    extra_compile = flags
    extra_link = ["-fsanitize=address,undefined"]

# Every hand-written header and declaration file: a change to any rebuilds
# the extensions (they are few and small; precise lists would drift).
HEADERS = sorted(glob("lguest/**/*.h", recursive=True) + glob("lguest/**/*.pxd", recursive=True))


def extension(name: str) -> Extension:
    """``name``: the module's dotted path under lguest (e.g. "unicorn._uchook")."""
    return Extension(
        f"lguest.{name}",
        [f"lguest/{name.replace('.', '/')}.pyx"],
        include_dirs=["lguest/include", "lguest"],
        depends=HEADERS,
        extra_compile_args=extra_compile,
        extra_link_args=extra_link,
    )


extensions = [extension(name) for name in ("_clock", "_memory", "_regs", "_core", "unicorn._uchook")]

# embedsignature: the compiled classes show real signatures (help(), pdoc).
setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3", "embedsignature": True}),
      cmdclass={"build_py": build_py_with_kernel})
