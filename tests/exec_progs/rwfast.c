/* read and write around the edges of the guest kernel's fast path
 * (entry.S: at most 8 bytes of a regular file into or out of one user page,
 * every check made without branching): each case on either side of each
 * check -- fd range and aliases (fd + 256), access modes, O_APPEND, counts
 * 0..9, pointers at and past the user limit, page crossings, PROT_NONE and
 * read-only pages, end of file, growing past a file's capacity, files still
 * in the boot image, directories and devices.  Linux's answers are the
 * reference (printed here and compared with the native run). */
#include "sys.h"

static char two_pages[8192] __attribute__((aligned(4096)));

static void show(const char *label, int r, const char *buf)
{
    kv(label, r);
    if (r > 0 && r <= 16) { out("  bytes: "); outn(buf, r); out("\n"); }
}

void _start(void)
{
    char b[16];
    long long at = 0;
    int fd = sys3(5, "in.txt", 0, 0);                       /* O_RDONLY, 29 bytes in the image */
    int wfd = sys3(5, "w.txt", 0102, 0644);                 /* O_CREAT | O_RDWR */
    int wo = sys3(5, "wo.txt", 0101, 0644);                 /* O_CREAT | O_WRONLY */

    /* counts 0..9: 9 is past the fast path */
    for (int n = 0; n <= 9; n++) { show("read n", sys3(3, fd, b, n), b); }
    for (int n = 0; n <= 9; n++) kv("write n", sys3(4, wfd, "0123456789", n));

    /* descriptors: out of range, aliases of open ones modulo 256, closed, wrong mode */
    kv("read fd+256", sys3(3, fd + 256, b, 1));
    kv("read fd-256", sys3(3, fd - 256, b, 1));
    kv("read fd|0x7fffff00", sys3(3, fd | 0x7fffff00, b, 1));
    kv("read 256", sys3(3, 256, b, 1));
    kv("read 255 closed", sys3(3, 255, b, 1));
    kv("read -1", sys3(3, -1, b, 1));
    kv("write wfd+256", sys3(4, wfd + 256, "x", 1));
    kv("write wfd-512", sys3(4, wfd - 512, "x", 1));
    kv("read O_WRONLY", sys3(3, wo, b, 1));
    kv("write O_RDONLY", sys3(4, fd, "x", 1));
    /* the same with bytes to read and room to write: only the mode says no */
    int wo2 = sys3(5, "in.txt", 1, 0);                      /* O_WRONLY, 29 bytes */
    kv("read O_WRONLY with data", sys3(3, wo2, b, 1));
    int ro2 = sys3(5, "w.txt", 0, 0);                       /* O_RDONLY, written above: room in its buffer */
    kv("write O_RDONLY with room", sys3(4, ro2, "x", 1));
    show("read it", sys3(3, ro2, b, 4), b);
    kv("llseek 0", sys5(140, fd, 0, 0, &at, 0));
    kv("dup2 to 255", sys2(63, fd, 255));
    show("read 255", sys3(3, 255, b, 3), b);
    kv("close 255", sys1(6, 255));
    kv("read 255 again", sys3(3, 255, b, 1));

    /* user pointers: null page, the top of user space, the kernel half, the
     * very top (with bytes left to read: at the end of a file Linux reads
     * nothing and looks at no pointer) */
    kv("llseek 0", sys5(140, fd, 0, 0, &at, 0));
    static const u32 bad[] = {0, 16, 0xBFFFFFFFu, 0xBFFFFFF9u, 0xC0000000u, 0xC0000FFFu, 0xFFFFFFF8u, 0xFFFFFFFFu};
    for (u32 i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kv("read bad", sys3(3, fd, bad[i], 1));
        kv("read bad 8", sys3(3, fd, bad[i], 8));
        kv("write bad", sys3(4, wfd, bad[i], 1));
        kv("write bad 8", sys3(4, wfd, bad[i], 8));
    }
    /* into code (read-only): EFAULT; out of code: fine */
    kv("read into text", sys3(3, fd, (u32)_start, 1));
    kv("write from text", sys3(4, wfd, (u32)_start, 4));
    /* a page crossing, both pages writable: the C path */
    show("read across pages", sys3(3, fd, two_pages + 4093, 6), two_pages + 4093);
    kv("write across pages", sys3(4, wfd, two_pages + 4093, 6));
    /* the last bytes of a page, the next one PROT_NONE */
    int m = sys6(192, 0, 8192, 3, 0x22, -1, 0);             /* mmap2 RW, anonymous private */
    kv("mprotect none", sys3(125, m + 4096, 4096, 0));
    show("read to page end", sys3(3, fd, m + 4092, 4), (const char *)m + 4092);
    int r = sys3(3, fd, m + 4093, 4);                       /* Linux may copy the part that fits */
    kv("read across into PROT_NONE is 3 or EFAULT", r == -14 || r == 3);
    kv("read into PROT_NONE", sys3(3, fd, m + 4096, 1));
    kv("write from PROT_NONE", sys3(4, wfd, m + 4096, 1));
    kv("mprotect read-only", sys3(125, m, 4096, 1));
    kv("read into read-only", sys3(3, fd, m + 100, 1));
    kv("write from read-only", sys3(4, wfd, m + 100, 1));

    /* end of file, and past it */
    long long pos = 0;
    kv("llseek 1", sys5(140, fd, 0, 1, &pos, 0));
    show("read 8 at 1", sys3(3, fd, b, 8), b);
    kv("llseek end", sys5(140, fd, 0, 0, &pos, 2));
    kv("at", pos);
    kv("read at end", sys3(3, fd, b, 1));
    kv("llseek past end", sys5(140, fd, 0, 100, &pos, 2));
    kv("read past end", sys3(3, fd, b, 1));
    kv("llseek 4G", sys5(140, fd, 1, 5, &pos, 0));
    kv("read at 4G", sys3(3, fd, b, 1));

    /* a file still in the boot image: written (copied out first), then read back */
    int rw = sys3(5, "sub/a.txt", 2, 0);                    /* O_RDWR */
    kv("write image file", sys3(4, rw, "IN", 2));
    show("read image file", sys3(3, rw, b, 8), b);
    kv("llseek 0", sys5(140, rw, 0, 0, &pos, 0));
    show("read back", sys3(3, rw, b, 8), b);

    /* O_APPEND: every write at the end */
    int ap = sys3(5, "w.txt", 02002, 0);                    /* O_RDWR | O_APPEND */
    kv("llseek 0", sys5(140, ap, 0, 0, &pos, 0));
    kv("append", sys3(4, ap, "A", 1));
    kv("llseek cur", sys5(140, ap, 0, 0, &pos, 1));
    kv("at", pos);

    /* a new file grown a byte at a time past its first page, then read back */
    int g = sys3(5, "grown.txt", 0102, 0644);
    u32 sum = 0;
    for (u32 i = 0; i < 4200; i++) { char c = 'a' + i % 26; sys3(4, g, &c, 1); }
    kv("write 8 across capacity", sys3(4, g, "ABCDEFGH", 8));
    kv("llseek 0", sys5(140, g, 0, 0, &pos, 0));
    for (;;) { int k = sys3(3, g, b, 1); if (k <= 0) { kv("last read", k); break; } sum = sum * 31 + (unsigned char)b[0]; }
    kv("sum", sum);
    /* a hole: a write past the end (zeros between) */
    kv("llseek hole", sys5(140, g, 0, 9000, &pos, 0));
    kv("write in hole", sys3(4, g, "Z", 1));
    kv("llseek 8990", sys5(140, g, 0, 8990, &pos, 0));
    int z = sys3(3, g, b, 8);
    kv("zeros read", z);
    kv("zeros", z == 8 && !b[0] && !b[7]);

    /* a write that crosses the end of a file's buffer (one page here) must
     * grow it, not run into the next buffer: file a's page, then b's */
    int fa = sys3(5, "a.bin", 0102, 0644), fb = sys3(5, "b.bin", 0102, 0644);
    kv("a first", sys3(4, fa, "a", 1));
    kv("b", sys3(4, fb, "BBBBBBBB", 8));
    for (u32 i = 1; i < 4092; i++) sys3(4, fa, "a", 1);
    kv("a across its page", sys3(4, fa, "XXXXXXXX", 8));
    kv("llseek b", sys5(140, fb, 0, 0, &pos, 0));
    show("b again", sys3(3, fb, b, 8), b);
    kv("llseek a", sys5(140, fa, 0, 4090, &pos, 0));
    show("a's end", sys3(3, fa, b, 8), b);

    /* a directory and devices: never the fast path */
    int d = sys3(5, ".", 0200000, 0);
    kv("read dir", sys3(3, d, b, 1));
    kv("write dir", sys3(4, d, "x", 1));
    int nul = sys3(5, "/dev/null", 2, 0);
    kv("write /dev/null", sys3(4, nul, "x", 1));
    kv("read /dev/null", sys3(3, nul, b, 1));
    int zero = sys3(5, "/dev/zero", 0, 0);
    b[0] = 1;
    kv("read /dev/zero", sys3(3, zero, b, 1));
    kv("zero byte", b[0]);
    exit_(0);
}
