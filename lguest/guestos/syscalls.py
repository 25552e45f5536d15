"""i386 Linux system-call names (arch/x86/entry/syscalls/syscall_32.tbl), for --stats."""

from __future__ import annotations

NAMES: dict[int, str] = {
    1: "exit", 2: "fork", 3: "read", 4: "write", 5: "open", 6: "close", 7: "waitpid", 8: "creat", 9: "link",
    10: "unlink", 11: "execve", 12: "chdir", 13: "time", 14: "mknod", 15: "chmod", 19: "lseek", 20: "getpid",
    21: "mount", 24: "getuid", 27: "alarm", 29: "pause", 30: "utime", 33: "access", 36: "sync", 37: "kill",
    38: "rename", 39: "mkdir", 40: "rmdir", 41: "dup", 42: "pipe", 43: "times", 45: "brk", 47: "getgid",
    54: "ioctl", 55: "fcntl", 57: "setpgid", 60: "umask", 63: "dup2", 64: "getppid", 65: "getpgrp",
    66: "setsid", 76: "getrlimit", 77: "getrusage", 78: "gettimeofday", 82: "select", 83: "symlink", 85: "readlink",
    90: "mmap", 91: "munmap", 92: "truncate", 93: "ftruncate", 94: "fchmod", 99: "statfs", 100: "fstatfs",
    102: "socketcall", 114: "wait4", 116: "sysinfo", 118: "fsync", 120: "clone", 122: "uname",
    125: "mprotect", 133: "fchdir", 140: "_llseek", 141: "getdents", 142: "_newselect", 144: "msync",
    145: "readv", 146: "writev", 148: "fdatasync", 162: "nanosleep", 163: "mremap", 168: "poll",
    172: "prctl", 173: "rt_sigreturn", 174: "rt_sigaction", 175: "rt_sigprocmask", 179: "rt_sigsuspend",
    180: "pread64", 181: "pwrite64", 183: "getcwd", 186: "sigaltstack", 190: "vfork", 191: "ugetrlimit",
    192: "mmap2", 193: "truncate64", 194: "ftruncate64", 195: "stat64", 196: "lstat64", 197: "fstat64",
    199: "getuid32", 200: "getgid32", 201: "geteuid32", 202: "getegid32", 207: "fchown32",
    212: "chown32", 219: "madvise", 220: "getdents64", 221: "fcntl64", 224: "gettid", 238: "tkill",
    240: "futex", 242: "sched_getaffinity", 243: "set_thread_area", 252: "exit_group",
    258: "set_tid_address", 265: "clock_gettime", 266: "clock_getres", 267: "clock_nanosleep",
    268: "statfs64", 269: "fstatfs64", 270: "tgkill", 295: "openat", 296: "mkdirat", 300: "fstatat64",
    301: "unlinkat", 302: "renameat", 305: "readlinkat", 307: "faccessat", 308: "pselect6",
    309: "ppoll", 311: "set_robust_list",
    320: "utimensat", 330: "dup3", 331: "pipe2", 340: "prlimit64", 355: "getrandom", 359: "socket",
    383: "statx", 384: "arch_prctl", 386: "rseq", 403: "clock_gettime64", 406: "clock_getres_time64",
    407: "clock_nanosleep_time64", 412: "utimensat_time64", 413: "pselect6_time64",
    414: "ppoll_time64", 439: "faccessat2",
}


def name(nr: int) -> str:
    return NAMES.get(nr, f"syscall_{nr}")
