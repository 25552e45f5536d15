/* poll, ppoll(_time64), select (old and new), pselect6(_time64): files that
 * are always ready, stdout, bad descriptors and pointers, timeouts written
 * back, and stdin -- argv[1] says what the test gave it: "data" (bytes, the
 * writer gone), "eof" (nothing, the writer gone), "wait" (nothing, the
 * writer still there: every wait times out), "late" (bytes come later). */
#include "sys.h"

#define POLLIN 0x1
#define POLLPRI 0x2
#define POLLOUT 0x4
#define POLLRDNORM 0x40
#define POLLWRNORM 0x100
#define ALL (POLLIN | POLLPRI | POLLOUT | POLLRDNORM | POLLWRNORM)

struct pollfd { int fd; short events, revents; };
struct ts32 { int s, ns; };
struct ts64 { long long s, ns; };
struct tv { int s, us; };

static const struct pollfd ro_set[1] = {{-1, POLLIN, 0}};   /* .rodata: read-only */
static char buf[256];

/* six arguments: sys6 inlined here runs out of registers, and out of line
 * its stack operand moves under its own push of ebp */
int call6(int n, int a, int b, int c, int d, int e, int f);
__asm__(".globl call6\ncall6:\n\tpush %ebp\n\tpush %ebx\n\tpush %esi\n\tpush %edi\n\t"
        "mov 20(%esp), %eax\n\tmov 24(%esp), %ebx\n\tmov 28(%esp), %ecx\n\tmov 32(%esp), %edx\n\t"
        "mov 36(%esp), %esi\n\tmov 40(%esp), %edi\n\tmov 44(%esp), %ebp\n\tint $0x80\n\t"
        "pop %edi\n\tpop %esi\n\tpop %ebx\n\tpop %ebp\n\tret\n");

static int streq(const char *a, const char *b)
{
    while (*a && *a == *b) a++, b++;
    return *a == *b;
}

static long long mono_ms(void)
{
    struct ts32 t;
    sys2(265, 1, &t);                   /* clock_gettime(CLOCK_MONOTONIC) */
    return (long long)t.s * 1000 + t.ns / 1000000;
}

static void show(const char *label, int r, struct pollfd *p, int n)
{
    out(label); out(": "); num(r);
    for (int i = 0; i < n; i++) { out(" "); num(p[i].revents); }
    out("\n");
}

/* one poll of fd for events, timeout 0 */
static void poll1(const char *label, int fd, int events)
{
    struct pollfd p = {fd, (short)events, 0x7777};
    show(label, sys3(168, &p, 1, 0), &p, 1);
}

static void sets(const char *label, int r, u32 *in, u32 *o)
{
    out(label); out(": "); num(r); out(" in "); num(in ? in[0] : 0); out(" out "); num(o ? o[0] : 0); out("\n");
}

static void stdin_tests(const char *mode)
{
    struct pollfd p[2];
    u32 in, o;
    if (streq(mode, "data") || streq(mode, "eof")) {
        poll1("stdin poll in", 0, POLLIN | POLLRDNORM);
        poll1("stdin poll out", 0, POLLOUT);
        in = 1; o = 0;
        struct tv t = {5, 0};
        int r = sys5(142, 1, &in, &o, 0, &t);
        sets("stdin select", r, &in, &o);
        kv("select left plausible", t.s == 4 || (t.s == 5 && t.us == 0));
        int n = sys3(3, 0, buf, sizeof buf);
        kv("read after poll", n);                   /* all there is, not the byte poll looked at */
        long long total = n > 0 ? n : 0;
        while ((n = sys3(3, 0, buf, sizeof buf)) > 0) total += n;
        kv("read total", total);
        kv("read end", n);
        poll1("stdin poll at end", 0, POLLIN | POLLRDNORM);
        in = 1;
        struct ts32 z = {0, 0};
        sets("stdin pselect6 at end", call6(308, 1, (int)&in, 0, 0, (int)&z, 0), &in, 0);
        return;
    }
    if (streq(mode, "wait")) {
        poll1("stdin poll, none yet", 0, POLLIN);
        long long t0 = mono_ms();
        p[0].fd = 0; p[0].events = POLLIN; p[0].revents = 0x7777;
        show("stdin poll 100 ms", sys3(168, p, 1, 100), p, 1);
        kv("poll waited 100 ms", mono_ms() - t0 >= 100);
        t0 = mono_ms();
        in = 1;
        struct tv t = {0, 60000};
        sets("stdin select 60 ms", sys5(142, 1, &in, 0, 0, &t), &in, 0);
        kv("select waited 60 ms", mono_ms() - t0 >= 60);
        kv("select left s", t.s); kv("select left us", t.us);
        struct ts32 ts = {0, 30000000};
        p[0].revents = 0x7777;
        show("stdin ppoll 30 ms", sys5(309, p, 1, &ts, 0, 8), p, 1);
        kv("ppoll left s", ts.s); kv("ppoll left ns", ts.ns);
        struct ts64 t64 = {0, 20000000};
        u32 mask[2] = {0, 0};
        u32 pack[2] = {(u32)mask, 8};
        in = 1;
        sets("stdin pselect6_time64 20 ms", call6(413, 1, (int)&in, 0, 0, (int)&t64, (int)pack), &in, 0);
        kv("pselect6_time64 left", t64.s * 1000000000 + t64.ns);
        /* stdin waits, stdout is ready: no wait at all */
        p[0].fd = 0; p[0].events = POLLIN; p[1].fd = 1; p[1].events = POLLOUT;
        t0 = mono_ms();
        show("stdin and stdout, no timeout", sys3(168, p, 2, -1), p, 2);
        kv("returned at once", mono_ms() - t0 < 1000);
        return;
    }
    if (streq(mode, "late")) {
        p[0].fd = 0; p[0].events = POLLIN | POLLRDNORM; p[0].revents = 0;
        show("stdin ppoll, no timeout", sys5(309, p, 1, 0, 0, 0), p, 1);
        int n = 0, got;
        while (n < 5 && (got = sys3(3, 0, buf + n, 5 - n)) > 0) n += got;
        out("read: "); outn(buf, n); out("\n");
    }
}

void main_(u32 *sp)
{
    int argc = sp[0];
    char **argv = (char **)(sp + 1);
    struct pollfd p[8];
    int f = sys2(5, "in.txt", 0), d = sys2(5, "sub", 0200000), nul = sys2(5, "/dev/null", 1);
    int z = sys2(5, "/dev/zero", 2), ur = sys2(5, "/dev/urandom", 0);
    kv("fds", f * 10000 + d * 1000 + nul * 100 + z * 10 + ur);

    /* files, a directory, devices, stdout and stderr */
    int list[7] = {f, d, nul, z, ur, 1, 2};
    for (int i = 0; i < 7; i++) { p[i].fd = list[i]; p[i].events = ALL; p[i].revents = 0x7777; }
    show("poll ready", sys3(168, p, 7, -1), p, 7);
    p[0].events = POLLOUT; p[1].events = 0; p[2].events = POLLIN;
    show("poll asked", sys3(168, p, 3, 0), p, 3);

    /* a closed fd is POLLNVAL, a negative one skipped, the rest still counted */
    p[0].fd = 200; p[0].events = POLLIN; p[1].fd = -1; p[1].events = POLLIN; p[2].fd = f; p[2].events = POLLIN;
    p[3].fd = 100000; p[3].events = 0;
    for (int i = 0; i < 4; i++) p[i].revents = 0x7777;
    show("poll bad fds", sys3(168, p, 4, 0), p, 4);

    kv("poll nfds too many", sys3(168, p, 0x7fffffff, 0));
    kv("poll bad pointer", sys3(168, 16, 1, 0));
    kv("poll none", sys3(168, 0, 0, 0));
    /* the guest kernel's own addresses are not the program's */
    kv("poll kernel pointer", sys3(168, 0xc0001000, 1, 0));
    kv("poll set across the top", sys3(168, 0xbffffffc, 2, 0));
    kv("ppoll kernel timespec", sys5(309, p, 1, 0xc0000000, 0, 8));
    kv("select kernel set", sys5(142, 8, 0xc0000000, 0, 0, 0));
    kv("pselect6 kernel sigmask pack", call6(308, 0, 0, 0, 0, 0, 0xc0000000));
    kv("poll read-only set", sys3(168, ro_set, 1, 0));
    struct ts32 bad = {0, 1000000000};
    kv("ppoll bad timespec", sys5(309, p, 1, &bad, 0, 8));
    bad.s = -1; bad.ns = 0;
    kv("ppoll negative timespec", sys5(309, p, 1, &bad, 0, 8));
    kv("ppoll bad timespec pointer", sys5(309, p, 1, 16, 0, 8));
    u32 mask[2] = {0, 0};
    struct ts32 zero = {0, 0};
    p[0].fd = f; p[0].events = POLLIN;
    kv("ppoll sigsetsize 4", sys5(309, p, 1, &zero, mask, 4));
    kv("ppoll bad sigmask", sys5(309, p, 1, &zero, 16, 8));
    p[0].revents = 0x7777;
    show("ppoll with a sigmask", sys5(309, p, 1, &zero, mask, 8), p, 1);
    kv("ppoll zero timeout left alone", zero.s * 1000 + zero.ns);
    struct ts64 t64 = {3, 0};
    p[0].revents = 0x7777;
    show("ppoll_time64", sys5(414, p, 1, &t64, 0, 0), p, 1);
    kv("ppoll_time64 left plausible", t64.s == 2 || (t64.s == 3 && t64.ns == 0));

    /* select: in.txt readable and writable (as the mask says, whatever the open mode), stdout writable */
    u32 in = (1u << f) | (1u << d) | 2, o = (1u << f) | 2 | 4, ex = (1u << f) | 2;
    struct tv tv = {0, 1500000};        /* tv_usec past a second: folded into tv_sec */
    int r = sys5(142, 32, &in, &o, &ex, &tv);
    out("select ready: "); num(r); out(" in "); num(in); out(" out "); num(o); out(" ex "); num(ex); out("\n");
    kv("select left plausible", tv.s == 1 && tv.us > 0);
    in = 1u << 20;
    kv("select closed fd", sys5(142, 21, &in, 0, 0, &zero));
    in = 1u << 20;
    kv("select closed fd past n", sys5(142, 20, &in, 0, 0, &zero));
    kv("select n negative", sys5(142, -1, 0, 0, 0, &zero));
    kv("select bad set", sys5(142, 8, 16, 0, 0, &zero));
    tv.s = 0; tv.us = -1;
    kv("select bad timeval", sys5(142, 0, 0, 0, 0, &tv));
    kv("select bad timeval pointer", sys5(142, 0, 0, 0, 0, 16));
    o = 6;
    r = sys5(142, 3, 0, &o, 0, 0);
    sets("select no timeout, ready", r, 0, &o);
    u32 blk[5] = {3, 0, (u32)&o, 0, (u32)&zero};
    o = 6;
    sets("old select", sys1(82, blk), 0, &o);
    kv("old select bad block", sys1(82, 16));

    u32 pack[2] = {(u32)mask, 8};
    o = 2;
    sets("pselect6", call6(308, 2, 0, (int)&o, 0, (int)&zero, (int)pack), 0, &o);
    pack[1] = 7;
    kv("pselect6 sigsetsize 7", call6(308, 2, 0, (int)&o, 0, (int)&zero, (int)pack));
    kv("pselect6 bad pack", call6(308, 2, 0, (int)&o, 0, (int)&zero, 16));
    pack[0] = 16; pack[1] = 8;
    kv("pselect6 bad sigmask", call6(308, 2, 0, (int)&o, 0, (int)&zero, (int)pack));
    pack[0] = 0;
    o = 2;
    sets("pselect6 NULL sigmask", call6(308, 2, 0, (int)&o, 0, (int)&zero, (int)pack), 0, &o);
    struct ts64 z64 = {0, 0};
    o = 2;
    sets("pselect6_time64", call6(413, 2, 0, (int)&o, 0, (int)&z64, 0), 0, &o);

    if (argc > 1) stdin_tests(argv[1]);
    exit_(0);
}

__asm__(".globl _start\n_start:\n\tpush %esp\n\tcall main_\n");
