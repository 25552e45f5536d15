/*
 * The lguest exec kernel: a small i386 lguest guest (ring 1) that runs one
 * static Linux i386 program at ring 3 and services its system calls itself.
 *
 * Boot, as an lguest Linux guest did: LGUEST_INIT (vmcall, patched by the
 * host), the IDT by LOAD_IDT_ENTRY (the syscall vectors as DPL-3 trap gates:
 * direct traps), SET_STACK, its own page tables (NEW_PGTABLE; SET_PTE or
 * FLUSH_TLB when a mapping goes away or loses rights), SET_CLOCKEVENT for a
 * periodic tick, HALT when sleeping, SHUTDOWN at the end.  The root
 * filesystem is a newc cpio the host put in memory, served in place and
 * writable in memory; stdin/stdout/stderr go through a console device page
 * with rings the kernel NOTIFYs.  No fork/exec/threads, no signal delivery.
 */
#include "kernel.h"

/* --- hypercalls (arch/x86/include/asm/lguest_hcall.h) ------------------- */
#define LHCALL_FLUSH_ASYNC      0
#define LHCALL_LGUEST_INIT      1
#define LHCALL_SHUTDOWN         2
#define LHCALL_NEW_PGTABLE      4
#define LHCALL_FLUSH_TLB        5
#define LHCALL_LOAD_IDT_ENTRY   6
#define LHCALL_SET_STACK        7
#define LHCALL_SET_CLOCKEVENT   9
#define LHCALL_HALT             10
#define LHCALL_SET_PTE          14
#define LHCALL_LOAD_TLS         16
#define LHCALL_NOTIFY           17

#define KERNEL_CS   0x61
#define KERNEL_DS   0x69
#define USER_CS     0x73
#define USER_DS     0x7b

#define PTE_P   1u
#define PTE_W   2u
#define PTE_U   4u
#define PTE_RESERVED 0x200u     /* AVL bit: a PROT_NONE page with no frame yet */

#define __va(p) ((void *)((u32)(p) + PAGE_OFFSET))
#define __pa(v) ((u32)(v) - PAGE_OFFSET)
#define NULL ((void *)0)

/* One vmcall in the whole kernel, out of line: the host patches each
 * vmcall site the first time it runs (an exit of its own), so inlined
 * copies cost an exit apiece at boot (eleven did). */
static u32 __attribute__((noinline)) hcall(u32 call, u32 a1, u32 a2, u32 a3)
{
    u32 r;
    __asm__ volatile("vmcall" : "=a"(r) : "a"(call), "b"(a1), "c"(a2), "d"(a3) : "memory");
    return r;
}


extern char noirq_start[], noirq_end[], boot_stack_top[], _end[];
extern void syscall_entry(void), timer_entry(void);
extern void fault_0(void), fault_1(void), fault_3(void), fault_4(void), fault_5(void), fault_6(void),
    fault_7(void), fault_8(void), fault_10(void), fault_11(void), fault_12(void), fault_13(void),
    fault_14(void), fault_16(void), fault_17(void), fault_19(void);

struct lguest_data lguest_data __attribute__((aligned(4096))) = {
    .hcall_status = {
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    },
    .kernel_address = PAGE_OFFSET,
};

static struct bootinfo *const boot = (struct bootinfo *)(BOOTINFO_PA + PAGE_OFFSET);
static volatile struct cons_page *const cons = (struct cons_page *)(CONS_PA + PAGE_OFFSET);
/* pgdir_page, syscall_counts and fds are global: entry.S's read/write
 * fast path reads them. */
u32 pgdir_page[1024] __attribute__((aligned(4096)));
static u32 *const pgdir = pgdir_page;
u32 syscall_counts[NSYSCALLS];
static u32 enosys_counts[NSYSCALLS];

/* --- small library ------------------------------------------------------ */
/* Plain loops, not `rep movsb`: an emulator (Unicorn's TCG) runs every
 * iteration of a rep string instruction as a block of its own, so a page
 * copied by `rep movsb` costs 4096 blocks, and word loops cost ~100.
 *
 * Under Unicorn 2.1.4 every guest *store* is a call into the emulator's
 * slow path (~30 ns; a load stays inline, ~1 ns: its dirty-page tracking
 * is stubbed out, so every writable page keeps TLB_NOTDIRTY), so the word
 * loop copies word by word: loading eight words first and storing them
 * after needs more registers than i386 has, and the spills are stores too
 * (a 2 MiB program cost 360,000 extra stack stores at exec). */
void *memcpy(void *d, const void *s, u32 n)
{
    u8 *dp = d;
    const u8 *sp = s;
    if ((((u32)dp | (u32)sp) & 3) == 0) {
        u32 *dw = (u32 *)dp;
        const u32 *sw = (const u32 *)sp;
        for (; n >= 32; n -= 32, dw += 8, sw += 8) {
            dw[0] = sw[0]; dw[1] = sw[1]; dw[2] = sw[2]; dw[3] = sw[3];
            dw[4] = sw[4]; dw[5] = sw[5]; dw[6] = sw[6]; dw[7] = sw[7];
        }
        for (; n >= 4; n -= 4) *dw++ = *sw++;
        dp = (u8 *)dw;
        sp = (const u8 *)sw;
    }
    while (n--) *dp++ = *sp++;
    return d;
}
void *memmove(void *d, const void *s, u32 n)
{
    u8 *dp = d;
    const u8 *sp = s;
    if (dp <= sp || dp >= sp + n)
        return memcpy(d, s, n);
    while (n--)
        dp[n] = sp[n];
    return d;
}
void *memset(void *d, int c, u32 n)
{
    u8 *dp = d;
    if (((u32)dp & 3) == 0) {
        u32 v = (u8)c * 0x01010101u;
        u32 *dw = (u32 *)dp;
        for (; n >= 32; n -= 32, dw += 8) {
            dw[0] = v; dw[1] = v; dw[2] = v; dw[3] = v; dw[4] = v; dw[5] = v; dw[6] = v; dw[7] = v;
        }
        for (; n >= 4; n -= 4) *dw++ = v;
        dp = (u8 *)dw;
    }
    while (n--) *dp++ = (u8)c;
    return d;
}
/* Short copies (a dd with bs=1) inline, without memcpy's call and return:
 * every return is a trip through the emulator's block lookup. */
static inline __attribute__((always_inline)) void copy_bytes(u8 *d, const u8 *s, u32 n)
{
    if (n <= 8) { while (n--) *d++ = *s++; }
    else memcpy(d, s, n);
}
static u32 kstrlen(const char *s) { u32 n = 0; while (s[n]) n++; return n; }
static int kmemeq(const void *a, const void *b, u32 n)
{
    const u8 *x = a, *y = b;
    while (n--) if (*x++ != *y++) return 0;
    return 1;
}
static int kstreq(const char *a, const char *b)
{
    while (*a && *a == *b) a++, b++;
    return *a == *b;
}

/* --- clock and console ---------------------------------------------------- */
static u64 now_ns(void)
{
    /* the host writes lguest_data.time at every interrupt it delivers: the
     * tick keeps it within tick_ns. */
    u32 s, ns;
    do {
        s = *(volatile u32 *)&lguest_data.time_sec;
        ns = *(volatile u32 *)&lguest_data.time_nsec;
    } while (s != *(volatile u32 *)&lguest_data.time_sec);
    return (u64)s * 1000000000ull + ns;
}

static int cur_stream = -1;     /* the stream with bytes not yet flushed, if any */

/* The tick: re-arm, and hand the host whatever output waits in the rings, so
 * batching delays a line by at most a tick (a program that prints and then
 * computes for a minute shows its line at once).  cur_stream stays: a write
 * this interrupted finishes into a ring the next flush drains in order. */
void do_timer(void)
{
    hcall(LHCALL_SET_CLOCKEVENT, boot->tick_ns, 0, 0);
    if (cons->out_head[0] != cons->out_tail[0] || cons->out_head[1] != cons->out_tail[1])
        hcall(LHCALL_NOTIFY, CONS_PA, 0, 0);
}

static void cons_flush(void)
{
    if (cons->out_head[0] != cons->out_tail[0] || cons->out_head[1] != cons->out_tail[1])
        hcall(LHCALL_NOTIFY, CONS_PA, 0, 0);
    cur_stream = -1;
}

/* Append to stdout (0) or stderr (1).  Order between the two is kept by
 * flushing one before the other gets bytes. */
static void cons_write(int s, const u8 *p, u32 n)
{
    if (cur_stream != s && cur_stream >= 0)
        cons_flush();
    cur_stream = s;
    u8 *ring = __va(RING_OUT_PA + s * RING_SIZE);
    while (n) {
        u32 used = cons->out_head[s] - cons->out_tail[s];
        u32 room = RING_SIZE - used;
        if (!room) {
            hcall(LHCALL_NOTIFY, CONS_PA, 0, 0);
            continue;
        }
        u32 at = cons->out_head[s] & (RING_SIZE - 1);
        u32 chunk = RING_SIZE - at;
        if (chunk > room) chunk = room;
        if (chunk > n) chunk = n;
        memcpy(ring + at, p, chunk);
        __asm__ volatile("" ::: "memory");
        cons->out_head[s] += chunk;
        p += chunk;
        n -= chunk;
    }
}

static void kputs(const char *s) { cons_write(1, (const u8 *)s, kstrlen(s)); }

static char *utoa(char *end, u32 v, int base)
{
    *--end = 0;
    do { *--end = "0123456789abcdef"[v % base]; v /= base; } while (v);
    return end;
}

static void kputu(u32 v, int base) { char b[16]; kputs(utoa(b + 16, v, base)); }

/* --- results and shutdown ------------------------------------------------- */
static void export_tree(void);

static void __attribute__((noreturn)) power_off(const char *why)
{
    cons_flush();
    if (boot->flags & BF_EXPORT)
        export_tree();
    hcall(LHCALL_SHUTDOWN, __pa(why), 1, 0);
    for (;;)
        ;
}

static void __attribute__((noreturn)) finish(u32 result, u32 status)
{
    boot->result = result;
    boot->status = status;
    power_off("exit");
}

static void __attribute__((noreturn)) panic(const char *msg, u32 v)
{
    kputs("lguest kernel: ");
    kputs(msg);
    kputs(" ");
    kputu(v, 16);
    kputs("\n");
    cons_flush();
    hcall(LHCALL_SHUTDOWN, __pa("kernel panic"), 1, 0);
    for (;;)
        ;
}

/* --- physical pages ------------------------------------------------------- */
static u32 bump_pa, limit_pa, free_list_pa, pages_free_listed, pages_used;

static int page_is_zero(const u32 *p)
{
    for (u32 i = 0; i < PAGE_SIZE / 4; i += 16)   /* 16 words a loop turn: every turn is a block */
        if (p[i] | p[i + 1] | p[i + 2] | p[i + 3] | p[i + 4] | p[i + 5] | p[i + 6] | p[i + 7]
            | p[i + 8] | p[i + 9] | p[i + 10] | p[i + 11] | p[i + 12] | p[i + 13] | p[i + 14] | p[i + 15])
            return 0;
    return 1;
}

static u32 alloc_page(void)       /* a zeroed page (physical address), 0 if none */
{
    u32 pa;
    if (free_list_pa) {
        pa = free_list_pa;
        free_list_pa = *(u32 *)__va(pa);
        pages_free_listed--;
        /* Stores are what costs here (see memcpy), loads are nearly
         * free: look before clearing (a freed page may be all zeros but
         * for the free-list link, already taken out above). */
        if (!page_is_zero(__va(pa)))
            memset(__va(pa), 0, PAGE_SIZE);
    } else if (bump_pa + PAGE_SIZE <= limit_pa) {
        /* Never used since boot, so zero: the host's memory starts
         * zeroed and it writes nothing between the kernel's end and
         * alloc_limit_pa (the root image and argv lie above it).  Not
         * even looked at: that was 128 blocks a page, half of the
         * blocks of `busybox true`, and a read fault on a host page the
         * first write faults in again. */
        pa = bump_pa;
        bump_pa += PAGE_SIZE;
    } else {
        return 0;
    }
    pages_used++;
    return pa;
}

/* A frame of the boot image (exec maps a program's read-only pages from
 * it): never freed, never written (see private_frame). */
static int image_frame(u32 pa)
{
    return pa >= (boot->image_pa & ~0xfffu) && pa - (boot->image_pa & ~0xfffu) < boot->image_len + (boot->image_pa & 0xfff);
}

static void free_page(u32 pa)
{
    *(u32 *)__va(pa) = free_list_pa;
    free_list_pa = pa;
    pages_free_listed++;
    pages_used--;
}

/* Contiguous pages (file buffers, kernel tables) come from the bump region only. */
static void *alloc_pages(u32 n)
{
    if (bump_pa + n * PAGE_SIZE > limit_pa || bump_pa + n * PAGE_SIZE < bump_pa)
        return NULL;
    u32 pa = bump_pa;
    bump_pa += n * PAGE_SIZE;
    pages_used += n;
    return __va(pa);
}

static void free_pages(void *p, u32 n)
{
    for (u32 i = 0; i < n; i++)
        free_page(__pa(p) + i * PAGE_SIZE);
}

static u8 *small_pool;
static u32 small_left;

static void *kmalloc(u32 n)      /* small and never freed: names, inodes' extras */
{
    n = (n + 15) & ~15u;
    if (n > PAGE_SIZE) return alloc_pages((n + PAGE_SIZE - 1) / PAGE_SIZE);
    if (n > small_left) {
        u32 pa = alloc_page();
        if (!pa) return NULL;
        small_pool = __va(pa);
        small_left = PAGE_SIZE;
    }
    void *r = small_pool;
    small_pool += n;
    small_left -= n;
    return r;
}

/* --- page tables ---------------------------------------------------------- */
static u32 tlb_pending[8], tlb_npending;
static int tlb_overflow;

static inline __attribute__((always_inline)) u32 *pte_of(u32 va, int create)
{
    u32 *pde = &pgdir[va >> 22];
    if (!(*pde & PTE_P)) {
        if (!create) return NULL;
        u32 pa = alloc_page();
        if (!pa) return NULL;
        *pde = pa | PTE_P | PTE_W | PTE_U;
    }
    return (u32 *)__va(*pde & ~0xfffu) + ((va >> 12) & 1023);
}

/* A present mapping changed or went away: the host (and its TLB) must hear. */
static void tlb_note(u32 va)
{
    if (tlb_npending < 8) tlb_pending[tlb_npending++] = va;
    else tlb_overflow = 1;
}

static void tlb_commit(void)
{
    if (tlb_overflow) {
        hcall(LHCALL_FLUSH_TLB, 0, 0, 0);       /* the user part: one call for many pages */
    } else {
        for (u32 i = 0; i < tlb_npending; i++) {
            u32 *pte = pte_of(tlb_pending[i], 0);
            hcall(LHCALL_SET_PTE, __pa(pgdir), tlb_pending[i], pte ? *pte : 0);
        }
    }
    tlb_npending = 0;
    tlb_overflow = 0;
}

static void unmap_page(u32 va)
{
    u32 *pte = pte_of(va, 0);
    if (!pte || !*pte) return;
    if (*pte & PTE_P) {
        if (!image_frame(*pte & ~0xfffu)) free_page(*pte & ~0xfffu);
        tlb_note(va);
    }
    *pte = 0;
}

static u32 prot_bits(u32 prot)   /* PROT_READ 1, PROT_WRITE 2, PROT_EXEC 4 */
{
    if (!(prot & 7)) return PTE_P;           /* PROT_NONE: present, supervisor only */
    return PTE_P | PTE_U | ((prot & 2) ? PTE_W : 0);
}

/* Map a fresh zeroed page at va (replacing what was there). */
static int map_new_page(u32 va, u32 prot)
{
    u32 *pte = pte_of(va, 1);
    if (!pte) return -12;
    if (*pte) unmap_page(va);
    if (!(prot & 7)) { *pte = PTE_RESERVED; return 0; }
    u32 pa = alloc_page();
    if (!pa) return -12;
    *pte = pa | prot_bits(prot);
    return 0;
}

/* Give the page at pte a frame of its own if it maps the boot image (a
 * copy, same rights): before anything may write to it.  0 or -ENOMEM. */
static int private_frame(u32 *pte)
{
    u32 pa = *pte & ~0xfffu;
    if (!(*pte & PTE_P) || !image_frame(pa)) return 0;
    u32 npa = alloc_page();
    if (!npa) return -12;
    memcpy(__va(npa), __va(pa), PAGE_SIZE);
    *pte = npa | (*pte & 0xfffu);
    return 0;
}

#define USER_TOP        0xC0000000u
#define STACK_TOP       0xBFFFF000u     /* the last page stays unmapped */
#define STACK_MAX       (8u << 20)
#define STACK_EAGER     (128u << 10)
#define MMAP_TOP        (STACK_TOP - STACK_MAX - (1u << 20))
static u32 stack_low;                   /* lowest mapped stack page */

/* The stack grows on demand down to STACK_TOP - STACK_MAX. */
static int grow_stack(u32 va)
{
    va &= ~0xfffu;
    if (va >= stack_low || va < STACK_TOP - STACK_MAX) return 0;
    for (u32 p = stack_low - PAGE_SIZE; p >= va; p -= PAGE_SIZE) {
        u32 *pte = pte_of(p, 0);
        if (pte && *pte) return 0;      /* something else is mapped there */
        if (map_new_page(p, 3)) return 0;
        stack_low = p;
    }
    return 1;
}

/* Is [p, p+n) user memory, writable if asked?  (copy_{to,from}_user's check:
 * a bad pointer is -EFAULT, never a kernel fault.) */
static int __attribute__((noinline)) user_ok_slow(u32 p, u32 n, int write);
static inline __attribute__((always_inline)) int user_ok(u32 p, u32 n, int write)
{
    if (!n) return 1;
    if (p >= USER_TOP || n > USER_TOP - p) return 0;
    if ((p & 0xfff) + n <= PAGE_SIZE) {   /* the common case: one page, no loop */
        u32 *pte = pte_of(p, 0);
        u32 e = pte ? *pte : 0;
        if ((e & (PTE_P | PTE_U | (write ? PTE_W : 0))) == (PTE_P | PTE_U | (write ? PTE_W : 0))) return 1;
    }
    /* out of line: inlined, its loop's registers would spill on the fast path */
    return user_ok_slow(p, n, write);
}

static int __attribute__((noinline)) user_ok_slow(u32 p, u32 n, int write)
{
    for (u32 va = p & ~0xfffu; va < p + n; va += PAGE_SIZE) {
        u32 *pte = pte_of(va, 0);
        u32 e = pte ? *pte : 0;
        if (!(e & PTE_P) || !(e & PTE_U)) {
            if (grow_stack(va)) continue;
            return 0;
        }
        if (write && !(e & PTE_W)) return 0;
        if (va + PAGE_SIZE < va) break;
    }
    return 1;
}

/* A user string into buf (at most max bytes with the NUL): length, or -EFAULT / -ENAMETOOLONG. */
static int user_str(u32 p, char *buf, u32 max)
{
    for (u32 i = 0; i < max; i++) {
        if (i == 0 || ((p + i) & 0xfff) == 0)
            if (!user_ok(p + i, 1, 0)) return -14;
        buf[i] = *(const char *)(p + i);
        if (!buf[i]) return i;
    }
    return -36;
}

/* --- the filesystem ------------------------------------------------------- */
#define S_IFMT   0170000
#define S_IFDIR  0040000
#define S_IFREG  0100000
#define S_IFLNK  0120000
#define S_IFCHR  0020000
#define S_ISDIR(m) (((m) & S_IFMT) == S_IFDIR)
#define S_ISREG(m) (((m) & S_IFMT) == S_IFREG)
#define S_ISLNK(m) (((m) & S_IFMT) == S_IFLNK)

enum { DEV_NONE, DEV_NULL, DEV_ZERO, DEV_URANDOM, DEV_STDIN, DEV_STDOUT, DEV_STDERR, DEV_TTY };

struct inode {
    u32 mode, ino, nlink, mtime, dev, rdev;
    const char *name;
    u32 namelen;
    struct inode *parent, *child, *next;
    u8 *data;
    u32 size, cap;              /* cap 0: data lies in the boot image (copy on write) */
    u32 synthetic;              /* made by the kernel (/dev, /tmp), not from the image */
};

#define MAX_INODES 16384
static struct inode inodes[MAX_INODES];
static u32 ninodes;
static struct inode *root, *cwd;
static char prog_path[4096];

static struct inode *new_inode(struct inode *parent, const char *name, u32 namelen, u32 mode)
{
    if (ninodes >= MAX_INODES) return NULL;
    struct inode *n = &inodes[ninodes++];
    memset(n, 0, sizeof *n);
    n->mode = mode;
    n->ino = ninodes + 1;
    n->nlink = S_ISDIR(mode) ? 2 : 1;
    n->name = name;
    n->namelen = namelen;
    n->parent = parent ? parent : n;
    if (parent) {
        /* append: getdents lists in image order */
        struct inode **pp = &parent->child;
        while (*pp) pp = &(*pp)->next;
        *pp = n;
        if (S_ISDIR(mode)) parent->nlink++;
    }
    return n;
}

static struct inode *dir_find(struct inode *dir, const char *name, u32 len)
{
    for (struct inode *c = dir->child; c; c = c->next)
        if (c->namelen == len && kmemeq(c->name, name, len))
            return c;
    return NULL;
}

static u32 hex8(const char *p)
{
    u32 v = 0;
    for (int i = 0; i < 8; i++) {
        char c = p[i];
        v = v * 16 + (c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : 0);
    }
    return v;
}

static struct inode *mkdir_p(const char *path, u32 len)
{
    struct inode *d = root;
    u32 i = 0;
    while (i < len) {
        while (i < len && path[i] == '/') i++;
        u32 s = i;
        while (i < len && path[i] != '/') i++;
        if (i == s) break;
        if (i - s == 1 && path[s] == '.') continue;
        struct inode *c = dir_find(d, path + s, i - s);
        if (!c) c = new_inode(d, path + s, i - s, S_IFDIR | 0755);
        if (!c || !S_ISDIR(c->mode)) return NULL;
        d = c;
    }
    return d;
}

static void fs_init(void)
{
    root = new_inode(NULL, "", 0, S_IFDIR | 0755);
    cwd = root;
    const char *p = __va(boot->image_pa), *end = p + boot->image_len;
    while (p + 110 <= end && kmemeq(p, "070701", 6)) {
        u32 mode = hex8(p + 14), mtime = hex8(p + 46), size = hex8(p + 54), namesize = hex8(p + 94);
        const char *name = p + 110;
        const char *data = name + ((110 + namesize + 3) & ~3u) - 110;
        if (data + size > end || name + namesize > end) break;
        u32 nlen = namesize ? namesize - 1 : 0;
        if (nlen == 10 && kmemeq(name, "TRAILER!!!", 10)) break;
        /* split "a/b/c" into the directory "a/b" and the name "c" */
        u32 slash = nlen;
        while (slash > 0 && name[slash - 1] != '/') slash--;
        struct inode *dir = mkdir_p(name, slash ? slash - 1 : 0);
        const char *base = name + slash;
        u32 blen = nlen - slash;
        if (dir && blen && !(blen == 1 && base[0] == '.')) {
            struct inode *n = dir_find(dir, base, blen);
            if (!n) n = new_inode(dir, base, blen, mode);
            if (n) {
                n->mode = mode;
                n->mtime = mtime;
                if (!S_ISDIR(mode)) {
                    n->data = (u8 *)data;
                    n->size = size;
                }
            }
        }
        p = data + ((size + 3) & ~3u);
    }
    /* /dev: the devices, over whatever the image had there */
    static const struct { const char *name; u32 dev; } devs[] = {
        {"null", DEV_NULL}, {"zero", DEV_ZERO}, {"urandom", DEV_URANDOM}, {"random", DEV_URANDOM},
        {"stdin", DEV_STDIN}, {"stdout", DEV_STDOUT}, {"stderr", DEV_STDERR}, {"tty", DEV_TTY},
    };
    int had_dev = dir_find(root, "dev", 3) != NULL, had_tmp = dir_find(root, "tmp", 3) != NULL;
    struct inode *dev = mkdir_p("dev", 3);
    for (u32 i = 0; dev && i < sizeof devs / sizeof devs[0]; i++) {
        u32 l = kstrlen(devs[i].name);
        struct inode *n = dir_find(dev, devs[i].name, l);
        if (!n) n = new_inode(dev, devs[i].name, l, S_IFCHR | 0666);
        if (n) {
            n->mode = S_IFCHR | 0666;
            n->dev = devs[i].dev;
            n->rdev = devs[i].dev == DEV_NULL ? 0x103 : devs[i].dev == DEV_ZERO ? 0x105 : 0x109;
        }
    }
    struct inode *tmp = mkdir_p("tmp", 3);
    if (dev && !had_dev) dev->synthetic = 1;
    if (tmp && !had_tmp) tmp->synthetic = 1;
}

/* Path lookup.  follow: follow a symlink in the last component.  Returns 0
 * and *res, or -errno.  With parent_out, a missing last component is not an
 * error: *res = NULL, and *parent_out, *last, *lastlen name it. */
static int namei_at(struct inode *start, const char *path, int follow, struct inode **res,
                    struct inode **parent_out, const char **last, u32 *lastlen, int depth)
{
    if (depth > 8) return -40;          /* ELOOP */
    if (!*path) return -2;
    struct inode *d = path[0] == '/' ? root : start;
    const char *p = path;
    for (;;) {
        while (*p == '/') p++;
        if (!*p) { *res = d; if (parent_out) *parent_out = d->parent, *last = ".", *lastlen = 1; return 0; }
        const char *s = p;
        while (*p && *p != '/') p++;
        u32 len = p - s;
        const char *q = p;
        while (*q == '/') q++;
        int is_last = !*q;
        if (!S_ISDIR(d->mode)) return -20;  /* ENOTDIR */
        if (len > 255) return -36;
        struct inode *c;
        if (len == 1 && s[0] == '.') c = d;
        else if (len == 2 && s[0] == '.' && s[1] == '.') c = d->parent;
        else c = dir_find(d, s, len);
        if (!c) {
            if (is_last && parent_out) {
                *res = NULL; *parent_out = d; *last = s; *lastlen = len;
                return 0;
            }
            return -2;
        }
        if (S_ISLNK(c->mode) && (!is_last || follow)) {
            char target[1024];
            if (c->size >= sizeof target) return -36;
            memcpy(target, c->data, c->size);
            target[c->size] = 0;
            struct inode *t;
            int r = namei_at(d, target, 1, &t, is_last ? parent_out : NULL, last, lastlen, depth + 1);
            if (r) return r;
            if (is_last) { *res = t; return 0; }
            if (!t) return -2;
            c = t;
        }
        if (is_last) {
            *res = c;
            if (parent_out) *parent_out = d, *last = s, *lastlen = len;
            return 0;
        }
        d = c;
    }
}

static int path_of(struct inode *n, char *buf, u32 size)   /* length with the NUL, or -ERANGE */
{
    char tmp[4096];
    u32 pos = sizeof tmp;
    tmp[--pos] = 0;
    if (n == root) tmp[--pos] = '/';
    while (n != root) {
        if (pos < n->namelen + 2) return -36;
        pos -= n->namelen;
        memcpy(tmp + pos, n->name, n->namelen);
        tmp[--pos] = '/';
        n = n->parent;
    }
    u32 len = sizeof tmp - pos;
    if (len > size) return -34;
    memcpy(buf, tmp + pos, len);
    return len;
}

/* Make room for size bytes in a regular file (copying image data out on the first write). */
static int __attribute__((noinline)) file_grow(struct inode *n, u32 size);
static inline __attribute__((always_inline)) int file_reserve(struct inode *n, u32 size)
{
    return size <= n->cap ? 0 : file_grow(n, size);
}

static int __attribute__((noinline)) file_grow(struct inode *n, u32 size)
{
    u32 cap = n->cap ? n->cap : PAGE_SIZE;
    while (cap < size) {
        if (cap >= 0x40000000u) return -27;  /* EFBIG */
        cap *= 2;
    }
    u8 *d = alloc_pages(cap / PAGE_SIZE);
    if (!d) return -28;                 /* ENOSPC: memory is the disk */
    memcpy(d, n->data, n->size);
    memset(d + n->size, 0, cap - n->size);
    if (n->cap) free_pages(n->data, n->cap / PAGE_SIZE);
    n->data = d;
    n->cap = cap;
    return 0;
}

/* --- files and descriptors ------------------------------------------------ */
#define O_ACCMODE   3
#define O_CREAT     0100
#define O_EXCL      0200
#define O_TRUNC     01000
#define O_APPEND    02000
#define O_DIRECTORY 0200000
#define O_NOFOLLOW  0400000
#define O_CLOEXEC   02000000

struct file {
    struct inode *ino;
    union {
        u64 pos;
        struct { u32 pos_lo, pos_hi; };   /* read/write store one word when they can */
    };
    u32 flags, refs;
};
#define MAX_FILES 512
#define MAX_FDS 256
static struct file files[MAX_FILES];
struct file *fds[MAX_FDS];
static u8 fd_cloexec[MAX_FDS];
static struct inode *stdio_inode[3];

/* entry.S's read/write fast path (see there) reads these structures at
 * the offsets kernel.h gives it, and loads through these stand-ins rather
 * than branch before each load: a closed fd reads fast_no_file (whose
 * inode is all zeros: not a regular file), a user address without a page
 * table reads fast_zero (no PTE bits).  Never written. */
_Static_assert(__builtin_offsetof(struct file, ino) == KF_INO, "KF_INO");
_Static_assert(__builtin_offsetof(struct file, pos_lo) == KF_POS_LO, "KF_POS_LO");
_Static_assert(__builtin_offsetof(struct file, pos_hi) == KF_POS_HI, "KF_POS_HI");
_Static_assert(__builtin_offsetof(struct file, flags) == KF_FLAGS, "KF_FLAGS");
_Static_assert(__builtin_offsetof(struct inode, mode) == KI_MODE, "KI_MODE");
_Static_assert(__builtin_offsetof(struct inode, dev) == KI_DEV, "KI_DEV");
_Static_assert(__builtin_offsetof(struct inode, data) == KI_DATA, "KI_DATA");
_Static_assert(__builtin_offsetof(struct inode, size) == KI_SIZE, "KI_SIZE");
_Static_assert(__builtin_offsetof(struct inode, cap) == KI_CAP, "KI_CAP");
_Static_assert(MAX_FDS == KMAX_FDS && KMAX_FDS <= 256 /* entry.S indexes fds by %bl */ && O_APPEND == 0x400 && S_IFREG == 0x8000 && S_IFMT == 0xf000, "fast path");
const struct inode fast_no_inode;
const struct file fast_no_file = { .ino = (struct inode *)&fast_no_inode };
const u32 fast_zero;

static struct file *file_new(struct inode *ino, u32 flags)
{
    for (u32 i = 0; i < MAX_FILES; i++)
        if (!files[i].refs) {
            files[i].ino = ino;
            files[i].pos = 0;
            files[i].flags = flags;
            files[i].refs = 1;
            return &files[i];
        }
    return NULL;
}

static int fd_alloc(struct file *f, u32 from)
{
    for (u32 i = from; i < MAX_FDS; i++)
        if (!fds[i]) {
            fds[i] = f;
            fd_cloexec[i] = 0;
            return i;
        }
    return -24;                         /* EMFILE */
}

static inline __attribute__((always_inline)) struct file *fd_get(s32 fd)
{
    if ((u32)fd >= MAX_FDS) return NULL;
    return fds[fd];
}

static void fd_close(u32 fd)
{
    struct file *f = fds[fd];
    fds[fd] = NULL;
    if (f && !--f->refs) f->ino = NULL;
}

/* --- random: splitmix64 from the host's seed (deterministic per run) ------ */
static u64 rng_state;
static u32 rand32(void)
{
    u64 z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (u32)((z ^ (z >> 31)) >> 32);
}
static void rand_fill(u8 *p, u32 n) { while (n--) *p++ = (u8)rand32(); }

/* --- console input -------------------------------------------------------- */
static u32 stdin_read(u8 *buf, u32 n)
{
    u8 *ring = __va(RING_IN_PA);
    if (cons->in_head == cons->in_tail) {
        if (cons->in_eof) {
            /* a tty's ^D that poll() saw ends this one read, as below */
            if (boot->flags & BF_STDIN_TTY) cons->in_eof = 0;
            return 0;
        }
        cons_flush();                   /* a prompt shows before we wait */
        cons->in_want = n < RING_SIZE ? n : RING_SIZE;
        hcall(LHCALL_NOTIFY, CONS_PA, 0, 0);
        cons->in_want = 0;
        if (cons->in_head == cons->in_tail) {
            u32 eof = cons->in_eof;
            if (boot->flags & BF_STDIN_TTY) cons->in_eof = 0;   /* ^D on a tty ends one read */
            (void)eof;
            return 0;
        }
    } else if (cons->in_head - cons->in_tail < n && !cons->in_eof) {
        /* the byte a poll took (and only that: a read takes all it asked
         * for): top up with what stdin has now, without waiting, or every
         * poll-then-read would get a byte */
        u32 have = cons->in_head - cons->in_tail;
        cons_flush();
        cons->in_want = n - have < RING_SIZE - have ? n - have : RING_SIZE - have;
        cons->in_nowait = 1;
        hcall(LHCALL_NOTIFY, CONS_PA, 0, 0);
        cons->in_want = 0;
        cons->in_nowait = 0;
    }
    u32 got = 0;
    while (got < n && cons->in_tail != cons->in_head) {
        buf[got++] = ring[cons->in_tail & (RING_SIZE - 1)];
        cons->in_tail++;
    }
    return got;
}

/* stdin's readiness for poll/select: 1 bytes wait in the ring, 2 end of
 * input, 0 neither.  With an empty ring the host is asked (NOTIFY with
 * in_want) -- for what its stdin holds right now (wait 0: poll's own timeout
 * does the waiting, on the guest clock) or until input or its end comes
 * (wait 1: an unbounded poll, as read waits).  One byte is asked for, not
 * more: the host's stdin keeps the rest, as a native poll leaves a pipe. */
static u32 stdin_ready(int wait)
{
    if (cons->in_head != cons->in_tail) return 1;
    if (cons->in_eof) return 2;
    cons_flush();                       /* a prompt shows before we look or wait */
    cons->in_want = 1;
    cons->in_nowait = !wait;
    hcall(LHCALL_NOTIFY, CONS_PA, 0, 0);
    cons->in_want = 0;
    cons->in_nowait = 0;
    if (cons->in_head != cons->in_tail) return 1;
    return cons->in_eof ? 2 : 0;
}

/* --- stat ----------------------------------------------------------------- */
struct kstat { u32 dev, ino, mode, nlink, rdev, size, blocks, mtime; };

static void stat_of(struct inode *n, struct kstat *st)
{
    st->dev = 0x801;
    st->ino = n->ino;
    st->mode = n->mode;
    st->nlink = n->nlink;
    st->rdev = n->rdev;
    st->size = S_ISDIR(n->mode) ? 4096 : (n->mode & S_IFMT) == S_IFCHR ? 0 : n->size;
    st->blocks = (st->size + 511) / 512;
    st->mtime = n->mtime;
}

static int put_stat64(u32 uaddr, struct kstat *st)
{
    if (!user_ok(uaddr, 96, 1)) return -14;
    u8 *b = (u8 *)uaddr;
    memset(b, 0, 96);
    *(u64 *)(b + 0) = st->dev;
    *(u32 *)(b + 12) = st->ino;
    *(u32 *)(b + 16) = st->mode;
    *(u32 *)(b + 20) = st->nlink;
    *(u64 *)(b + 32) = st->rdev;
    *(u64 *)(b + 44) = st->size;
    *(u32 *)(b + 52) = 4096;
    *(u64 *)(b + 56) = st->blocks;
    *(u32 *)(b + 64) = st->mtime;
    *(u32 *)(b + 72) = st->mtime;
    *(u32 *)(b + 80) = st->mtime;
    *(u64 *)(b + 88) = st->ino;
    return 0;
}

static int put_statx(u32 uaddr, struct kstat *st)
{
    if (!user_ok(uaddr, 256, 1)) return -14;
    u8 *b = (u8 *)uaddr;
    memset(b, 0, 256);
    *(u32 *)(b + 0) = 0x7ff;            /* STATX_BASIC_STATS */
    *(u32 *)(b + 4) = 4096;
    *(u32 *)(b + 16) = st->nlink;
    *(u16 *)(b + 28) = st->mode;
    *(u64 *)(b + 32) = st->ino;
    *(u64 *)(b + 40) = st->size;
    *(u64 *)(b + 48) = st->blocks;
    *(s64 *)(b + 64) = st->mtime;       /* atime */
    *(s64 *)(b + 96) = st->mtime;       /* ctime */
    *(s64 *)(b + 112) = st->mtime;      /* mtime */
    *(u32 *)(b + 128) = st->rdev >> 8;
    *(u32 *)(b + 132) = st->rdev & 0xff;
    *(u32 *)(b + 136) = st->dev >> 8;
    *(u32 *)(b + 140) = st->dev & 0xff;
    return 0;
}

/* --- the program: ELF loading and the initial stack ----------------------- */
static u32 brk_start, brk_cur;

struct elf_ehdr { u8 ident[16]; u16 type, machine; u32 version, entry, phoff, shoff, flags;
                  u16 ehsize, phentsize, phnum, shentsize, shnum, shstrndx; };
struct elf_phdr { u32 type, offset, vaddr, paddr, filesz, memsz, flags, align; };

static int exec_program(char *const *argv, u32 argc, char *const *envp, u32 envc, u32 *entry_out, u32 *sp_out)
{
    struct inode *n;
    int r = namei_at(root, argv[0], 1, &n, NULL, NULL, NULL, 0);
    if (r) finish(R_NOTFOUND, -r);
    if (!S_ISREG(n->mode)) finish(R_NOEXEC, 13);
    const struct elf_ehdr *eh = (const void *)n->data;
    if (n->size < sizeof *eh || !kmemeq(eh->ident, "\177ELF", 4) || eh->ident[4] != 1 || eh->ident[5] != 1
        || eh->machine != 3 || (eh->type != 2 && eh->type != 3) || eh->phentsize != sizeof(struct elf_phdr)
        || eh->phoff > n->size || (u32)eh->phnum * sizeof(struct elf_phdr) > n->size - eh->phoff)
        finish(R_NOEXEC, 8);
    const struct elf_phdr *ph = (const void *)(n->data + eh->phoff);
    u32 bias = eh->type == 3 ? 0x56555000u : 0, phdr_va = 0, end = 0;
    for (u32 i = 0; i < eh->phnum; i++)
        if (ph[i].type == 3) finish(R_NOEXEC, 8);      /* PT_INTERP: dynamically linked */
    for (u32 i = 0; i < eh->phnum; i++) {
        const struct elf_phdr *p = &ph[i];
        if (p->type == 6) phdr_va = p->vaddr + bias;   /* PT_PHDR */
        if (p->type != 1 || !p->memsz) continue;
        u32 va = p->vaddr + bias;
        if (p->filesz > p->memsz || p->offset > n->size || p->filesz > n->size - p->offset
            || va >= USER_TOP || p->memsz > USER_TOP - va)
            finish(R_NOEXEC, 8);
        if (!phdr_va && eh->phoff >= p->offset && eh->phoff < p->offset + p->filesz)
            phdr_va = va + (eh->phoff - p->offset);
        u32 prot = ((p->flags & 4) ? 1 : 0) | ((p->flags & 2) ? 2 : 0) | ((p->flags & 1) ? 4 : 0);
        for (u32 pg = va & ~0xfffu; pg < va + p->memsz; pg += PAGE_SIZE) {
            u32 *pte = pte_of(pg, 1);
            if (!pte) finish(R_NOMEM, 12);
            /* A read-only page the file fills whole, whose bytes lie
             * page-aligned in the boot image (the host places the image
             * so): map the image's frame rather than copy 4 KiB -- a
             * thousand guest stores, each a slow call under the emulator.
             * The image is never written: files copy their data out on the
             * first write, and mprotect and later segments give such a
             * page a private copy first (private_frame). */
            if (!(prot & 2) && !(*pte & PTE_P) && n->cap == 0 && pg >= va && pg + PAGE_SIZE - va <= p->filesz) {
                u32 src = (u32)(n->data + p->offset + (pg - va));
                if (!(src & 0xfff)) {
                    *pte = __pa(src) | prot_bits(prot | 1);
                    continue;
                }
            }
            if (private_frame(pte)) finish(R_NOMEM, 12);
            if (!(*pte & PTE_P)) {
                u32 pa = alloc_page();
                if (!pa) finish(R_NOMEM, 12);
                *pte = pa | prot_bits(prot | 1);
            } else if (prot & 2) {
                *pte |= PTE_W;
            }
            /* the file's bytes that fall in this page (through the kernel's map) */
            u32 lo = pg > va ? pg : va, hi = pg + PAGE_SIZE;
            if (hi > va + p->filesz) hi = va + p->filesz;
            if (lo < hi)
                memcpy((u8 *)__va(*pte & ~0xfffu) + (lo - pg), n->data + p->offset + (lo - va), hi - lo);
        }
        if (va + p->memsz > end) end = va + p->memsz;
    }
    brk_start = brk_cur = (end + 0xfff) & ~0xfffu;

    /* the stack: strings at the top, then auxv, envp, argv, argc */
    for (u32 va = STACK_TOP - STACK_EAGER; va < STACK_TOP; va += PAGE_SIZE)
        if (map_new_page(va, 3)) finish(R_NOMEM, 12);
    stack_low = STACK_TOP - STACK_EAGER;
    u32 sp = STACK_TOP;
    u32 total = 0;
    for (u32 i = 0; i < argc + envc; i++)
        total += kstrlen(i < argc ? argv[i] : envp[i - argc]) + 1;
    if (total + 4096 > STACK_EAGER) finish(R_NOMEM, 7);   /* E2BIG */
    u32 strs[argc + envc + 1];
    sp -= kstrlen(prog_path) + 1;
    u32 execfn = sp;
    memcpy((void *)sp, prog_path, kstrlen(prog_path) + 1);
    for (u32 i = 0; i < argc + envc; i++) {
        const char *s = i < argc ? argv[i] : envp[i - argc];
        u32 l = kstrlen(s) + 1;
        sp -= l;
        memcpy((void *)sp, s, l);
        strs[i] = sp;
    }
    sp -= 5;
    u32 platform = sp;
    memcpy((void *)sp, "i686", 5);
    sp &= ~15u;
    sp -= 16;
    u32 random = sp;
    rand_fill((u8 *)sp, 16);
    u32 auxv[] = {
        3, phdr_va, 4, sizeof(struct elf_phdr), 5, eh->phnum, 6, PAGE_SIZE, 7, 0, 8, 0,
        9, eh->entry + bias, 11, 0, 12, 0, 13, 0, 14, 0, 15, platform, 16, 0x178bfbff, 17, 100,
        23, 0, 25, random, 26, 0, 31, execfn, 0, 0,
    };
    u32 nwords = 1 + argc + 1 + envc + 1 + sizeof auxv / 4;
    sp = (sp - nwords * 4) & ~15u;
    u32 *w = (u32 *)sp;
    *w++ = argc;
    for (u32 i = 0; i < argc; i++) *w++ = strs[i];
    *w++ = 0;
    for (u32 i = 0; i < envc; i++) *w++ = strs[argc + i];
    *w++ = 0;
    memcpy(w, auxv, sizeof auxv);
    *entry_out = eh->entry + bias;
    *sp_out = sp;
    return 0;
}

/* --- export: the final tree as a newc cpio -------------------------------- */
/* Handed to the host as a gather list of pieces {pa, len} whose bytes,
 * joined, are the cpio: headers and names are built in ex_buf, but file
 * data is referenced where it lies (the boot image or the file's pages),
 * not copied -- every guest store is a slow call under the emulator, and a
 * root holding a 2 MiB program would cost half a million of them. */
static u8 *ex_buf;
static u32 ex_len, ex_cap;
static u32 (*ex_list)[2];
static u32 ex_n, ex_ncap;

/* Add [pa, pa + n) to the list, joined to the last piece when it follows
 * it.  The measuring pass (ex_list NULL) counts without joining: an upper
 * bound for the filling pass. */
static void ex_piece(u32 pa, u32 n)
{
    if (!n) return;
    if (!ex_list) { ex_n++; return; }
    if (ex_n && ex_list[ex_n - 1][0] + ex_list[ex_n - 1][1] == pa) { ex_list[ex_n - 1][1] += n; return; }
    if (ex_n < ex_ncap) { ex_list[ex_n][0] = pa; ex_list[ex_n][1] = n; ex_n++; }
}

static void ex_put(const void *p, u32 n)
{
    if (ex_buf && ex_len + n <= ex_cap) {
        memcpy(ex_buf + ex_len, p, n);
        ex_piece(__pa(ex_buf + ex_len), n);
    } else {
        ex_piece(0, n);
    }
    ex_len += n;
}

static void ex_hex(u32 v)
{
    char b[8];
    for (int i = 7; i >= 0; i--, v >>= 4) b[i] = "0123456789abcdef"[v & 15];
    ex_put(b, 8);
}

static void ex_entry(const char *name, u32 namelen, u32 mode, u32 ino, u32 mtime, const u8 *data, u32 size)
{
    static const u8 zero[4];
    ex_put("070701", 6);
    u32 fields[13] = {ino, mode, 0, 0, 1, mtime, size, 0, 0, 0, 0, namelen + 1, 0};
    for (int i = 0; i < 13; i++) ex_hex(fields[i]);
    ex_put(name, namelen);
    ex_put(zero, 1);
    ex_put(zero, (4 - (110 + namelen + 1) % 4) % 4);
    ex_piece(__pa(data), size);         /* in place: the data is contiguous in RAM */
    ex_put(zero, (4 - size % 4) % 4);
}

/* Exported: all but devices, and the kernel's own directories only when
 * the program left something in them. */
static int exportable(struct inode *n)
{
    if (n->dev) return 0;
    if (!n->synthetic) return 1;
    for (struct inode *c = n->child; c; c = c->next)
        if (exportable(c)) return 1;
    return 0;
}

static void ex_tree(struct inode *d, char *path, u32 plen)
{
    for (struct inode *c = d->child; c; c = c->next) {
        if (!exportable(c) || plen + c->namelen + 2 > 4096) continue;
        u32 l = plen;
        if (l) path[l++] = '/';
        memcpy(path + l, c->name, c->namelen);
        l += c->namelen;
        int reg = S_ISREG(c->mode) || S_ISLNK(c->mode);
        ex_entry(path, l, c->mode, c->ino, c->mtime, reg ? c->data : NULL, reg ? c->size : 0);
        if (S_ISDIR(c->mode)) ex_tree(c, path, l);
    }
}

static void export_tree(void)
{
    static char path[4096];
    ex_buf = NULL;
    ex_list = NULL;
    ex_len = ex_n = 0;
    ex_tree(root, path, 0);             /* measure */
    ex_entry("TRAILER!!!", 10, 0, 0, 0, NULL, 0);
    ex_cap = (ex_len + PAGE_SIZE - 1) & ~0xfffu;
    ex_ncap = ex_n;
    u32 list_bytes = (ex_ncap * 8 + PAGE_SIZE - 1) & ~0xfffu;
    ex_buf = alloc_pages((ex_cap + list_bytes) / PAGE_SIZE);
    boot->export_pa = 0;
    boot->export_len = 0;
    if (!ex_buf) return;
    ex_list = (void *)(ex_buf + ex_cap);
    ex_len = ex_n = 0;
    ex_tree(root, path, 0);
    ex_entry("TRAILER!!!", 10, 0, 0, 0, NULL, 0);
    boot->export_pa = __pa(ex_list);
    boot->export_len = ex_n;
}

/* --- system calls --------------------------------------------------------- */
struct regs { u32 ebx, ecx, edx, esi, edi, ebp, eax, eip, cs, eflags, esp, ss; };

#define ENOENT 2
#define EBADF 9
#define ENOMEM 12
#define EFAULT 14
#define EEXIST 17
#define ENOTDIR 20
#define EISDIR 21
#define EINVAL 22
#define ENOTTY 25
#define ESPIPE 29
#define ERANGE 34
#define ENOSYS 38

static u32 sig_actions[65][5];
static u32 sig_mask[2];
static u32 tls_desc[3][2];

/* Devices out of line (see user_ok_slow); buf was checked. */
static s32 __attribute__((noinline)) dev_read(u32 dev, u32 buf, u32 n)
{
    switch (dev) {
    case DEV_NULL: return 0;
    case DEV_ZERO: memset((void *)buf, 0, n); return n;
    case DEV_URANDOM: rand_fill((u8 *)buf, n); return n;
    case DEV_STDIN: case DEV_TTY: return stdin_read((u8 *)buf, n);
    }
    return -EBADF;                      /* DEV_STDOUT, DEV_STDERR */
}

static s32 __attribute__((noinline)) dev_write(u32 dev, u32 buf, u32 n)
{
    switch (dev) {
    case DEV_NULL: case DEV_ZERO: case DEV_URANDOM: return n;
    case DEV_STDOUT: case DEV_TTY:
        cons_write(0, (const u8 *)buf, n);
        if (boot->flags & BF_STDOUT_TTY) cons_flush();
        return n;
    case DEV_STDERR:
        cons_write(1, (const u8 *)buf, n);
        if (boot->flags & BF_STDERR_TTY) cons_flush();
        return n;
    }
    return -EBADF;                      /* DEV_STDIN */
}

/* The buffer is checked only for the bytes that move, as Linux does: its
 * range check (access_ok) lets every 32-bit pointer through on an x86-64
 * host, so a read at the end of a file, of a directory or of /dev/null,
 * and a write to /dev/null or /dev/zero, never look at it. */
static inline __attribute__((always_inline)) s32 do_read(struct file *f, u32 buf, u32 n)
{
    if ((f->flags & O_ACCMODE) == 1) return -EBADF;
    struct inode *ino = f->ino;
    if (ino->dev) {
        if (ino->dev == DEV_NULL) return 0;
        if (!user_ok(buf, n, 1)) return -EFAULT;
        return dev_read(ino->dev, buf, n);
    }
    if (S_ISDIR(ino->mode)) return -EISDIR;
    if (f->pos >= ino->size) return 0;
    u32 avail = ino->size - (u32)f->pos;
    if (n > avail) n = avail;
    if (!user_ok(buf, n, 1)) return -EFAULT;
    copy_bytes((u8 *)buf, ino->data + (u32)f->pos, n);
    /* pos < size < 2^32 and n <= size - pos: the high word stays */
    f->pos_lo += n;
    return n;
}

static inline __attribute__((always_inline)) s32 do_write(struct file *f, u32 buf, u32 n)
{
    if ((f->flags & O_ACCMODE) == 0) return -EBADF;
    struct inode *ino = f->ino;
    if (ino->dev == DEV_NULL || ino->dev == DEV_ZERO) return n;
    if (!user_ok(buf, n, 0)) return -EFAULT;
    if (ino->dev) return dev_write(ino->dev, buf, n);
    if (S_ISDIR(ino->mode)) return -EISDIR;
    if (f->flags & O_APPEND) f->pos = ino->size;
    /* pos + n past 2^31 - 1 is EFBIG; in 32-bit words (a u64 sum here
     * would take four registers, and spilled registers are stores) */
    u32 pos = f->pos_lo;
    if (f->pos_hi || pos > 0x7fffffffu || n > 0x7fffffffu - pos) return -27;
    u32 endpos = pos + n;
    int r = file_reserve(ino, endpos);
    if (r) return r;
    copy_bytes(ino->data + pos, (const u8 *)buf, n);
    f->pos_lo = endpos;         /* the high word is 0 (checked above) */
    if (endpos > ino->size) ino->size = endpos;
    return n;
}

static struct inode *fd_dir(s32 dirfd, s32 *err)
{
    if (dirfd == -100) return cwd;
    struct file *f = fd_get(dirfd);
    if (!f) { *err = -EBADF; return NULL; }
    if (!S_ISDIR(f->ino->mode)) { *err = -ENOTDIR; return NULL; }
    return f->ino;
}

static s32 do_openat(s32 dirfd, u32 upath, u32 flags, u32 mode)
{
    char path[4096];
    s32 r = user_str(upath, path, sizeof path);
    if (r < 0) return r;
    if (r == 0) return -ENOENT;
    struct inode *start = path[0] == '/' ? root : fd_dir(dirfd, &r);
    if (!start) return r;
    struct inode *n, *parent;
    const char *last;
    u32 lastlen;
    r = namei_at(start, path, !(flags & O_NOFOLLOW) && !((flags & O_CREAT) && (flags & O_EXCL)), &n,
                 (flags & O_CREAT) ? &parent : NULL, &last, &lastlen, 0);
    if (r) return r;
    if (n && (flags & O_CREAT) && (flags & O_EXCL)) return -EEXIST;
    if (!n) {
        if (path[kstrlen(path) - 1] == '/') return -EISDIR;
        char *name = kmalloc(lastlen);
        if (!name) return -ENOMEM;
        memcpy(name, last, lastlen);
        n = new_inode(parent, name, lastlen, S_IFREG | (mode & 07777));
        if (!n) return -28;
        n->mtime = boot->epoch_sec + (u32)(now_ns() / 1000000000ull);
    }
    if (S_ISLNK(n->mode)) return -40;
    if ((flags & O_DIRECTORY) && !S_ISDIR(n->mode)) return -ENOTDIR;
    if (S_ISDIR(n->mode) && (flags & O_ACCMODE)) return -EISDIR;
    if (S_ISREG(n->mode) && (flags & O_TRUNC) && (flags & O_ACCMODE)) n->size = 0;
    if (n->dev == DEV_STDIN || n->dev == DEV_STDOUT || n->dev == DEV_STDERR) {
        /* /dev/std*: the same file as the descriptor (Linux reopens /proc/self/fd/N) */
        u32 which = n->dev - DEV_STDIN;
        if (fds[which]) {
            fds[which]->refs++;
            r = fd_alloc(fds[which], 0);
            if (r < 0) fds[which]->refs--;
            return r;
        }
    }
    struct file *f = file_new(n, flags);
    if (!f) return -23;                 /* ENFILE */
    r = fd_alloc(f, 0);
    if (r < 0) { f->refs = 0; return r; }
    if (flags & O_CLOEXEC) fd_cloexec[r] = 1;
    return r;
}

static s32 lookup_at(s32 dirfd, u32 upath, int follow, int empty_ok, struct inode **res)
{
    char path[4096];
    s32 r = user_str(upath, path, sizeof path);
    if (r < 0) return r;
    if (r == 0) {
        if (!empty_ok) return -ENOENT;
        if (dirfd == -100) { *res = cwd; return 0; }
        struct file *f = fd_get(dirfd);
        if (!f) return -EBADF;
        *res = f->ino;
        return 0;
    }
    struct inode *start = path[0] == '/' ? root : fd_dir(dirfd, &r);
    if (!start) return r;
    return namei_at(start, path, follow, res, NULL, NULL, NULL, 0);
}

/* Names: mkdir, unlink, rmdir, rename, truncate -- the tree is memory. */
#define ENOTEMPTY 39
#define EXDEV 18

/* The parent directory and last name of a path that may not exist yet. */
static s32 lookup_parent(s32 dirfd, u32 upath, char *path, struct inode **parent, const char **last, u32 *lastlen,
                         struct inode **res)
{
    s32 r = user_str(upath, path, 4096);
    if (r < 0) return r;
    if (r == 0) return -ENOENT;
    struct inode *start = path[0] == '/' ? root : fd_dir(dirfd, &r);
    if (!start) return r;
    r = namei_at(start, path, 0, res, parent, last, lastlen, 0);
    if (r) return r;
    if ((*lastlen == 1 && (*last)[0] == '.') || (*lastlen == 2 && (*last)[0] == '.' && (*last)[1] == '.'))
        return *res ? -EINVAL : -ENOENT;
    return 0;
}

static void dir_remove(struct inode *n)
{
    struct inode *p = n->parent, **pp = &p->child;
    while (*pp && *pp != n) pp = &(*pp)->next;
    if (*pp) *pp = n->next;
    n->next = NULL;
    if (S_ISDIR(n->mode)) p->nlink--;
}

static void dir_insert(struct inode *dir, struct inode *n)
{
    struct inode **pp = &dir->child;
    while (*pp) pp = &(*pp)->next;
    *pp = n;
    n->parent = dir;
    n->synthetic = 0;
    if (S_ISDIR(n->mode)) dir->nlink++;
}

static s32 do_mkdirat(s32 dirfd, u32 upath, u32 mode)
{
    static char path[4096];
    struct inode *parent, *n;
    const char *last;
    u32 lastlen;
    s32 r = lookup_parent(dirfd, upath, path, &parent, &last, &lastlen, &n);
    if (r) return r == -EINVAL ? -EEXIST : r;
    if (n) return -EEXIST;
    char *name = kmalloc(lastlen);
    if (!name) return -ENOMEM;
    memcpy(name, last, lastlen);
    n = new_inode(parent, name, lastlen, S_IFDIR | (mode & 07777 & ~022));
    if (!n) return -28;
    n->mtime = boot->epoch_sec + (u32)(now_ns() / 1000000000ull);
    for (struct inode *d = parent; d != root && d->synthetic; d = d->parent) d->synthetic = 0;
    return 0;
}

static s32 do_unlinkat(s32 dirfd, u32 upath, u32 flags)
{
    static char path[4096];
    struct inode *parent, *n;
    const char *last;
    u32 lastlen;
    if (flags & ~0x200u) return -EINVAL;
    s32 r = lookup_parent(dirfd, upath, path, &parent, &last, &lastlen, &n);
    if (r) return r == -EINVAL && (flags & 0x200) ? -EINVAL : r == -EINVAL ? -EISDIR : r;
    if (!n) return -ENOENT;
    if (flags & 0x200) {                /* AT_REMOVEDIR */
        if (!S_ISDIR(n->mode)) return -ENOTDIR;
        if (n == root || n == cwd) return -16;      /* EBUSY */
        if (n->child) return -ENOTEMPTY;
    } else if (S_ISDIR(n->mode)) {
        return -EISDIR;
    }
    dir_remove(n);
    n->nlink = 0;
    return 0;
}

static s32 do_renameat(s32 olddir, u32 oldp, s32 newdir, u32 newp)
{
    static char p1[4096], p2[4096];
    struct inode *op, *on, *np, *nn;
    const char *ol, *nl;
    u32 oll, nll;
    s32 r = lookup_parent(olddir, oldp, p1, &op, &ol, &oll, &on);
    if (r) return r == -EINVAL ? -16 : r;
    if (!on) return -ENOENT;
    r = lookup_parent(newdir, newp, p2, &np, &nl, &nll, &nn);
    if (r) return r == -EINVAL ? -16 : r;
    if (on == nn) return 0;
    for (struct inode *d = np; ; d = d->parent) {    /* a directory into itself */
        if (d == on) return -EINVAL;
        if (d == root) break;
    }
    if (nn) {
        if (S_ISDIR(on->mode) && !S_ISDIR(nn->mode)) return -ENOTDIR;
        if (!S_ISDIR(on->mode) && S_ISDIR(nn->mode)) return -EISDIR;
        if (S_ISDIR(nn->mode) && nn->child) return -ENOTEMPTY;
        dir_remove(nn);
        nn->nlink = 0;
    }
    char *name = kmalloc(nll);
    if (!name) return -ENOMEM;
    memcpy(name, nl, nll);
    dir_remove(on);
    on->name = name;
    on->namelen = nll;
    dir_insert(np, on);
    for (struct inode *d = np; d != root && d->synthetic; d = d->parent) d->synthetic = 0;
    return 0;
}

static s32 do_symlinkat(u32 utarget, s32 dirfd, u32 upath)
{
    static char target[4096], path[4096];
    s32 tl = user_str(utarget, target, sizeof target);
    if (tl < 0) return tl;
    if (tl == 0) return -ENOENT;
    struct inode *parent, *n;
    const char *last;
    u32 lastlen;
    s32 r = lookup_parent(dirfd, upath, path, &parent, &last, &lastlen, &n);
    if (r) return r == -EINVAL ? -EEXIST : r;
    if (n) return -EEXIST;
    char *name = kmalloc(lastlen);
    u8 *data = kmalloc(tl);
    if (!name || !data) return -ENOMEM;
    memcpy(name, last, lastlen);
    memcpy(data, target, tl);
    n = new_inode(parent, name, lastlen, S_IFLNK | 0777);
    if (!n) return -28;
    n->data = data;
    n->size = tl;             /* cap 0: never written through, never freed */
    n->mtime = boot->epoch_sec + (u32)(now_ns() / 1000000000ull);
    for (struct inode *d = parent; d != root && d->synthetic; d = d->parent) d->synthetic = 0;
    return 0;
}

/* utimensat: only mtime is kept (atime/ctime read back as mtime). */
static s32 do_utimensat(s32 dirfd, u32 upath, u32 times, u32 flags, int wide)
{
    struct inode *n;
    s32 r;
    if (upath) {
        if ((r = lookup_at(dirfd, upath, !(flags & 0x100), flags & 0x1000, &n))) return r;
    } else {
        struct file *f = fd_get(dirfd);
        if (!f) return -EBADF;
        n = f->ino;
    }
    u32 sec = boot->epoch_sec + (u32)(now_ns() / 1000000000ull);
    if (times) {
        u32 sz = wide ? 16 : 8;
        if (!user_ok(times, 2 * sz, 0)) return -EFAULT;
        const u32 *m = (const u32 *)(times + sz);         /* [1] is the mtime */
        u32 nsec = wide ? m[2] : m[1];
        if (nsec == 0x3ffffffe) return 0;                 /* UTIME_OMIT */
        if (nsec != 0x3fffffff) {                         /* not UTIME_NOW */
            if (nsec >= 1000000000u) return -EINVAL;
            sec = m[0];
        }
    }
    n->mtime = sec;
    return 0;
}

static s32 do_chmod(struct inode *n, u32 mode)
{
    if (n->dev) return 0;
    n->mode = (n->mode & S_IFMT) | (mode & 07777);
    return 0;
}

static s32 do_truncate(struct inode *n, s64 len)
{
    if (S_ISDIR(n->mode)) return -EISDIR;
    if (!S_ISREG(n->mode)) return -EINVAL;
    if (len < 0) return -EINVAL;
    if (len > 0x7fffffff) return -27;
    if ((u32)len > n->size) {
        s32 r = file_reserve(n, (u32)len);
        if (r) return r;
        memset(n->data + n->size, 0, (u32)len - n->size);
    }
    n->size = (u32)len;
    return 0;
}

static s32 do_lseek(struct file *f, s64 off, u32 whence, u64 *res)
{
    struct inode *ino = f->ino;
    if (ino->dev >= DEV_STDIN) return -ESPIPE;
    s64 base = whence == 0 ? 0 : whence == 1 ? (s64)f->pos : whence == 2 ? (s64)ino->size : -1;
    if (whence > 2) return -EINVAL;
    if (base + off < 0) return -EINVAL;
    f->pos = base + off;
    *res = f->pos;
    return 0;
}

static s32 do_getdents64(struct file *f, u32 buf, u32 n)
{
    struct inode *d = f->ino;
    if (!S_ISDIR(d->mode)) return -ENOTDIR;
    if (!user_ok(buf, n, 1)) return -EFAULT;
    u32 idx = 0, out = 0;
    struct inode *c = d->child;
    for (;; idx++) {
        const char *name;
        u32 len, ino, type;
        struct inode *e;
        if (idx == 0) { e = d; name = "."; len = 1; }
        else if (idx == 1) { e = d->parent; name = ".."; len = 2; }
        else { if (!c) break; e = c; name = c->name; len = c->namelen; c = c->next; }
        if (idx < f->pos) continue;
        ino = e->ino;
        type = S_ISDIR(e->mode) ? 4 : S_ISLNK(e->mode) ? 10 : (e->mode & S_IFMT) == S_IFCHR ? 2 : 8;
        u32 reclen = (19 + len + 1 + 7) & ~7u;
        if (out + reclen > n) {
            if (!out) return -EINVAL;
            break;
        }
        u8 *r = (u8 *)buf + out;
        *(u64 *)r = ino;
        *(u64 *)(r + 8) = idx + 1;
        *(u16 *)(r + 16) = reclen;
        r[18] = type;
        memcpy(r + 19, name, len);
        memset(r + 19 + len, 0, reclen - 19 - len);
        out += reclen;
        f->pos = idx + 1;
    }
    return out;
}

static u32 find_free_range(u32 len, u32 hint)
{
    if (hint && !(hint & 0xfff) && hint < USER_TOP && len <= USER_TOP - hint) {
        u32 ok = 1;
        for (u32 va = hint; va < hint + len && ok; va += PAGE_SIZE) {
            u32 *pte = pte_of(va, 0);
            if ((pte && *pte) || (va >= STACK_TOP - STACK_MAX)) ok = 0;
        }
        if (ok) return hint;
    }
    /* top-down from below the stack's reservation */
    u32 top = MMAP_TOP;
    while (top >= len + brk_cur + (64u << 20) || top >= len + 0x1000000u) {
        u32 start = top - len, va;
        for (va = top; va > start; va -= PAGE_SIZE) {
            u32 *pte = pte_of(va - PAGE_SIZE, 0);
            if (pte && *pte) break;
        }
        if (va == start) return start;
        top = va - PAGE_SIZE;
        if (top < 0x1000000u) break;
    }
    return 0;
}

static s32 do_mmap(u32 addr, u32 len, u32 prot, u32 flags, s32 fd, u32 pgoff)
{
    if (!len) return -EINVAL;
    if (len > USER_TOP) return -ENOMEM;
    len = (len + 0xfff) & ~0xfffu;
    struct file *f = NULL;
    if (!(flags & 0x20)) {              /* MAP_ANONYMOUS */
        f = fd_get(fd);
        if (!f) return -EBADF;
        if (!S_ISREG(f->ino->mode) && f->ino->dev != DEV_ZERO) return -19;   /* ENODEV */
    }
    if (flags & 0x10) {                 /* MAP_FIXED */
        if (addr & 0xfff || addr >= USER_TOP || len > USER_TOP - addr) return -EINVAL;
    } else {
        addr = find_free_range(len, addr & ~0xfffu);
        if (!addr) return -ENOMEM;
    }
    for (u32 va = addr; va < addr + len; va += PAGE_SIZE) {
        if (map_new_page(va, (f && (prot & 7) == 0) ? 0 : prot) < 0) {
            for (u32 v = addr; v < va; v += PAGE_SIZE) unmap_page(v);
            tlb_commit();
            return -ENOMEM;
        }
    }
    if (f && S_ISREG(f->ino->mode)) {
        u64 off = (u64)pgoff << 12;
        struct inode *ino = f->ino;
        for (u32 va = addr; va < addr + len && off < ino->size; va += PAGE_SIZE, off += PAGE_SIZE) {
            u32 *pte = pte_of(va, 0);
            if (!(*pte & PTE_P)) continue;
            u32 n = ino->size - (u32)off;
            if (n > PAGE_SIZE) n = PAGE_SIZE;
            memcpy(__va(*pte & ~0xfffu), ino->data + (u32)off, n);
        }
    }
    tlb_commit();
    return addr;
}

static s32 do_munmap(u32 addr, u32 len)
{
    if (addr & 0xfff || !len || addr >= USER_TOP || len > USER_TOP - addr) return -EINVAL;
    len = (len + 0xfff) & ~0xfffu;
    for (u32 va = addr; va < addr + len; va += PAGE_SIZE) unmap_page(va);
    tlb_commit();
    return 0;
}

static s32 do_mprotect(u32 addr, u32 len, u32 prot)
{
    if (addr & 0xfff || addr >= USER_TOP || len > USER_TOP - addr) return -EINVAL;
    len = (len + 0xfff) & ~0xfffu;
    for (u32 va = addr; va < addr + len; va += PAGE_SIZE) {
        u32 *pte = pte_of(va, 0);
        if (!pte || !*pte) return -ENOMEM;
    }
    for (u32 va = addr; va < addr + len; va += PAGE_SIZE) {
        u32 *pte = pte_of(va, 0);
        if (*pte & PTE_RESERVED) {
            if ((prot & 7) && map_new_page(va, prot)) { tlb_commit(); return -ENOMEM; }
            continue;
        }
        if ((prot & 2) && private_frame(pte)) { tlb_commit(); return -ENOMEM; }
        u32 e = (*pte & ~0xfffu) | prot_bits(prot);
        if (e != (*pte & ~0x60u)) {     /* ignore ACCESSED/DIRTY */
            *pte = e;
            tlb_note(va);
        }
    }
    tlb_commit();
    return 0;
}

static s32 do_brk(u32 addr)
{
    if (addr < brk_start || addr >= MMAP_TOP) return brk_cur;
    u32 want = (addr + 0xfff) & ~0xfffu, have = (brk_cur + 0xfff) & ~0xfffu;
    for (u32 va = have; va < want; va += PAGE_SIZE) {
        u32 *pte = pte_of(va, 0);
        if ((pte && *pte) || map_new_page(va, 3)) {
            for (u32 v = have; v < va; v += PAGE_SIZE) unmap_page(v);
            tlb_commit();
            return brk_cur;
        }
    }
    for (u32 va = want; va < have; va += PAGE_SIZE) unmap_page(va);
    tlb_commit();
    brk_cur = addr;
    return brk_cur;
}

static s32 do_ioctl(struct file *f, u32 cmd, u32 arg)
{
    u32 dev = f->ino->dev;
    int tty = (dev == DEV_STDIN && (boot->flags & BF_STDIN_TTY)) || (dev == DEV_STDOUT && (boot->flags & BF_STDOUT_TTY))
              || (dev == DEV_STDERR && (boot->flags & BF_STDERR_TTY)) || dev == DEV_TTY;
    if (!tty) return -ENOTTY;
    if (cmd == 0x5401) {                /* TCGETS: struct termios, 36 bytes */
        if (!user_ok(arg, 36, 1)) return -EFAULT;
        u32 *t = (u32 *)arg;
        memset(t, 0, 36);
        t[0] = 0x500;                   /* ICRNL | IXON */
        t[1] = 0x5;                     /* OPOST | ONLCR */
        t[2] = 0xbf;                    /* B38400 | CS8 | CREAD */
        t[3] = 0x8a3b;                  /* ISIG ICANON ECHO ECHOE ECHOK ECHOCTL ECHOKE IEXTEN */
        return 0;
    }
    if (cmd == 0x5413) {                /* TIOCGWINSZ */
        if (!user_ok(arg, 8, 1)) return -EFAULT;
        u16 *w = (u16 *)arg;
        w[0] = boot->tty_rows ? boot->tty_rows : 24;
        w[1] = boot->tty_cols ? boot->tty_cols : 80;
        w[2] = w[3] = 0;
        return 0;
    }
    return -EINVAL;
}

static s32 put_timespec(u32 uaddr, u64 ns, int wide)
{
    if (!user_ok(uaddr, wide ? 16 : 8, 1)) return -EFAULT;
    u32 *t = (u32 *)uaddr;
    u64 s = ns / 1000000000ull;
    if (wide) { *(u64 *)t = s; *(u64 *)(t + 2) = ns % 1000000000ull; }
    else { t[0] = (u32)s; t[1] = (u32)(ns % 1000000000ull); }
    return 0;
}

static u64 clock_ns(u32 clk)
{
    u64 t = now_ns();
    return clk == 0 || clk == 5 || clk == 8 || clk == 11 ? t + (u64)boot->epoch_sec * 1000000000ull : t;
}

static s32 do_nanosleep(u32 req, u32 rem, int wide)
{
    if (!user_ok(req, wide ? 16 : 8, 0)) return -EFAULT;
    u64 s, ns;
    if (wide) { s = *(u64 *)req; ns = *(u64 *)(req + 8); }
    else { s = *(u32 *)req; ns = *(u32 *)(req + 4); if (*(s32 *)req < 0) return -EINVAL; }
    if (ns >= 1000000000ull || (s64)s < 0) return -EINVAL;
    u64 until = now_ns() + s * 1000000000ull + ns;
    cons_flush();
    while (now_ns() < until)
        hcall(LHCALL_HALT, 0, 0, 0);    /* the tick wakes us */
    if (rem && user_ok(rem, wide ? 16 : 8, 1)) put_timespec(rem, 0, wide);
    return 0;
}

/* --- poll and select ------------------------------------------------------ */
#define POLLIN      0x001
#define POLLPRI     0x002
#define POLLOUT     0x004
#define POLLERR     0x008
#define POLLHUP     0x010
#define POLLNVAL    0x020
#define POLLRDNORM  0x040
#define POLLRDBAND  0x080
#define POLLWRNORM  0x100
#define POLLWRBAND  0x200
/* what select counts as readable, writable, exceptional (fs/select.c) */
#define POLLIN_SET  (POLLRDNORM | POLLRDBAND | POLLIN | POLLHUP | POLLERR)
#define POLLOUT_SET (POLLWRBAND | POLLWRNORM | POLLOUT | POLLERR)
#define POLLEX_SET  POLLPRI
#define T_NONE      (~0ull)             /* no deadline: wait for as long as it takes */

/* What a file reports, as Linux's f_op->poll would: the files in memory and
 * /dev/null, zero, urandom are always ready (DEFAULT_POLLMASK); stdout and
 * stderr always writable (the host drains the rings); stdin as the read end
 * of a pipe: POLLIN with bytes, POLLHUP once the writer is gone (the host saw
 * it: in_hup) or at the end of input -- a tty instead reads its ^D as a
 * readable 0 and is writable too.  *query: ask the host about an empty ring
 * (1 for what it has now, 2 wait for input), done once per pass. */
static u32 file_poll(struct file *f, u32 events, int *query)
{
    u32 dev = f->ino->dev;
    if (dev == DEV_STDOUT || dev == DEV_STDERR) return POLLOUT | POLLWRNORM;
    if (dev != DEV_STDIN && dev != DEV_TTY) return POLLIN | POLLOUT | POLLRDNORM | POLLWRNORM;
    int tty = dev == DEV_TTY || (boot->flags & BF_STDIN_TTY);
    u32 st;
    if ((events & POLLIN_SET) && *query) {
        st = stdin_ready(*query == 2);
        *query = 0;
    } else {
        st = cons->in_head != cons->in_tail ? 1 : cons->in_eof ? 2 : 0;
    }
    if (tty) return POLLOUT | POLLWRNORM | (st ? POLLIN | POLLRDNORM : 0);
    return (st == 1 ? POLLIN | POLLRDNORM : 0) | (st == 2 || cons->in_hup ? POLLHUP : 0);
}

/* The sets of the call in progress, copied in (one program, one thread). */
static struct { s32 fd; u16 events, revents; } poll_set[MAX_FDS];
static u32 sel_set[3][MAX_FDS / 32], sel_res[3][MAX_FDS / 32];

/* One pass over poll_set (n entries) or the select sets (fds below n):
 * fills in the results, returns how many are ready as the call counts them. */
static u32 poll_pass(int is_select, u32 n, int query)
{
    u32 count = 0;
    if (!is_select) {
        for (u32 i = 0; i < n; i++) {
            s32 fd = poll_set[i].fd;
            u32 m = 0;
            if (fd >= 0) {
                struct file *f = fd_get(fd);
                u32 ev = poll_set[i].events;
                /* POLLERR and POLLHUP are reported whether asked or not */
                m = f ? file_poll(f, ev, &query) & (ev | POLLERR | POLLHUP) : POLLNVAL;
            }
            poll_set[i].revents = m;
            count += m != 0;
        }
        return count;
    }
    memset(sel_res, 0, sizeof sel_res);
    for (u32 i = 0; i < n; i++) {
        u32 w = i >> 5, bit = 1u << (i & 31);
        u32 want = (sel_set[0][w] & bit ? POLLIN_SET : 0) | (sel_set[1][w] & bit ? POLLOUT_SET : 0)
                   | (sel_set[2][w] & bit ? POLLEX_SET : 0);
        if (!want) continue;
        u32 m = file_poll(fds[i], want, &query);   /* open: checked before the first pass */
        /* every set an fd is ready in counts, as Linux's do_select counts */
        if (m & want & POLLIN_SET) sel_res[0][w] |= bit, count++;
        if (m & want & POLLOUT_SET) sel_res[1][w] |= bit, count++;
        if (m & want & POLLEX_SET) sel_res[2][w] |= bit, count++;
    }
    return count;
}

/* Passes until something is ready or the guest clock reaches until (0: one
 * pass, a zero timeout; T_NONE: none).  Between passes the kernel HALTs to
 * the next tick and asks the host again, so a finite wait is the guest
 * clock's, virtual or wall, and stdin arriving meanwhile is seen within a
 * tick; without a deadline the host waits for stdin itself, as for read. */
static s32 poll_wait(int is_select, u32 n, u64 until)
{
    for (;;) {
        u32 r = poll_pass(is_select, n, 1);
        if (r) return r;
        if (until == T_NONE) {
            if ((r = poll_pass(is_select, n, 2))) return r;
        } else if (now_ns() >= until) {
            return 0;
        }
        cons_flush();
        hcall(LHCALL_HALT, 0, 0, 0);    /* the tick wakes us */
    }
}

/* A timeout from user memory, kind 0 struct timeval, 1 struct timespec
 * (32-bit), 2 struct __kernel_timespec: 0, -EFAULT or -EINVAL; *until the
 * guest-clock deadline, 0 for a zero timeout, T_NONE for a NULL pointer. */
static s32 get_timeout(u32 p, int kind, u64 *until)
{
    *until = T_NONE;
    if (!p) return 0;
    if (!user_ok(p, kind == 2 ? 16 : 8, 0)) return -EFAULT;
    s64 s, ns;
    if (kind == 0) {                    /* select folds whole seconds of tv_usec in first */
        s32 us = ((s32 *)p)[1];
        s = (s64)((s32 *)p)[0] + us / 1000000;
        ns = (s64)(us % 1000000) * 1000;
    } else if (kind == 1) {
        s = ((s32 *)p)[0];
        ns = ((s32 *)p)[1];
    } else {                            /* a 32-bit caller's tv_nsec is its low word */
        s = *(s64 *)p;
        ns = *(u32 *)(p + 8);
    }
    if (s < 0 || (u64)ns >= 1000000000ull) return -EINVAL;
    if (!s && !ns) { *until = 0; return 0; }
    if (s > 1000000000ll * 100) s = 1000000000ll * 100;   /* ~3000 years: the u64 of ns stays */
    *until = now_ns() + (u64)s * 1000000000ull + (u64)ns;
    return 0;
}

/* What is left of a timeout, written back as Linux does for select, pselect6
 * and ppoll (not for a zero one; a pointer gone read-only is left alone). */
static void put_timeout(u32 p, int kind, u64 until)
{
    if (!p || !until || until == T_NONE) return;
    u64 now = now_ns(), left = until > now ? until - now : 0;
    if (kind == 0) {
        if (!user_ok(p, 8, 1)) return;
        ((u32 *)p)[0] = (u32)(left / 1000000000ull);
        ((u32 *)p)[1] = (u32)(left % 1000000000ull / 1000);
    } else {
        put_timespec(p, left, kind == 2);
    }
}

/* The sigmask of ppoll/pselect6: checked as Linux checks it, then ignored
 * (no signal is ever delivered here, so none could be unblocked). */
static s32 check_sigmask(u32 p, u32 size)
{
    if (!p) return 0;
    if (size != 8) return -EINVAL;
    return user_ok(p, 8, 0) ? 0 : -EFAULT;
}

static s32 do_poll(u32 ufds, u32 nfds, u64 until)
{
    if (nfds > MAX_FDS) return -EINVAL;     /* RLIMIT_NOFILE, as getrlimit reports it */
    if (!user_ok(ufds, nfds * 8, 0)) return -EFAULT;
    memcpy(poll_set, (void *)ufds, nfds * 8);
    s32 r = poll_wait(0, nfds, until);
    if (!user_ok(ufds, nfds * 8, 1)) return -EFAULT;
    for (u32 i = 0; i < nfds; i++) ((u16 *)ufds)[4 * i + 3] = poll_set[i].revents;
    return r;
}

static s32 do_select(s32 n, u32 inp, u32 outp, u32 exp, u64 until)
{
    if (n < 0) return -EINVAL;
    if (n > (s32)MAX_FDS) n = MAX_FDS;      /* Linux clamps to its table's size */
    u32 bytes = (n + 31) / 32 * 4, ptr[3] = {inp, outp, exp};
    for (u32 k = 0; k < 3; k++) {
        if (!ptr[k]) { memset(sel_set[k], 0, sizeof sel_set[k]); continue; }
        if (!user_ok(ptr[k], bytes, 0)) return -EFAULT;
        memcpy(sel_set[k], (void *)ptr[k], bytes);
        if (n & 31) sel_set[k][n >> 5] &= (1u << (n & 31)) - 1;    /* bits past n are not looked at */
    }
    for (s32 i = 0; i < n; i++)
        if (((sel_set[0][i >> 5] | sel_set[1][i >> 5] | sel_set[2][i >> 5]) >> (i & 31) & 1) && !fds[i])
            return -EBADF;
    s32 r = poll_wait(1, n, until);
    for (u32 k = 0; k < 3; k++) {
        if (!ptr[k]) continue;
        if (!user_ok(ptr[k], bytes, 1)) r = -EFAULT;
        else memcpy((void *)ptr[k], sel_res[k], bytes);
    }
    return r;
}

static void __attribute__((noreturn)) die_signal(u32 sig)
{
    finish(R_SIGNAL, sig);
}

static s32 sys(struct regs *r)
{
    u32 a = r->ebx, b = r->ecx, c = r->edx, d = r->esi, e = r->edi, f6 = r->ebp;
    u32 nr = r->eax;
    struct file *f;
    s32 ret;
    switch (nr) {
    case 1: case 252:                   /* exit, exit_group */
        finish(R_EXIT, a & 0xff);
    case 3:                             /* read */
        if (!(f = fd_get(a))) return -EBADF;
        return do_read(f, b, c);
    case 4:                             /* write */
        if (!(f = fd_get(a))) return -EBADF;
        return do_write(f, b, c);
    case 145: case 146: {               /* readv, writev */
        if (!(f = fd_get(a))) return -EBADF;
        if ((s32)c < 0 || c > 1024) return -EINVAL;
        if (!user_ok(b, c * 8, 0)) return -EFAULT;
        u32 *iov = (u32 *)b, total = 0;
        for (u32 i = 0; i < c; i++) {
            if (!iov[2 * i + 1]) continue;
            ret = nr == 146 ? do_write(f, iov[2 * i], iov[2 * i + 1]) : do_read(f, iov[2 * i], iov[2 * i + 1]);
            if (ret < 0) return total ? (s32)total : ret;
            total += ret;
            if ((u32)ret < iov[2 * i + 1]) break;
        }
        return total;
    }
    case 5: return do_openat(-100, a, b, c);                    /* open */
    case 295: return do_openat(a, b, c, d);                     /* openat */
    case 6:                                                     /* close */
        if (!fd_get(a)) return -EBADF;
        fd_close(a);
        return 0;
    case 19: {                                                  /* lseek */
        if (!(f = fd_get(a))) return -EBADF;
        u64 res;
        ret = do_lseek(f, (s32)b, c, &res);
        if (ret) return ret;
        if (res > 0x7fffffffull) return -75;                    /* EOVERFLOW */
        return (s32)res;
    }
    case 140: {                                                 /* _llseek */
        if (!(f = fd_get(a))) return -EBADF;
        u64 res;
        if (!user_ok(d, 8, 1)) return -EFAULT;
        ret = do_lseek(f, (s64)(((u64)b << 32) | c), e, &res);
        if (ret) return ret;
        *(u64 *)d = res;
        return 0;
    }
    case 197: {                                                 /* fstat64 */
        if (!(f = fd_get(a))) return -EBADF;
        struct kstat st;
        stat_of(f->ino, &st);
        return put_stat64(b, &st);
    }
    case 195: case 196: {                                       /* stat64, lstat64 */
        struct inode *n;
        if ((ret = lookup_at(-100, a, nr == 195, 0, &n))) return ret;
        struct kstat st;
        stat_of(n, &st);
        return put_stat64(b, &st);
    }
    case 300: {                                                 /* fstatat64 */
        struct inode *n;
        if ((ret = lookup_at(a, b, !(d & 0x100), d & 0x1000, &n))) return ret;
        struct kstat st;
        stat_of(n, &st);
        return put_stat64(c, &st);
    }
    case 383: {                                                 /* statx */
        struct inode *n;
        if ((ret = lookup_at(a, b, !(c & 0x100), c & 0x1000, &n))) return ret;
        struct kstat st;
        stat_of(n, &st);
        return put_statx(e, &st);
    }
    case 45: return do_brk(a);                                  /* brk */
    case 192: return do_mmap(a, b, c, d, e, f6);                /* mmap2 */
    case 91: return do_munmap(a, b);                            /* munmap */
    case 125: return do_mprotect(a, b, c);                      /* mprotect */
    case 219: return 0;                                         /* madvise: advice only */
    case 122: {                                                 /* uname */
        if (!user_ok(a, 390, 1)) return -EFAULT;
        static const char *const f[6] = {"Linux", "lguest", "6.1.0-lguest", "#1 lguest exec", "i686", "(none)"};
        memset((void *)a, 0, 390);
        for (int i = 0; i < 6; i++) memcpy((char *)a + 65 * i, f[i], kstrlen(f[i]));
        return 0;
    }
    case 20: case 224: return 1;                                /* getpid, gettid */
    case 64: return 0;                                          /* getppid */
    case 199: case 200: case 201: case 202: return 0;           /* get[e]uid32, get[e]gid32 */
    case 54:                                                    /* ioctl */
        if (!(f = fd_get(a))) return -EBADF;
        return do_ioctl(f, b, c);
    case 85: {                                                  /* readlink */
        char path[4096];
        if ((ret = user_str(a, path, sizeof path)) < 0) return ret;
        const char *t;
        u32 l;
        struct inode *n = NULL;
        if (kstreq(path, "/proc/self/exe")) { t = prog_path; l = kstrlen(prog_path); }
        else {
            if ((ret = namei_at(cwd, path, 0, &n, NULL, NULL, NULL, 0))) return ret;
            if (!S_ISLNK(n->mode)) return -EINVAL;
            t = (const char *)n->data;
            l = n->size;
        }
        if ((s32)c <= 0) return -EINVAL;
        if (l > c) l = c;
        if (!user_ok(b, l, 1)) return -EFAULT;
        memcpy((void *)b, t, l);
        return l;
    }
    case 33: case 307: case 439: {                              /* access, faccessat, faccessat2 */
        struct inode *n;
        u32 mode = nr == 33 ? b : c;
        if (mode & ~7u) return -EINVAL;
        if ((ret = nr == 33 ? lookup_at(-100, a, 1, 0, &n) : lookup_at(a, b, 1, 0, &n))) return ret;
        if ((mode & 1) && !(n->mode & 0111) && !S_ISDIR(n->mode)) return -13;
        return 0;
    }
    case 183: {                                                 /* getcwd */
        char buf[4096];
        ret = path_of(cwd, buf, sizeof buf);
        if (ret < 0) return ret;
        if ((u32)ret > b) return -ERANGE;
        if (!user_ok(a, ret, 1)) return -EFAULT;
        memcpy((void *)a, buf, ret);
        return ret;
    }
    case 12: {                                                  /* chdir */
        struct inode *n;
        if ((ret = lookup_at(-100, a, 1, 0, &n))) return ret;
        if (!S_ISDIR(n->mode)) return -ENOTDIR;
        cwd = n;
        return 0;
    }
    case 133: {                                                 /* fchdir */
        if (!(f = fd_get(a))) return -EBADF;
        if (!S_ISDIR(f->ino->mode)) return -ENOTDIR;
        cwd = f->ino;
        return 0;
    }
    case 220:                                                   /* getdents64 */
        if (!(f = fd_get(a))) return -EBADF;
        return do_getdents64(f, b, c);
    case 265: case 403:                                         /* clock_gettime{,64} */
        if (a > 11) return -EINVAL;
        return put_timespec(b, clock_ns(a), nr == 403);
    case 266: case 406:                                         /* clock_getres{,64} */
        if (a > 11) return -EINVAL;
        return b ? put_timespec(b, 1, nr == 406) : 0;
    case 78: {                                                  /* gettimeofday */
        u64 t = clock_ns(0);
        if (a) {
            if (!user_ok(a, 8, 1)) return -EFAULT;
            ((u32 *)a)[0] = (u32)(t / 1000000000ull);
            ((u32 *)a)[1] = (u32)(t % 1000000000ull / 1000);
        }
        if (b) {
            if (!user_ok(b, 8, 1)) return -EFAULT;
            ((u32 *)b)[0] = ((u32 *)b)[1] = 0;
        }
        return 0;
    }
    case 13: {                                                  /* time */
        u32 t = (u32)(clock_ns(0) / 1000000000ull);
        if (a) {
            if (!user_ok(a, 4, 1)) return -EFAULT;
            *(u32 *)a = t;
        }
        return t;
    }
    case 168:                                                   /* poll */
        return do_poll(a, b, (s32)c < 0 ? T_NONE : c ? now_ns() + (u64)c * 1000000ull : 0);
    case 309: case 414: {                                       /* ppoll, ppoll_time64 */
        u64 until;
        if ((ret = get_timeout(c, nr == 414 ? 2 : 1, &until)) || (ret = check_sigmask(d, e))) return ret;
        ret = do_poll(a, b, until);
        put_timeout(c, nr == 414 ? 2 : 1, until);
        return ret;
    }
    case 82: {                                                  /* select (old: its arguments in a block) */
        if (!user_ok(a, 20, 0)) return -EFAULT;
        u32 *blk = (u32 *)a;
        a = blk[0]; b = blk[1]; c = blk[2]; d = blk[3]; e = blk[4];
    }
        /* fall through */
    case 142: {                                                 /* _newselect */
        u64 until;
        if ((ret = get_timeout(e, 0, &until))) return ret;
        ret = do_select(a, b, c, d, until);
        put_timeout(e, 0, until);
        return ret;
    }
    case 308: case 413: {                                       /* pselect6, pselect6_time64 */
        u32 mask = 0, size = 0;
        u64 until;
        if (f6) {                                               /* {const sigset_t *, size_t} */
            if (!user_ok(f6, 8, 0)) return -EFAULT;
            mask = ((u32 *)f6)[0];
            size = ((u32 *)f6)[1];
        }
        if ((ret = get_timeout(e, nr == 413 ? 2 : 1, &until)) || (ret = check_sigmask(mask, size))) return ret;
        ret = do_select(a, b, c, d, until);
        put_timeout(e, nr == 413 ? 2 : 1, until);
        return ret;
    }
    case 162: return do_nanosleep(a, b, 0);                     /* nanosleep */
    case 267: return (b & 1) ? -EINVAL : do_nanosleep(c, d, 0); /* clock_nanosleep (relative) */
    case 407: return (b & 1) ? -EINVAL : do_nanosleep(c, d, 1); /* clock_nanosleep_time64 */
    case 355:                                                   /* getrandom */
        if (!user_ok(a, b, 1)) return -EFAULT;
        rand_fill((u8 *)a, b);
        return b;
    case 243: {                                                 /* set_thread_area */
        if (!user_ok(a, 16, 1)) return -EFAULT;
        u32 *u = (u32 *)a;
        s32 entry = u[0];
        if (entry == -1) {
            entry = 6;
            for (u32 i = 0; i < 3; i++)
                if (!tls_desc[i][0] && !tls_desc[i][1]) { entry = 6 + i; break; }
            u[0] = entry;
        }
        if (entry < 6 || entry > 8) return -EINVAL;
        u32 base = u[1], limit = u[2], fl = u[3];
        /* user_desc flags: seg_32bit 1, contents 6, read_exec_only 8,
         * limit_in_pages 16, seg_not_present 32, useable 64 */
        u32 lo = (limit & 0xffff) | (base << 16);
        u32 hi = ((base >> 16) & 0xff) | (base & 0xff000000) | (limit & 0xf0000)
                 | ((~fl >> 3) & 1) << 9 | ((fl >> 1) & 3) << 10 | 1 << 12 | 3 << 13
                 | (((fl >> 5) & 1) ^ 1) << 15 | ((fl >> 6) & 1) << 20 | (fl & 1) << 22 | ((fl >> 4) & 1) << 23;
        if ((fl & 0x20) && !base && !limit) lo = hi = 0;   /* an empty descriptor clears */
        tls_desc[entry - 6][0] = lo;
        tls_desc[entry - 6][1] = hi;
        hcall(LHCALL_LOAD_TLS, __pa(tls_desc), 0, 0);
        return 0;
    }
    case 258: return 1;                                         /* set_tid_address */
    case 311: return b == 12 ? 0 : -EINVAL;                     /* set_robust_list */
    case 386:                                                   /* rseq: registered, never preempted */
        if (c & 1) return 0;
        if (b < 32 || !user_ok(a, 32, 1)) return -EINVAL;
        ((u32 *)a)[0] = 0;                                      /* cpu_id_start */
        ((u32 *)a)[1] = 0;                                      /* cpu_id */
        return 0;
    case 172:                                                   /* prctl */
        if (a == 15) return 0;                                  /* PR_SET_NAME */
        if (a == 16) {                                          /* PR_GET_NAME */
            if (!user_ok(b, 16, 1)) return -EFAULT;
            memset((void *)b, 0, 16);
            return 0;
        }
        return -EINVAL;
    case 191: case 76: {                                        /* ugetrlimit, getrlimit */
        if (a > 15) return -EINVAL;
        if (!user_ok(b, 8, 1)) return -EFAULT;
        u32 *l = (u32 *)b;
        l[0] = l[1] = a == 3 ? STACK_MAX : a == 7 ? MAX_FDS : 0xffffffffu;
        return 0;
    }
    case 340: {                                                 /* prlimit64 */
        if (a && a != 1) return -3;                             /* ESRCH */
        if (b > 15) return -EINVAL;
        if (d) {
            if (!user_ok(d, 16, 1)) return -EFAULT;
            u64 *l = (u64 *)d;
            l[0] = l[1] = b == 3 ? STACK_MAX : b == 7 ? MAX_FDS : ~0ull;
        }
        return 0;
    }
    case 174: {                                                 /* rt_sigaction: recorded, never delivered */
        if (a == 0 || a > 64 || d != 8) return -EINVAL;
        if (b && (a == 9 || a == 19)) return -EINVAL;
        if (c && !user_ok(c, 20, 1)) return -EFAULT;
        if (b && !user_ok(b, 20, 0)) return -EFAULT;
        u32 old[5];
        memcpy(old, sig_actions[a], 20);
        if (b) memcpy(sig_actions[a], (void *)b, 20);
        if (c) memcpy((void *)c, old, 20);
        return 0;
    }
    case 175: {                                                 /* rt_sigprocmask */
        if (d != 8) return -EINVAL;
        u32 old[2] = {sig_mask[0], sig_mask[1]};
        if (b) {
            if (!user_ok(b, 8, 0)) return -EFAULT;
            u32 *s = (u32 *)b;
            if (a == 0) sig_mask[0] |= s[0], sig_mask[1] |= s[1];
            else if (a == 1) sig_mask[0] &= ~s[0], sig_mask[1] &= ~s[1];
            else if (a == 2) sig_mask[0] = s[0], sig_mask[1] = s[1];
            else return -EINVAL;
        }
        if (c) {
            if (!user_ok(c, 8, 1)) return -EFAULT;
            memcpy((void *)c, old, 8);
        }
        return 0;
    }
    case 37: case 238: case 270:                                /* kill, tkill, tgkill: only ourselves */
        if (nr == 270 ? (b != 1) : (a != 1 && a != 0)) return -3;
        if (nr == 270) a = b, b = c;
        if (b == 0) return 0;
        if (b > 64) return -EINVAL;
        if (sig_actions[b][0] == 1 || b == 17 || b == 23 || b == 28) return 0;  /* ignored */
        die_signal(b);
    case 41:                                                    /* dup */
        if (!(f = fd_get(a))) return -EBADF;
        f->refs++;
        ret = fd_alloc(f, 0);
        if (ret < 0) f->refs--;
        return ret;
    case 63: case 330:                                          /* dup2, dup3 */
        if (!(f = fd_get(a))) return -EBADF;
        if (b >= MAX_FDS) return -EBADF;
        if (a == b) return nr == 330 ? -EINVAL : (s32)b;
        if (nr == 330 && (c & ~O_CLOEXEC)) return -EINVAL;
        if (fds[b]) fd_close(b);
        f->refs++;
        fds[b] = f;
        fd_cloexec[b] = nr == 330 && (c & O_CLOEXEC);
        return b;
    case 55: case 221:                                          /* fcntl, fcntl64 */
        if (!(f = fd_get(a))) return -EBADF;
        switch (b) {
        case 0: case 1030:                                      /* F_DUPFD[_CLOEXEC] */
            if (c >= MAX_FDS) return -EINVAL;
            f->refs++;
            ret = fd_alloc(f, c);
            if (ret < 0) f->refs--;
            else fd_cloexec[ret] = b == 1030;
            return ret;
        case 1: return fd_cloexec[a];                           /* F_GETFD */
        case 2: fd_cloexec[a] = c & 1; return 0;                /* F_SETFD */
        case 3: return f->flags | 0100000;                      /* F_GETFL (O_LARGEFILE) */
        case 4: f->flags = (f->flags & ~(O_APPEND | 04000)) | (c & (O_APPEND | 04000)); return 0;
        }
        return -EINVAL;
    case 116: {                                                 /* sysinfo */
        if (!user_ok(a, 64, 1)) return -EFAULT;
        u32 *s = (u32 *)a;
        memset(s, 0, 64);
        s[0] = (u32)(now_ns() / 1000000000ull);
        s[4] = boot->mem_size;
        s[5] = (limit_pa - bump_pa) + pages_free_listed * PAGE_SIZE;
        s[10] = 1 << 16;                                        /* procs = 1 */
        s[13] = 1;                                              /* mem_unit */
        return 0;
    }
    case 60: return 022;                                        /* umask */
    case 83: return do_symlinkat(a, -100, b);                   /* symlink */
    case 304: return do_symlinkat(a, b, c);                     /* symlinkat */
    case 320: return do_utimensat(a, b, c, d, 0);               /* utimensat */
    case 412: return do_utimensat(a, b, c, d, 1);               /* utimensat_time64 */
    case 15: case 306: {                                        /* chmod, fchmodat */
        struct inode *n;
        if ((ret = nr == 15 ? lookup_at(-100, a, 1, 0, &n) : lookup_at(a, b, 1, 0, &n))) return ret;
        return do_chmod(n, nr == 15 ? b : c);
    }
    case 94:                                                    /* fchmod */
        if (!(f = fd_get(a))) return -EBADF;
        return do_chmod(f->ino, b);
    case 182: case 212: case 198: case 16: {                    /* chown(32), lchown(32): as root, kept as 0 */
        struct inode *n;
        return lookup_at(-100, a, nr == 182 || nr == 212, 0, &n);
    }
    case 298: {                                                 /* fchownat */
        struct inode *n;
        return lookup_at(a, b, !(e & 0x100), e & 0x1000, &n);
    }
    case 95: case 207:                                          /* fchown(32) */
        return fd_get(a) ? 0 : -EBADF;
    case 80: case 205: return 0;                                /* getgroups(32): none */
    case 39: return do_mkdirat(-100, a, b);                     /* mkdir */
    case 296: return do_mkdirat(a, b, c);                       /* mkdirat */
    case 10: return do_unlinkat(-100, a, 0);                    /* unlink */
    case 40: return do_unlinkat(-100, a, 0x200);                /* rmdir */
    case 301: return do_unlinkat(a, b, c);                      /* unlinkat */
    case 38: return do_renameat(-100, a, -100, b);              /* rename */
    case 302: return do_renameat(a, b, c, d);                   /* renameat */
    case 353: if (e) return -EINVAL;                            /* renameat2, no flags */
        return do_renameat(a, b, c, d);
    case 92: case 193: {                                        /* truncate, truncate64 */
        struct inode *n;
        if ((ret = lookup_at(-100, a, 1, 0, &n))) return ret;
        return do_truncate(n, nr == 92 ? (s64)(s32)b : (s64)(((u64)c << 32) | b));
    }
    case 93: case 194:                                          /* ftruncate, ftruncate64 */
        if (!(f = fd_get(a))) return -EBADF;
        if (!(f->flags & O_ACCMODE)) return -EINVAL;
        return do_truncate(f->ino, nr == 93 ? (s64)(s32)b : (s64)(((u64)c << 32) | b));
    }
    if (nr < NSYSCALLS) enosys_counts[nr]++;
    else enosys_counts[NSYSCALLS - 1]++;
    return -ENOSYS;
}

/* read and write, from syscall_entry when its fast path (a few bytes of
 * a regular file, entry.S) does not apply: the arguments in registers
 * (regparm(3): eax fd, edx count, ecx buf), the result in eax; counted
 * there.  One function each, no switch (an indirect jump), so that gcc
 * keeps them in registers: every spill is a store. */
s32 __attribute__((regparm(3))) sys_read(u32 fd, u32 count, u32 buf)
{
    struct file *f = fd_get(fd);
    if (!f) return -EBADF;
    return do_read(f, buf, count);
}

s32 __attribute__((regparm(3))) sys_write(u32 fd, u32 count, u32 buf)
{
    struct file *f = fd_get(fd);
    if (!f) return -EBADF;
    return do_write(f, buf, count);
}

void do_syscall(struct regs *r)
{
    u32 nr = r->eax;
    syscall_counts[nr < NSYSCALLS ? nr : NSYSCALLS - 1]++;
    r->eax = sys(r);
}

/* --- faults --------------------------------------------------------------- */
struct fault_frame { u32 edi, esi, ebp, esp0, ebx, edx, ecx, eax, vector, err, eip, cs, eflags, esp, ss; };

void do_fault(struct fault_frame *fr)
{
    if ((fr->cs & 3) != 3)
        panic("fault in the kernel: vector/eip", fr->vector << 24 ^ fr->eip);
    if (fr->vector == 14) {
        u32 addr = lguest_data.cr2;
        if (!(fr->err & 1) && grow_stack(addr)) return;    /* a not-present stack page */
        die_signal(11);
    }
    static const u8 sig[20] = {8, 5, 0, 5, 11, 11, 4, 8, 11, 0, 11, 7, 11, 11, 11, 0, 8, 7, 0, 8};
    die_signal(fr->vector < 20 && sig[fr->vector] ? sig[fr->vector] : 11);
}

/* --- boot ----------------------------------------------------------------- */
/* A hypercall queued in lguest_data's ring: the host runs the ring, in
 * order, at the next hypercall's exit and before that call (lguest's own
 * batching, as Linux's lazy mode).  The boot's IDT gates go this way: one
 * exit to the host for all of them where each was one. */
static u32 async_next;
static void hcall_async(u32 call, u32 a1, u32 a2, u32 a3)
{
    u32 n = async_next;
    if (lguest_data.hcall_status[n] != 0xff)    /* full: the host empties it at any hypercall */
        hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0);
    lguest_data.hcalls[n][0] = call;
    lguest_data.hcalls[n][1] = a1;
    lguest_data.hcalls[n][2] = a2;
    lguest_data.hcalls[n][3] = a3;
    __asm__ volatile("" ::: "memory");          /* the arguments before the status that publishes them */
    lguest_data.hcall_status[n] = 0;
    async_next = (n + 1) % 64;
}

static void set_gate(u32 vec, void (*fn)(void), u32 flags)
{
    u32 a = (u32)fn;
    hcall_async(LHCALL_LOAD_IDT_ENTRY, vec, (KERNEL_CS << 16) | (a & 0xffff), (a & 0xffff0000) | flags);
}

#define INTERRUPT_GATE  0x8E00      /* present, DPL 0 */
#define USER_TRAP_GATE  0xEF00      /* present, DPL 3, trap gate: a direct trap */
#define USER_INT_GATE   0xEE00

void __attribute__((noreturn)) kmain(void)
{
    if (boot->magic != BOOT_MAGIC)
        hcall(LHCALL_SHUTDOWN, __pa("lguest exec kernel: no boot information"), 1, 0);
    lguest_data.noirq_start = (u32)noirq_start;
    lguest_data.noirq_end = (u32)noirq_end;
    lguest_data.syscall_vec = boot->syscall_vector;
    hcall(LHCALL_LGUEST_INIT, __pa(&lguest_data), 0, 0);

    static void (*const faults[20])(void) = {
        fault_0, fault_1, 0, fault_3, fault_4, fault_5, fault_6, fault_7, fault_8, 0,
        fault_10, fault_11, fault_12, fault_13, fault_14, 0, fault_16, fault_17, 0, fault_19,
    };
    for (u32 v = 0; v < 20; v++)
        if (faults[v])
            set_gate(v, faults[v], (v == 3 || v == 4) ? USER_INT_GATE : INTERRUPT_GATE);
    set_gate(0x20, timer_entry, INTERRUPT_GATE);
    /* int $0x80 (the Linux ABI) and the host's syscall vector: DPL-3 trap gates */
    set_gate(0x80, syscall_entry, USER_TRAP_GATE);
    if (boot->syscall_vector != 0x80)
        set_gate(boot->syscall_vector, syscall_entry, USER_TRAP_GATE);
    /* (this exit runs the queued gates first) */
    hcall(LHCALL_SET_STACK, KERNEL_DS, (u32)boot_stack_top, 2);   /* the host pins at most 2 pages */

    /* memory: the page allocator from the end of the kernel to what the host reserved */
    bump_pa = ((u32)_end - PAGE_OFFSET + 0xfff) & ~0xfffu;
    limit_pa = boot->alloc_limit_pa;
    u32 total_pages = (limit_pa - bump_pa) / PAGE_SIZE;
    rng_state = ((u64)boot->seed_hi << 32) | boot->seed_lo;

    /* our page tables: all RAM at PAGE_OFFSET, kernel only */
    /* one page table per 4 MiB, filled 32 entries a loop turn: every loop
     * turn is an emulator block, and this runs once per MiB of RAM x 256 */
    for (u32 pa = 0; pa < boot->mem_size; pa += 1024 * PAGE_SIZE) {
        u32 tpa = alloc_page();
        if (!tpa) panic("no memory for the kernel's page tables", pa);
        u32 *pt = __va(tpa), e = pa | PTE_P | PTE_W, end = boot->mem_size - pa;
        u32 n = end >= 1024 * PAGE_SIZE ? 1024 : end / PAGE_SIZE;
        u32 i = 0;
        for (; i + 32 <= n; i += 32, e += 32 * PAGE_SIZE) {
#pragma GCC unroll 32
            for (u32 k = 0; k < 32; k++) pt[i + k] = e + k * PAGE_SIZE;
        }
        for (; i < n; i++, e += PAGE_SIZE) pt[i] = e;
        pgdir[(PAGE_OFFSET + pa) >> 22] = tpa | PTE_P | PTE_W;   /* kernel only: no PTE_U */
    }
    hcall(LHCALL_NEW_PGTABLE, __pa(pgdir), 0, 0);

    fs_init();
    for (u32 i = 0; i < 3; i++) {
        struct inode *n = NULL;
        namei_at(root, i == 0 ? "/dev/stdin" : i == 1 ? "/dev/stdout" : "/dev/stderr", 1, &n, NULL, NULL, NULL, 0);
        stdio_inode[i] = n;
        fds[i] = file_new(n, i == 0 ? 0 : 1);
    }

    /* argv and envp from the host's block */
    const char *args = __va(boot->args_pa);
    u32 argc = boot->argc, envc = boot->envc;
    if (argc < 1 || argc + envc > 4096) finish(R_NOEXEC, 7);
    char *ptrs[argc + envc + 1];
    for (u32 i = 0, off = 0; i < argc + envc; i++) {
        ptrs[i] = (char *)args + off;
        off += kstrlen(args + off) + 1;
    }
    u32 plen = kstrlen(ptrs[0]);
    if (plen >= sizeof prog_path) finish(R_NOTFOUND, 36);
    memcpy(prog_path, ptrs[0], plen + 1);
    boot->counts_pa = __pa(syscall_counts);
    boot->enosys_pa = __pa(enosys_counts);
    boot->pages_total = total_pages;

    u32 entry, sp;
    exec_program(ptrs, argc, ptrs + argc, envc, &entry, &sp);
    boot->pages_used = pages_used;

    hcall(LHCALL_SET_CLOCKEVENT, boot->tick_ns, 0, 0);
    lguest_data.irq_enabled = 0x200;
    __asm__ volatile(
        "movw %w0, %%ds\n\tmovw %w0, %%es\n\t"
        "xorl %%eax, %%eax\n\tmovw %%ax, %%fs\n\tmovw %%ax, %%gs\n\t"
        "pushl %0\n\tpushl %1\n\tpushl $0x202\n\tpushl %2\n\tpushl %3\n\t"
        "xorl %%ebx, %%ebx\n\txorl %%ecx, %%ecx\n\txorl %%edx, %%edx\n\t"
        "xorl %%esi, %%esi\n\txorl %%edi, %%edi\n\txorl %%ebp, %%ebp\n\t"
        "iret"
        : : "r"(USER_DS), "r"(sp), "r"(USER_CS), "r"(entry) : "eax", "memory");
    for (;;)
        ;
}
