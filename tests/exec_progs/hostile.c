/* A hostile program for the host side of `lguest exec` (tests/test_exec_hostile.py).
 * argv[1] picks the attack:
 *   names DIR FILE  file names and modes aimed at --export: a 255-byte name, a
 *                   newline and a backslash in names, symlinks to the host's
 *                   DIR and FILE (absolute) and up out of the root, a setuid and
 *                   setgid file, a mode-0 file; "clash" a file, "clashdir" a dir
 *                   with a file in it (the test puts other types in their way)
 *   many N SIZE     N files of SIZE bytes each in /many
 *   flood           writes 64 KiB blocks to stdout forever
 *   stdin           says "reading", then reads stdin (blocking) forever */
#include "sys.h"

static char block[65536];

static int create(const char *path, int mode, const char *data, int n)
{
    int fd = sys3(5, path, 0101 | 01000, mode); /* O_WRONLY|O_CREAT|O_TRUNC */
    if (fd < 0)
        return fd;
    if (n)
        sys3(4, fd, data, n);
    sys1(6, fd);
    return 0;
}

static int same(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

static int atoi_(const char *s)
{
    int v = 0;
    while (*s >= '0' && *s <= '9')
        v = v * 10 + (*s++ - '0');
    return v;
}

static void names(char **argv)
{
    char longname[256];
    for (int i = 0; i < 255; i++)
        longname[i] = 'a' + i % 26;
    longname[255] = 0;
    kv("long", create(longname, 0644, "long\n", 5));
    kv("newline", create("new\nline", 0644, "nl\n", 3));
    kv("backslash", create("back\\slash", 0644, "bs\n", 3));
    kv("dash", create("-rf", 0644, "dash\n", 5));
    kv("symlink dir", sys2(83, argv[2], "hostdir"));
    kv("symlink file", sys2(83, argv[3], "hostfile"));
    kv("symlink up", sys2(83, "../../../../../../../../..", "up"));
    kv("suid", create("suid", 0755, "#!/bin/sh\n", 10));
    kv("chmod suid", sys2(15, "suid", 06755));
    kv("mode0", create("mode0", 0, "zero\n", 5));
    kv("clash", create("clash", 0644, "guest file\n", 11));
    kv("mkdir clashdir", sys2(39, "clashdir", 0755));
    kv("clashdir/inner", create("clashdir/inner", 0644, "inner\n", 6));
    /* the host's DIR through the guest's own symlink: a path in the guest's tree only */
    kv("through", create("hostdir/pwned", 0644, "pwned\n", 6));
}

static void many(int n, int size)
{
    char name[32] = "/many/f";
    sys2(39, "/many", 0755);
    for (int i = 0; i < size && i < (int)sizeof block; i++)
        block[i] = 'x';
    for (int i = 0; i < n; i++) {
        int v = i, l = 7;
        char d[12];
        int k = 0;
        do { d[k++] = '0' + v % 10; v /= 10; } while (v);
        while (k)
            name[l++] = d[--k];
        name[l] = 0;
        int fd = sys3(5, name, 0101, 0644);
        if (fd < 0) {
            kv("create failed at", i);
            kv("errno", fd);
            exit_(1);
        }
        for (int left = size; left > 0;) {
            int w = sys3(4, fd, block, left < (int)sizeof block ? left : (int)sizeof block);
            if (w <= 0) {
                kv("write failed at", i);
                kv("errno", w);
                exit_(1);
            }
            left -= w;
        }
        sys1(6, fd);
    }
    kv("created", n);
}

void __attribute__((used)) main_(int *sp)
{
    int argc = sp[0];
    char **argv = (char **)(sp + 1);
    const char *mode = argc > 1 ? argv[1] : "";
    if (same(mode, "names") && argc > 3) {
        names(argv);
    } else if (same(mode, "many") && argc > 3) {
        many(atoi_(argv[2]), atoi_(argv[3]));
    } else if (same(mode, "flood")) {
        for (int i = 0; i < (int)sizeof block; i++)
            block[i] = "0123456789abcdef"[i % 16];
        for (;;)
            sys3(4, 1, block, sizeof block);
    } else if (same(mode, "stdin")) {
        out("reading\n");
        for (;;)
            sys3(3, 0, block, sizeof block);
    } else {
        out("usage: hostile names DIR FILE | many N SIZE | flood | stdin\n");
        exit_(2);
    }
    exit_(0);
}

__asm__(".globl _start\n_start:\n\tpush %esp\n\tcall main_\n");
