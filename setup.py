"""Build the compiled core (lguest/_core.pyx) and the native Unicorn hooks
(lguest/_uchook.pyx, which needs no Unicorn headers or library at build time:
it calls libunicorn through function pointers handed over at run time);
everything else is pure Python.

Set LGUEST_SANITIZE=1 to build with AddressSanitizer and UBSan (with debug
info).  Otherwise the extensions are linked without debug info (-Wl,--strip-debug:
the wheel is a tenth of the size); LGUEST_KEEP_DEBUG=1 keeps it for gdb/perf.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

extra_compile = ["-O3"]
extra_link: list[str] = [] if os.environ.get("LGUEST_KEEP_DEBUG") else ["-Wl,--strip-debug"]
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

# embedsignature: the compiled classes show real signatures (help(), pdoc).
setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3", "embedsignature": True}))
