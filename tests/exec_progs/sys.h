/* Raw i386 Linux system calls and tiny output helpers for the lguest exec
 * test programs: no libc, built with gcc -m32 -nostdlib -static, run both
 * natively and under `lguest exec` and their outputs compared. */
#ifndef SYSCALL_INSN
#define SYSCALL_INSN "int $0x80"
#endif
typedef unsigned int u32;
typedef unsigned long long u64;

static inline int sys6(int n, int a, int b, int c, int d, int e, int f)
{
    int r;
    /* f is pushed first, while an esp-relative operand still means what
     * the compiler meant; read after "push %ebp" it was off by 4. */
    __asm__ volatile("push %7\n\tpush %%ebp\n\tmov 4(%%esp), %%ebp\n\t" SYSCALL_INSN
                     "\n\tpop %%ebp\n\tadd $4, %%esp"
                     : "=a"(r) : "a"(n), "b"(a), "c"(b), "d"(c), "S"(d), "D"(e), "g"(f) : "memory");
    return r;
}
#define sys0(n) sys6(n, 0, 0, 0, 0, 0, 0)
#define sys1(n, a) sys6(n, (int)(a), 0, 0, 0, 0, 0)
#define sys2(n, a, b) sys6(n, (int)(a), (int)(b), 0, 0, 0, 0)
#define sys3(n, a, b, c) sys6(n, (int)(a), (int)(b), (int)(c), 0, 0, 0)
#define sys4(n, a, b, c, d) sys6(n, (int)(a), (int)(b), (int)(c), (int)(d), 0, 0)
#define sys5(n, a, b, c, d, e) sys6(n, (int)(a), (int)(b), (int)(c), (int)(d), (int)(e), 0)

static int slen(const char *s) { int n = 0; while (s[n]) n++; return n; }
static void out(const char *s) { sys3(4, 1, s, slen(s)); }
static void outn(const char *s, int n) { sys3(4, 1, s, n); }
static void num(long long v)
{
    char b[24];
    int i = 23;
    int neg = v < 0;
    unsigned long long u = neg ? -(unsigned long long)v : (unsigned long long)v;
    b[i] = 0;
    do { b[--i] = '0' + (int)(u % 10); u /= 10; } while (u);
    if (neg) b[--i] = '-';
    out(b + i);
}
/* "label: value\n" */
static void kv(const char *label, long long v) { out(label); out(": "); num(v); out("\n"); }
static void exit_(int code) { sys1(252, code); for (;;) ; }
