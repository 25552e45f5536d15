/* names: mkdir/mkdirat, rmdir, unlink/unlinkat, rename/renameat,
 * truncate/ftruncate -- and the tree they leave (compared through --export). */
#include "sys.h"

static char buf[64];

void _start(void)
{
    kv("mkdir", sys2(39, "new", 0755));
    kv("mkdir existing", sys2(39, "new", 0755));
    kv("mkdir over a file", sys2(39, "in.txt", 0755));
    kv("mkdir missing parent", sys2(39, "no/such", 0755));
    kv("mkdirat", sys3(296, -100, "new/inner", 0755));
    int fd = sys3(5, "new/inner/f.txt", 0101, 0644);
    kv("create inside", fd >= 3);
    kv("write", sys3(4, fd, "0123456789", 10));
    kv("ftruncate shrink", sys2(93, fd, 4));
    kv("ftruncate grow", sys2(93, fd, 8));
    sys1(6, fd);
    fd = sys3(5, "new/inner/f.txt", 0, 0);
    int n = sys3(3, fd, buf, sizeof buf);
    kv("read back", n);
    for (int i = 0; i < n; i++) if (!buf[i]) buf[i] = '_';
    outn(buf, n);
    out("\n");
    kv("ftruncate read-only fd", sys2(93, fd, 0));
    kv("truncate by name", sys2(92, "sub/a.txt", 3));
    kv("truncate a dir", sys2(92, "sub", 0));
    kv("truncate negative", sys2(92, "sub/a.txt", -1));
    kv("rmdir not empty", sys1(40, "new"));
    kv("rmdir a file", sys1(40, "in.txt"));
    kv("unlink a dir", sys1(10, "sub"));
    kv("unlink missing", sys1(10, "missing"));
    kv("unlink open file", sys1(10, "new/inner/f.txt"));
    sys3(19, fd, 0, 0);
    kv("still readable", sys3(3, fd, buf, 4));
    kv("reopen unlinked", sys3(5, "new/inner/f.txt", 0, 0));
    kv("rmdir now empty", sys1(40, "new/inner"));
    kv("unlinkat AT_REMOVEDIR", sys3(301, -100, "new", 0x200));
    kv("unlinkat bad flags", sys3(301, -100, "in.txt", 1));
    kv("rename file", sys2(38, "sub/a.txt", "moved.txt"));
    kv("rename missing", sys2(38, "sub/a.txt", "x"));
    fd = sys3(5, "other.txt", 0101, 0644);
    sys3(4, fd, "other\n", 6);
    sys1(6, fd);
    kv("rename over a file", sys2(38, "other.txt", "moved.txt"));
    kv("rename file over dir", sys2(38, "moved.txt", "sub"));
    kv("rename dir over file", sys2(38, "sub", "moved.txt"));
    kv("rename dir into itself", sys2(38, "sub", "sub/b/deeper"));
    kv("renameat dir", sys4(302, -100, "sub", -100, "renamed"));
    kv("rename symlink", sys2(38, "link", "link2"));
    kv("unlink symlink", sys1(10, "link2"));
    kv("stat renamed", sys2(195, "renamed/b", buf));
    kv("symlink", sys2(83, "moved.txt", "sl"));
    kv("symlink existing", sys2(83, "moved.txt", "sl"));
    n = sys3(85, "sl", buf, sizeof buf);
    outn(buf, n > 0 ? n : 0);
    out("\n");
    kv("symlinkat", sys3(304, "renamed", -100, "dl"));
    kv("chmod", sys2(15, "moved.txt", 0600));
    u32 st[24];
    sys2(195, "sl", st);
    kv("mode through symlink", st[4]);
    u32 times[4] = {1000, 0, 1234567890, 0};
    kv("utimensat", sys4(320, -100, "moved.txt", times, 0));
    sys2(195, "moved.txt", st);
    kv("mtime", st[18]);
    kv("utimensat bad nsec", (times[3] = 2000000000u, sys4(320, -100, "moved.txt", times, 0)));
    kv("chown32", sys3(212, "moved.txt", 0, 0));
    kv("chown32 missing", sys3(212, "nope", 0, 0));
    kv("getgroups32 ok", sys2(205, 0, 0) >= 0);
    fd = sys3(5, "moved.txt", 0, 0);
    n = sys3(3, fd, buf, sizeof buf);
    outn(buf, n);
    exit_(0);
}
