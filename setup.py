"""Build the compiled core (lguest/_core.pyx) and the native Unicorn hooks
(lguest/_uchook.pyx, which needs no Unicorn headers or library at build time:
it calls libunicorn through function pointers handed over at run time);
everything else is pure Python.

Set LGUEST_SANITIZE=1 to build with AddressSanitizer and UBSan.
"""

import importlib.util
import os
import subprocess
import sys

import numpy  # noqa: F401 - a build requirement; the extension uses no numpy headers
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
            with open(os.path.join(dest, "lguest-kernel.hash"), "w") as f:
                f.write(kernel_build.source_hash())
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"lguest: the guest kernel was not built ({exc}); lguest exec will build it on first use",
                  file=sys.stderr)

extra_compile = ["-O3"]
extra_link: list[str] = []
if os.environ.get("LGUEST_SANITIZE"):
    flags = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]
    extra_compile = flags
    extra_link = ["-fsanitize=address,undefined"]

extensions = [
    Extension(
        "lguest._core",
        ["lguest/_core.pyx"],
        extra_compile_args=extra_compile,
        extra_link_args=extra_link,
    ),
    Extension(
        "lguest._uchook",
        ["lguest/_uchook.pyx"],
        extra_compile_args=extra_compile,
        extra_link_args=extra_link,
    ),
]

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}),
      cmdclass={"build_py": build_py_with_kernel})
