/* Hostile pointers: every pointer-taking system call, with a null page
 * address, a kernel-half address and the last page of the address space.
 * Linux answers -EFAULT (or the error it checks first); the guest kernel must
 * answer the same and never fault itself (that would be exit 125). */
#include "sys.h"

static const u32 bad[3] = {16, 0xC0001000u, 0xFFFFF000u};

#define TRY(label, call) do { for (int i = 0; i < 3; i++) { u32 p = bad[i]; (void)p; kv(label, call); } } while (0)

void _start(void)
{
    int fd = sys3(5, "in.txt", 0, 0);
    int wfd = sys3(5, "w.txt", 0101, 0644);
    u32 good[8] = {0};
    TRY("open path", sys3(5, p, 0, 0));
    TRY("openat path", sys4(295, -100, p, 0, 0));
    TRY("read buf", sys3(3, fd, p, 8));
    /* at the end of the file Linux checks only the range (access_ok: for an
     * i386 process on x86-64, below 0xFFFFE000) and returns 0, touching
     * nothing; 1 and 4096 bytes, so both of the guest kernel's paths see it */
    sys5(140, fd, 0, 0, (u32)good, 2);
    TRY("read 1 at EOF", sys3(3, fd, p, 1));
    TRY("read 4096 at EOF", sys3(3, fd, p, 4096));
    sys5(140, fd, 0, 0, (u32)good, 0);
    int nul = sys3(5, "/dev/null", 2, 0), zero = sys3(5, "/dev/zero", 2, 0);
    TRY("read /dev/null", sys3(3, nul, p, 8));
    TRY("write /dev/null", sys3(4, nul, p, 8));
    TRY("write /dev/zero", sys3(4, zero, p, 8));
    TRY("read /dev/zero", sys3(3, zero, p, 8));
    TRY("write buf", sys3(4, wfd, p, 8));
    TRY("writev iov", sys3(146, wfd, p, 2));
    TRY("readv iov", sys3(145, fd, p, 2));
    TRY("stat64 path", sys2(195, p, good));
    TRY("stat64 buf", sys2(195, "in.txt", p));
    TRY("lstat64 buf", sys2(196, "in.txt", p));
    TRY("fstat64 buf", sys2(197, fd, p));
    TRY("fstatat64 path", sys4(300, -100, p, good, 0));
    TRY("statx path", sys5(383, -100, p, 0, 0x7ff, good));
    TRY("statx buf", sys5(383, -100, "in.txt", 0, 0x7ff, p));
    TRY("_llseek result", sys5(140, fd, 0, 0, p, 0));
    TRY("uname", sys1(122, p));
    TRY("readlink path", sys3(85, p, good, 8));
    TRY("readlink buf", sys3(85, "link", p, 8));
    TRY("access path", sys2(33, p, 0));
    TRY("faccessat path", sys4(307, -100, p, 0, 0));
    TRY("getcwd buf", sys2(183, p, 100));
    TRY("chdir path", sys1(12, p));
    TRY("getdents64 buf", sys3(220, sys3(5, ".", 0200000, 0), p, 4096));
    TRY("clock_gettime", sys2(265, 0, p));
    TRY("clock_gettime64", sys2(403, 1, p));
    TRY("gettimeofday", sys2(78, p, 0));
    TRY("time", sys1(13, p));
    TRY("nanosleep req", sys2(162, p, 0));
    TRY("getrandom", sys3(355, p, 8, 0));
    TRY("set_thread_area", sys1(243, p));
    TRY("ugetrlimit", sys2(191, 3, p));
    TRY("prlimit64 old", sys4(340, 0, 3, 0, p));
    TRY("rt_sigaction act", sys4(174, 10, p, 0, 8));
    TRY("rt_sigaction oact", sys4(174, 10, 0, p, 8));
    TRY("rt_sigprocmask set", sys4(175, 0, p, 0, 8));
    TRY("rt_sigprocmask oset", sys4(175, 0, 0, p, 8));
    TRY("sysinfo", sys1(116, p));
    TRY("ioctl TCGETS", sys3(54, fd, 0x5401, p));
    TRY("prctl get name", sys2(172, 16, p));
    kv("still alive", 1);
    exit_(0);
}
