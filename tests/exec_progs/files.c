/* files: open/openat/read/write/writev/lseek/_llseek/close, the stat family,
 * access/faccessat, readlink, getcwd/chdir, getdents64, dup/dup2/dup3,
 * fcntl64, ioctl, /dev files.  Paths are relative: natively the program runs
 * with the root directory as its working directory, as under lguest exec. */
#include "sys.h"

static char buf[4096];

static void stat_line(const char *label, int r, const unsigned char *st)
{
    out(label);
    out(": ");
    num(r);
    if (r == 0) {
        out(" mode=");
        num(*(const u32 *)(st + 16));
        if ((*(const u32 *)(st + 16) & 0170000) == 0100000) {
            out(" size=");
            num(*(const long long *)(st + 44));
        }
    }
    out("\n");
}

void _start(void)
{
    kv("open missing", sys3(5, "missing.txt", 0, 0));
    kv("open dir for writing", sys3(5, "sub", 1, 0));
    kv("open empty path", sys3(5, "", 0, 0));
    kv("open through a file", sys3(5, "in.txt/x", 0, 0));
    kv("open bad pointer", sys3(5, 12, 0, 0));
    int fd = sys4(295, -100, "in.txt", 0, 0);
    kv("openat fd>=3", fd >= 3);
    int n = sys3(3, fd, buf, 5);
    kv("read 5", n);
    outn(buf, n);
    out("\n");
    kv("lseek cur", sys3(19, fd, 0, 1));
    kv("lseek end", sys3(19, fd, 0, 2));
    kv("lseek negative", sys3(19, fd, -1, 0));
    kv("lseek bad whence", sys3(19, fd, 0, 7));
    long long res = -1;
    kv("_llseek", sys5(140, fd, 0, 2, &res, 0));
    kv("_llseek result", res);
    n = sys3(3, fd, buf, sizeof buf);
    kv("read rest", n);
    outn(buf, n);
    kv("read at eof", sys3(3, fd, buf, 10));
    kv("read bad fd", sys3(3, 99, buf, 1));
    kv("write bad fd", sys3(4, 99, buf, 1));
    kv("close bad fd", sys1(6, 99));
    sys3(19, fd, 0, 0);
    kv("read bad buffer", sys3(3, fd, 16, 4));
    kv("write to read-only fd", sys3(4, fd, "x", 1));
    kv("close", sys1(6, fd));
    kv("close again", sys1(6, fd));

    fd = sys3(5, "out.txt", 01101, 0644);   /* O_CREAT | O_TRUNC | O_WRONLY */
    kv("create fd>=3", fd >= 3);
    kv("write", sys3(4, fd, "hello ", 6));
    struct { const char *p; int n; } iov[3] = {{"wor", 3}, {"", 0}, {"ld\n", 3}};
    kv("writev", sys3(146, fd, iov, 3));
    kv("writev bad count", sys3(146, fd, iov, -1));
    kv("read from write-only fd", sys3(3, fd, buf, 1));
    kv("lseek past end", sys3(19, fd, 20, 0));
    kv("write past end", sys3(4, fd, "!", 1));
    unsigned char st[96];
    stat_line("fstat64", sys2(197, fd, st), st);
    sys1(6, fd);
    kv("create exclusive existing", sys3(5, "out.txt", 0301, 0644));
    fd = sys3(5, "out.txt", 02001, 0);     /* O_APPEND | O_WRONLY */
    kv("append", sys3(4, fd, "tail\n", 5));
    sys1(6, fd);
    fd = sys3(5, "out.txt", 0, 0);
    n = sys3(3, fd, buf, sizeof buf);
    kv("read back", n);
    for (int i = 0; i < n; i++) if (!buf[i]) buf[i] = '0';
    outn(buf, n);
    sys1(6, fd);

    stat_line("stat64 file", sys2(195, "in.txt", st), st);
    stat_line("stat64 missing", sys2(195, "missing", st), st);
    stat_line("stat64 symlink", sys2(195, "link", st), st);
    stat_line("lstat64 symlink", sys2(196, "link", st), st);
    stat_line("stat64 dir", sys2(195, "sub", st), st);
    stat_line("stat64 bad buffer", sys2(195, "in.txt", 16), st);
    stat_line("fstatat64", sys4(300, -100, "sub/a.txt", st, 0), st);
    unsigned char sx[256];
    int r = sys5(383, -100, "in.txt", 0, 0x7ff, sx);
    kv("statx", r);
    kv("statx mode", *(unsigned short *)(sx + 28));
    kv("statx size", *(long long *)(sx + 40));
    kv("statx missing", sys5(383, -100, "nope", 0, 0x7ff, sx));
    fd = sys3(5, "in.txt", 0, 0);
    r = sys5(383, fd, "", 0x1000, 0x7ff, sx);   /* AT_EMPTY_PATH */
    kv("statx empty path", r);
    kv("statx empty path size", *(long long *)(sx + 40));
    sys1(6, fd);

    kv("access", sys2(33, "in.txt", 0));
    kv("access missing", sys2(33, "missing", 0));
    kv("access bad mode", sys2(33, "in.txt", 8));
    kv("faccessat", sys4(307, -100, "sub/a.txt", 4, 0));
    n = sys3(85, "link", buf, sizeof buf);
    kv("readlink", n);
    outn(buf, n > 0 ? n : 0);
    out("\n");
    kv("readlink not a link", sys3(85, "in.txt", buf, sizeof buf));
    kv("readlink short buffer", sys3(85, "link", buf, 2));

    kv("chdir", sys1(12, "sub"));
    n = sys2(183, buf, sizeof buf);
    kv("getcwd ok", n > 0);
    int last = 0;
    for (int i = 0; i < n - 1; i++) if (buf[i] == '/') last = i + 1;
    out(buf + last);
    out("\n");
    kv("getcwd small buffer", sys2(183, buf, 2));
    fd = sys3(5, "a.txt", 0, 0);
    kv("open relative to cwd", fd >= 3);
    sys1(6, fd);
    kv("chdir ..", sys1(12, ".."));
    kv("chdir missing", sys1(12, "missing"));
    kv("chdir file", sys1(12, "in.txt"));
    fd = sys3(5, "sub/../in.txt", 0, 0);
    kv("open with ..", fd >= 3);
    sys1(6, fd);

    fd = sys3(5, "sub", 0200000, 0);        /* O_DIRECTORY */
    kv("open dir", fd >= 3);
    int entries = 0, dots = 0, a_txt = 0;
    for (;;) {
        n = sys3(220, fd, buf, sizeof buf);
        if (n <= 0) break;
        for (int pos = 0; pos < n;) {
            const char *name = buf + pos + 19;
            entries++;
            if ((name[0] == '.' && !name[1]) || (name[0] == '.' && name[1] == '.' && !name[2])) dots++;
            if (name[0] == 'a' && name[1] == '.' && name[2] == 't') a_txt = buf[pos + 18];
            pos += *(unsigned short *)(buf + pos + 16);
        }
    }
    kv("getdents64 end", n);
    kv("entries", entries);
    kv("dots", dots);
    kv("a.txt type", a_txt);
    kv("getdents64 on a file", sys3(220, 0 + sys3(5, "in.txt", 0, 0), buf, sizeof buf));
    kv("read a directory", sys3(3, fd, buf, 10));
    kv("O_DIRECTORY on a file", sys3(5, "in.txt", 0200000, 0));

    fd = sys3(5, "in.txt", 0, 0);
    int d = sys1(41, fd);
    kv("dup", d > fd);
    kv("dup shares offset", sys3(3, fd, buf, 3) + sys3(19, d, 0, 1));
    kv("dup2", sys2(63, fd, 50));
    kv("dup2 same", sys2(63, fd, fd));
    kv("dup3 same", sys3(330, fd, fd, 0));
    kv("dup3 cloexec", sys3(330, fd, 51, 02000000));
    kv("F_GETFD", sys2(221, 51, 1));
    kv("F_SETFD", sys3(221, 51, 2, 0));
    kv("F_GETFD after", sys2(221, 51, 1));
    kv("F_GETFL accmode", sys2(221, fd, 3) & 3);
    kv("F_DUPFD", sys3(221, fd, 0, 60));
    kv("fcntl bad fd", sys2(221, 77, 1));
    kv("dup bad fd", sys1(41, 77));
    kv("ioctl TCGETS on a file", sys3(54, fd, 0x5401, buf));
    kv("lseek on a pipe", sys3(19, 1, 0, 1));

    fd = sys3(5, "/dev/null", 2, 0);
    kv("read /dev/null", sys3(3, fd, buf, 10));
    kv("write /dev/null", sys3(4, fd, buf, 10));
    fd = sys3(5, "/dev/zero", 0, 0);
    buf[0] = 1;
    kv("read /dev/zero", sys3(3, fd, buf, 4));
    kv("zero byte", buf[0]);
    fd = sys3(5, "/dev/urandom", 0, 0);
    kv("read /dev/urandom", sys3(3, fd, buf, 64));
    exit_(0);
}
