/* A hostile lguest exec guest kernel (tests/test_exec_hostile.py): it boots
 * as the real one does (LGUEST_INIT), then lies to the host's console device
 * and result block.  The first argument after the program picks the lie:
 *   counters  NOTIFY the console 300 times claiming ~4 GiB in the stdout
 *             ring and asking for 4 GiB of stdin with a full stdin ring;
 *             result words outside guest RAM; then "exit" with status 7
 *   export    a crafted export image: a symlink to argv[2] (a host dir)
 *             then a file below it; then "exit" with status 0
 *   badexport an export list claimed past the end of guest RAM
 *   noexport  no export list, though the host asked for one
 *   shout     shuts down with a message holding a newline and terminal escapes
 * Built with the real kernel's flags and kernel.ld (PAGE_OFFSET + 1 MiB). */
#include "../../lguest/guestos/kernel/kernel.h"

struct lguest_data lguest_data __attribute__((aligned(4096)));


#define VA(pa) ((void *)((u32)(pa) + PAGE_OFFSET))
#define PA(va) ((u32)(va) - PAGE_OFFSET)

static inline u32 hcall(u32 call, u32 a1, u32 a2, u32 a3)
{
    u32 r;
    __asm__ volatile("vmcall" : "=a"(r) : "a"(call), "b"(a1), "c"(a2), "d"(a3) : "memory");
    return r;
}

u8 stack[16384] __attribute__((aligned(16)));
static u8 image[8192] __attribute__((aligned(4096)));
static u32 image_len;
static u32 export_list[1][2];

static int same(const char *a, const char *b)
{
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

static u32 slen(const char *s) { u32 n = 0; while (s[n]) n++; return n; }

static void put(const void *p, u32 n)
{
    for (u32 i = 0; i < n; i++)
        image[image_len++] = ((const u8 *)p)[i];
}

static void hex8(u32 v)
{
    char b[8];
    for (int i = 7; i >= 0; i--, v >>= 4) b[i] = "0123456789abcdef"[v & 15];
    put(b, 8);
}

static void entry(const char *name, u32 mode, const char *data)
{
    static const u8 zero[4];
    u32 nl = slen(name), size = slen(data);
    put("070701", 6);
    u32 f[13] = {2, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, nl + 1, 0};
    for (int i = 0; i < 13; i++) hex8(f[i]);
    put(name, nl + 1);
    put(zero, (4 - (110 + nl + 1) % 4) % 4);
    put(data, size);
    put(zero, (4 - size % 4) % 4);
}

static void __attribute__((noreturn)) done(u32 status)
{
    struct bootinfo *boot = VA(BOOTINFO_PA);
    boot->result = R_EXIT;
    boot->status = status;
    hcall(2, PA("exit"), 1, 0);    /* LHCALL_SHUTDOWN, LGUEST_SHUTDOWN_POWEROFF */
    for (;;)
        ;
}

void __attribute__((used, noreturn)) kmain(void)
{
    struct bootinfo *boot = VA(BOOTINFO_PA);
    volatile struct cons_page *cons = VA(CONS_PA);
    for (int i = 0; i < 64; i++)
        lguest_data.hcall_status[i] = 0xff;
    lguest_data.kernel_address = PAGE_OFFSET;
    lguest_data.syscall_vec = boot->syscall_vector;
    hcall(1, PA(&lguest_data), 0, 0);                  /* LHCALL_LGUEST_INIT */
    const char *argv[4] = {"", "", "", ""};
    const char *s = VA(boot->args_pa);
    for (u32 i = 0; i < boot->argc && i < 4; i++) {
        argv[i] = s;
        s += slen(s) + 1;
    }
    boot->export_pa = boot->export_len = 0;
    boot->counts_pa = boot->mem_size - 4;             /* straddles the end of RAM */
    boot->enosys_pa = 0xFFFFFFF0;
    if (same(argv[1], "counters")) {
        for (int i = 0; i < 300; i++) {
            cons->out_head[0] = cons->out_tail[0] + 0xFFFFFFF0u;
            cons->out_head[1] = cons->out_tail[1] - 1;
            cons->in_head = cons->in_tail + 0x80000000u;
            cons->in_want = 0xFFFFFFFFu;
            hcall(17, CONS_PA, 0, 0);                  /* LHCALL_NOTIFY */
        }
        cons->in_want = 0;
        boot->export_pa = 0xFFFFF000u;
        boot->export_len = 0x10000000u;
        done(7);
    }
    if (same(argv[1], "export")) {
        entry("esc", 0120777, argv[2]);
        entry("esc/pwned", 0100644, "pwned\n");
        entry("TRAILER!!!", 0, "");
        /* the export is a gather list of {pa, len} pieces (kernel.c export_tree): one piece */
        export_list[0][0] = PA(image);
        export_list[0][1] = image_len;
        boot->export_pa = PA(export_list);
        boot->export_len = 1;
        done(0);
    }
    if (same(argv[1], "badexport")) {
        boot->export_pa = boot->mem_size - 16;
        boot->export_len = 4096;
        done(0);
    }
    if (same(argv[1], "noexport"))
        done(0);
    if (same(argv[1], "shout"))
        hcall(2, PA("panic\n\x1b[2J\x1b]0;owned\x07"), 1, 0);
    done(99);
}

__asm__(".section .text.entry, \"ax\"\n.globl _start\n_start:\n\tmovl $stack + 16384, %esp\n\tcall kmain\n");
