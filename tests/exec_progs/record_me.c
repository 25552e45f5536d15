/* Everything a recording must capture, printed: stdin in the chunks it
 * arrives in, the wall clock (clock_gettime) and the TSC (rdtsc) at each
 * one.  Record/replay of `lguest exec` (tests/test_exec_record.py). */
#include "sys.h"

static char buf[4096];

static u64 rdtsc(void)
{
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}

static void stamp(void)
{
    int ts[2];
    sys2(265, 0, ts);                       /* clock_gettime(CLOCK_REALTIME) */
    out(" at "); num(ts[0]); out("."); num(ts[1]);
    out(" tsc "); num((long long)(rdtsc() & 0xFFFFFFFFFFFFull));
    out("\n");
}

void _start(void)
{
    long long total = 0;
    u32 sum = 0;
    int n, chunks = 0;
    while ((n = sys3(3, 0, buf, sizeof buf)) > 0) {
        for (int i = 0; i < n; i++) sum = sum * 31 + (unsigned char)buf[i];
        total += n;
        chunks++;
        out("chunk "); num(n); stamp();
    }
    kv("chunks", chunks);
    kv("bytes", total);
    kv("sum", sum);
    out("end"); stamp();
    exit_(n < 0 ? 1 : 0);
}
