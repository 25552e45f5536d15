"""Run one program under Qiling (the peer benchmark): qiling_run.py ROOTFS PROGRAM [ARGS...].

Run with the Python of a venv holding qiling==1.4.6 (pip install 'lguest[bench-qiling]'
there, or QILING_PYTHON=...); the program's stdout/stderr are Qiling's, passed through.
The working directory inside the rootfs is /, as under lguest exec.
"""

from __future__ import annotations

import sys


def main() -> int:
    from qiling import Qiling
    from qiling.const import QL_VERBOSE

    rootfs, program, *args = sys.argv[1:]
    ql = Qiling([rootfs + program, *args], rootfs, verbose=QL_VERBOSE.DISABLED)
    ql.run()
    return int(getattr(ql.os, "exit_code", 0) or 0)


if __name__ == "__main__":
    sys.exit(main())
