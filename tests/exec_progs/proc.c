/* process: ids, uname, limits, signals recorded, TLS by set_thread_area,
 * getrandom, sysinfo, prctl, an unknown call (ENOSYS), exit_group status. */
#include "sys.h"

static int tls_var = 0x12345678;

void _start(void)
{
    int pid = sys0(20);
    kv("getpid positive", pid > 0);
    kv("gettid == getpid", sys0(224) == pid);
    kv("set_tid_address == tid", sys1(258, &tls_var) == pid);
    kv("uid == euid", sys0(199) == sys0(201));
    kv("gid == egid", sys0(200) == sys0(202));
    char u[390];
    kv("uname", sys1(122, u));
    out(u);
    out("\n");
    kv("uname bad pointer", sys1(122, 16));
    u32 rl[2];
    kv("ugetrlimit stack", sys2(191, 3, rl));
    u64 rl64[2];
    kv("prlimit64 nofile", sys4(340, 0, 7, 0, rl64));
    kv("prlimit64 nofile sane", rl64[0] > 0 && rl64[0] <= rl64[1]);
    kv("prlimit64 bad resource", sys4(340, 0, 99, 0, rl64));
    u32 act[5] = {1, 0, 0, 0, 0}, old[5] = {9, 9, 9, 9, 9};
    kv("rt_sigaction", sys4(174, 10, act, 0, 8));
    kv("rt_sigaction read back", sys4(174, 10, 0, old, 8));
    kv("old handler", old[0]);
    kv("rt_sigaction SIGKILL", sys4(174, 9, act, 0, 8));
    kv("rt_sigaction bad size", sys4(174, 10, act, 0, 4));
    kv("rt_sigaction signal 0", sys4(174, 0, act, 0, 8));
    u32 set[2] = {1u << 9, 0}, oset[2] = {7, 7};
    kv("rt_sigprocmask block", sys4(175, 0, set, 0, 8));
    kv("rt_sigprocmask get", sys4(175, 0, 0, oset, 8));
    kv("blocked", oset[0] == (1u << 9));
    kv("rt_sigprocmask bad how", sys4(175, 9, set, 0, 8));
    kv("set_robust_list", sys2(311, act, 12));
    kv("set_robust_list bad size", sys2(311, act, 5));
    kv("prctl set name", sys2(172, 15, "proc"));
    unsigned char si[64];
    kv("sysinfo", sys1(116, si));
    kv("sysinfo mem_unit", *(u32 *)(si + 52) >= 1);
    unsigned char rnd[32];
    kv("getrandom", sys3(355, rnd, 32, 0));
    kv("getrandom bad buffer", sys3(355, 16, 32, 0));
    u32 desc[4] = {(u32)-1, (u32)&tls_var, 0xfffff, 0x51};
    kv("set_thread_area", sys1(243, desc));
    int entry = desc[0];
    kv("entry chosen", entry > 0);
    int v;
    __asm__ volatile("movw %w1, %%gs\n\tmovl %%gs:0, %0" : "=r"(v) : "r"(entry * 8 + 3));
    kv("gs:0", v == 0x12345678);
    kv("unknown call", sys0(500));
    kv("ioctl TCGETS on a pipe", sys3(54, 1, 0x5401, u));
    exit_(3);
}
