/* memory: brk, mmap2 (anonymous, private file, fixed), munmap, mprotect. */
#include "sys.h"

void _start(void)
{
    u32 cur = sys1(45, 0);
    kv("brk query nonzero", cur != 0);
    u32 grown = sys1(45, cur + 10000);
    kv("brk grow", grown - cur);
    char *p = (char *)cur;
    p[0] = 'a';
    p[9999] = 'z';
    kv("brk memory", p[0] + p[9999]);
    kv("brk shrink", sys1(45, cur) == (int)cur);
    kv("brk below start", sys1(45, 4096) == (int)cur);

    char *m = (char *)sys6(192, 0, 3 * 4096, 3, 0x22, -1, 0);   /* PROT_RW, MAP_PRIVATE|ANON */
    kv("mmap ok", (u32)m < 0xfffff000u);
    kv("mmap zeroed", m[0] + m[3 * 4096 - 1]);
    m[0] = 7;
    m[3 * 4096 - 1] = 9;
    kv("mmap rw", m[0] + m[3 * 4096 - 1]);
    kv("mmap len 0", sys6(192, 0, 0, 3, 0x22, -1, 0));
    kv("mmap bad fd", sys6(192, 0, 4096, 1, 0x02, 77, 0));
    kv("munmap middle", sys2(91, m + 4096, 4096));
    kv("write from unmapped", sys3(4, 1, m + 4096, 4));
    kv("write from mapped", sys3(4, 1, "ok\n", 3));
    kv("munmap unaligned", sys2(91, m + 1, 4096));
    kv("munmap rest", sys2(91, m, 3 * 4096));

    int fd = sys3(5, "in.txt", 0, 0);
    char *f = (char *)sys6(192, 0, 8192, 1, 0x02, fd, 0);       /* PROT_READ, MAP_PRIVATE */
    kv("mmap file ok", (u32)f < 0xfffff000u);
    outn(f, 12);
    out("\n");
    kv("mmap file tail zeroed", f[4095]);   /* the page past EOF would be SIGBUS natively */
    kv("mprotect", sys3(125, f, 8192, 3));
    f[0] = 'X';
    outn(f, 3);
    out("\n");
    kv("mprotect unaligned", sys3(125, f + 1, 4096, 1));
    kv("read into read-only", (sys3(125, f, 4096, 1), sys3(3, fd, f, 4)));
    sys2(91, f, 8192);

    char *fixed = (char *)sys6(192, 0x30000000, 4096, 3, 0x32, -1, 0);  /* MAP_FIXED */
    kv("mmap fixed", (u32)fixed == 0x30000000u);
    fixed[100] = 1;
    char *none = (char *)sys6(192, 0, 16384, 0, 0x22, -1, 0);   /* PROT_NONE */
    kv("mmap PROT_NONE ok", (u32)none < 0xfffff000u);
    kv("read into PROT_NONE", sys3(3, fd, none, 4));
    kv("mprotect PROT_NONE to RW", sys3(125, none, 8192, 3));
    none[8191] = 5;
    kv("after mprotect", none[8191] + none[0]);
    exit_(0);
}
