"""Running real programs: a guest kernel for static i386 Linux programs.

``lguest exec -- PROGRAM [ARGS]`` (or :func:`run_program`) boots the guest
kernel in ``kernel/`` on the Unicorn backend; the program runs at ring 3 and
its ``int $0x80`` system calls are direct traps into the guest kernel at
ring 1.  See docs/EXEC.md.
"""

from .build import KernelUnavailable, kernel_path
from .runner import (
    EXIT_CANNOT_RUN,
    EXIT_LGUEST,
    EXIT_NOT_FOUND,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_TIMEOUT,
    ExecResult,
    run_program,
)

__all__ = ["EXIT_CANNOT_RUN", "EXIT_LGUEST", "EXIT_NOT_FOUND", "EXIT_SIGINT", "EXIT_SIGTERM", "EXIT_TIMEOUT",
           "ExecResult", "KernelUnavailable", "kernel_path", "run_program"]
