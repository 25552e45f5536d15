/* The program's read-only pages: lguest exec maps whole pages of a
 * read-only segment straight from the root image (no copy).  Writing to
 * such a page after mprotect, unmapping it, mapping over it: the program
 * sees its own private pages, and its file (read back, and exported)
 * never changes -- as with Linux's private file mappings. */
#include "sys.h"

/* three whole pages of code, page-aligned, in the text segment */
__asm__(".text\n.balign 4096\n.globl sled\nsled:\n.fill 12288, 1, 0x90\n\tret\n");
extern char sled[];

static u32 sum_file(void)
{
    static unsigned char buf[4096];
    int fd = sys3(5, "bin/textmap", 0, 0);
    if (fd < 0) return 0;
    u32 h = 0;
    for (;;) {
        int n = sys3(3, fd, buf, sizeof buf);
        if (n <= 0) break;
        for (int i = 0; i < n; i++) h = h * 31 + buf[i];
    }
    sys1(6, fd);
    return h;
}

void _start(void)
{
    u32 s0 = sum_file();
    kv("file read", s0 != 0);
    ((void (*)(void))sled)();
    kv("text runs", 1);
    int nops = 0;
    for (int i = 0; i < 12288; i++) nops += (unsigned char)sled[i] == 0x90;
    kv("text bytes", nops);
    char *page = sled;
    kv("write to text faults unless allowed", 0);
    kv("mprotect text rwx", sys3(125, page, 4096, 7));
    page[100] = (char)0xC3;                  /* ret */
    ((void (*)(void))(page + 100))();
    kv("patched text runs", 1);
    kv("page after patch", (unsigned char)page[100]);
    kv("file unchanged after text write", sum_file() == s0);
    kv("munmap text page", sys2(91, page + 4096, 4096));
    char *m = (char *)sys6(192, (int)(page + 4096), 4096, 3, 0x32, -1, 0);   /* MAP_PRIVATE|FIXED|ANON */
    kv("mmap over text", m == page + 4096);
    kv("fresh page zeroed", m[0] + m[4095]);
    m[0] = 5;
    kv("fresh page written", m[0]);
    kv("untouched text page", (unsigned char)page[8192 + 7]);
    kv("mprotect none, back to rx", sys3(125, page + 8192, 4096, 0) == 0 && sys3(125, page + 8192, 4096, 5) == 0);
    kv("text page after round trip", (unsigned char)page[8192 + 7]);
    kv("file unchanged after munmap", sum_file() == s0);
    exit_(0);
}
