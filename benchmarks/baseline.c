/* The plain-C baseline for lguest's compiled core.
 *
 * maybe_do_interrupt / set_guest_interrupt / write_timestamp and copy_traps
 * of drivers/lguest/interrupts_and_traps.c, written as straightforward C over
 * a malloc'd guest memory block and plain structs -- no Python, no numpy.
 * The benchmarks compile this file with the flags the extension gets
 * (sysconfig CFLAGS + CCSHARED + -O3) and compare its loops with
 * lguest._core.bench_deliver / bench_copy_traps.
 *
 * It keeps every check the kernel makes, in the kernel's form:
 *   - lgwrite goes through lguest_address_ok (a failing write kills the guest
 *     and writes nothing);
 *   - get_user/put_user on a lguest_data field fail past the end of memory;
 *   - irqs_pending is set and cleared with locked (atomic) bit operations, as
 *     set_bit/clear_bit are;
 *   - guest_pa is linear (vaddr - page_offset) unless a page directory is
 *     set, then a two-level walk (API.md: "Model choices").
 * The clock is what the benchmark guest uses: CLOCK_REALTIME read with
 * clock_gettime (ktime_get_real_ts) for a guest on the system clock, or an
 * int64 nanosecond cell (VirtualClock) for a guest on virtual time.
 *
 * The timing loops (bl_bench_*) use clock_gettime(CLOCK_MONOTONIC), like the
 * compiled core's bench_* entry points.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define GUEST_PL 1
#define GUEST_CS 0x61 /* __KERNEL_CS | GUEST_PL */
#define LGUEST_CS 0x50
#define LGUEST_TRAP_ENTRY 0x1F
#define SYSCALL_VECTOR 0x80
#define FIRST_EXTERNAL_VECTOR 0x20
#define IDT_ENTRIES 256
#define LGUEST_IRQS 32
#define X86_EFLAGS_IF 0x200
#define PAGE_SIZE 4096u
#define PAGE_PRESENT 0x1u

/* struct lguest_data offsets (ABI.md) */
#define LD_IRQ_ENABLED 0
#define LD_BLOCKED_INTERRUPTS 4
#define LD_TIME 12

#define CLOCK_KIND_REALTIME 0
#define CLOCK_KIND_CELL 1

struct lguest_regs {
    uint32_t eax, ebx, ecx, edx, esi, edi, ebp, gs, fs, ds, es;
    uint32_t trapnum, errcode, eip, cs, eflags, esp, ss;
};

struct desc_struct {
    uint32_t a, b;
};

struct lguest {
    uint8_t *mem; /* malloc'd guest-physical memory */
    uint32_t mem_size;
    uint32_t pfn_limit;
    uint32_t page_offset;
    int has_pgdir;
    uint32_t pgdir;
    int has_lguest_data;
    uint32_t lguest_data; /* guest-physical address of struct lguest_data */
    uint32_t noirq_start, noirq_end;
    int dead;
    int clock_kind;
    const int64_t *clock_cell;
};

struct lg_cpu {
    struct lguest *lg;
    struct lguest_regs regs;
    uint32_t esp1;
    uint8_t ss1;
    int halted;
    uint32_t changed;
    uint32_t irqs_pending;
    struct desc_struct idt[IDT_ENTRIES];
};

static unsigned int syscall_vector = SYSCALL_VECTOR;

static void kill_guest(struct lg_cpu *cpu) { cpu->lg->dead = 1; }

/* lguest_address_ok */
static int lguest_address_ok(const struct lguest *lg, uint32_t addr, uint32_t len)
{
    return (addr + len) / PAGE_SIZE < lg->pfn_limit && (addr + len >= addr);
}

static uint32_t lgread_u32(struct lg_cpu *cpu, uint32_t addr)
{
    uint32_t val;
    if (!lguest_address_ok(cpu->lg, addr, 4)) {
        kill_guest(cpu);
        return 0;
    }
    memcpy(&val, cpu->lg->mem + addr, 4);
    return val;
}

static void lgwrite_u32(struct lg_cpu *cpu, uint32_t addr, uint32_t val)
{
    if (!lguest_address_ok(cpu->lg, addr, 4)) {
        kill_guest(cpu);
        return;
    }
    memcpy(cpu->lg->mem + addr, &val, 4);
}

/* get_user / put_user / copy_to_user on a lguest_data field: 0 on success. */
static int ld_get(const struct lguest *lg, uint32_t off, uint32_t *val)
{
    if (!lg->has_lguest_data || (uint64_t)lg->lguest_data + off + 4 > lg->mem_size)
        return -1;
    memcpy(val, lg->mem + lg->lguest_data + off, 4);
    return 0;
}

static int ld_put(struct lguest *lg, uint32_t off, uint32_t val)
{
    if (!lg->has_lguest_data || (uint64_t)lg->lguest_data + off + 4 > lg->mem_size)
        return -1;
    memcpy(lg->mem + lg->lguest_data + off, &val, 4);
    return 0;
}

static uint32_t guest_pa(struct lg_cpu *cpu, uint32_t vaddr)
{
    uint32_t pgd, pte;
    if (!cpu->lg->has_pgdir)
        return vaddr - cpu->lg->page_offset;
    pgd = lgread_u32(cpu, cpu->lg->pgdir + (vaddr >> 22) * 4);
    if (!(pgd & PAGE_PRESENT)) {
        kill_guest(cpu);
        return 0xFFFFFFFFu;
    }
    pte = lgread_u32(cpu, (pgd & 0xFFFFF000u) + ((vaddr >> 12) & 0x3FF) * 4);
    if (!(pte & PAGE_PRESENT))
        kill_guest(cpu);
    return (pte & 0xFFFFF000u) | (vaddr & 0xFFF);
}

static uint32_t idt_address(uint32_t lo, uint32_t hi) { return (lo & 0x0000FFFF) | (hi & 0xFFFF0000); }
static int idt_type(uint32_t lo, uint32_t hi) { (void)lo; return (hi >> 8) & 0xF; }
static int idt_present(uint32_t lo, uint32_t hi) { (void)lo; return (hi & 0x8000); }

static void push_guest_stack(struct lg_cpu *cpu, uint32_t *gstack, uint32_t val)
{
    *gstack -= 4;
    lgwrite_u32(cpu, *gstack, val);
}

static void set_guest_interrupt(struct lg_cpu *cpu, uint32_t lo, uint32_t hi, int has_err)
{
    uint32_t gstack, origstack;
    uint32_t eflags, ss, irq_enable;
    uint32_t virtstack;

    if ((cpu->regs.ss & 0x3) != GUEST_PL) {
        virtstack = cpu->esp1;
        ss = cpu->ss1;
        origstack = gstack = guest_pa(cpu, virtstack);
        push_guest_stack(cpu, &gstack, cpu->regs.ss);
        push_guest_stack(cpu, &gstack, cpu->regs.esp);
    } else {
        virtstack = cpu->regs.esp;
        ss = cpu->regs.ss;
        origstack = gstack = guest_pa(cpu, virtstack);
    }

    eflags = cpu->regs.eflags;
    if (ld_get(cpu->lg, LD_IRQ_ENABLED, &irq_enable) == 0 && !(irq_enable & X86_EFLAGS_IF))
        eflags &= ~X86_EFLAGS_IF;

    push_guest_stack(cpu, &gstack, eflags);
    push_guest_stack(cpu, &gstack, cpu->regs.cs);
    push_guest_stack(cpu, &gstack, cpu->regs.eip);
    if (has_err)
        push_guest_stack(cpu, &gstack, cpu->regs.errcode);

    cpu->regs.ss = ss;
    cpu->regs.esp = virtstack + (gstack - origstack);
    cpu->regs.cs = GUEST_CS;
    cpu->regs.eip = idt_address(lo, hi);

    if (idt_type(lo, hi) == 0xE)
        if (ld_put(cpu->lg, LD_IRQ_ENABLED, 0))
            kill_guest(cpu);
}

static void write_timestamp(struct lg_cpu *cpu)
{
    struct lguest *lg = cpu->lg;
    uint32_t sec, nsec;
    if (lg->clock_kind == CLOCK_KIND_REALTIME) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        sec = (uint32_t)now.tv_sec;
        nsec = (uint32_t)now.tv_nsec;
    } else {
        int64_t ns = *lg->clock_cell; /* VirtualClock: never negative */
        sec = (uint32_t)(ns / 1000000000);
        nsec = (uint32_t)(ns % 1000000000);
    }
    /* copy_to_user of the whole struct timespec, or nothing */
    if (!lg->has_lguest_data || (uint64_t)lg->lguest_data + LD_TIME + 8 > lg->mem_size) {
        kill_guest(cpu);
        return;
    }
    memcpy(lg->mem + lg->lguest_data + LD_TIME, &sec, 4);
    memcpy(lg->mem + lg->lguest_data + LD_TIME + 4, &nsec, 4);
}

static void maybe_do_interrupt(struct lg_cpu *cpu)
{
    unsigned int irq;
    uint32_t blk;
    struct desc_struct *idt;

    if (!cpu->lg->has_lguest_data)
        return;
    if (ld_get(cpu->lg, LD_BLOCKED_INTERRUPTS, &blk))
        return;
    blk = __atomic_load_n(&cpu->irqs_pending, __ATOMIC_SEQ_CST) & ~blk; /* bitmap_andnot */
    irq = blk ? (unsigned int)__builtin_ctz(blk) : LGUEST_IRQS;        /* find_first_bit */
    if (irq >= LGUEST_IRQS)
        return;
    if (cpu->regs.eip >= cpu->lg->noirq_start && cpu->regs.eip < cpu->lg->noirq_end)
        return;
    if (cpu->halted) {
        if (ld_put(cpu->lg, LD_IRQ_ENABLED, X86_EFLAGS_IF))
            kill_guest(cpu);
        cpu->halted = 0;
    } else {
        uint32_t irq_enabled;
        if (ld_get(cpu->lg, LD_IRQ_ENABLED, &irq_enabled))
            irq_enabled = 0;
        if (!irq_enabled)
            return;
    }
    idt = &cpu->idt[FIRST_EXTERNAL_VECTOR + irq];
    if (idt_present(idt->a, idt->b)) {
        __atomic_fetch_and(&cpu->irqs_pending, ~(1u << irq), __ATOMIC_SEQ_CST); /* clear_bit */
        set_guest_interrupt(cpu, idt->a, idt->b, 0);
    }
    write_timestamp(cpu);
}

static int has_err(unsigned int trap)
{
    return (trap == 8 || (trap >= 10 && trap <= 14) || trap == 17);
}

/* deliver_trap: the kernel's second caller of set_guest_interrupt (kept so
 * the compiler sees the same call graph as in interrupts_and_traps.c). */
static int deliver_trap(struct lg_cpu *cpu, unsigned int num)
{
    if (num >= IDT_ENTRIES)
        return 0;
    if (!idt_present(cpu->idt[num].a, cpu->idt[num].b))
        return 0;
    set_guest_interrupt(cpu, cpu->idt[num].a, cpu->idt[num].b, has_err(num));
    return 1;
}

/* --- the IDT ---------------------------------------------------------------- */
static int could_be_syscall(unsigned int num) { return num == SYSCALL_VECTOR || num == syscall_vector; }

static int direct_trap(unsigned int num)
{
    if (num >= FIRST_EXTERNAL_VECTOR && !could_be_syscall(num))
        return 0;
    return num != 14 && num != 13 && num != 7 && num != 6 && num != LGUEST_TRAP_ENTRY;
}

static void default_idt_entry(struct desc_struct *idt, int trap, const uint32_t handler,
                              const struct desc_struct *base)
{
    uint32_t flags = 0x8e00;
    if (trap == LGUEST_TRAP_ENTRY)
        flags |= (GUEST_PL << 13);
    else if (base)
        flags |= (base->b & 0x6000);
    idt->a = (LGUEST_CS << 16) | (handler & 0x0000FFFF);
    idt->b = (handler & 0xFFFF0000) | flags;
}

static void copy_traps(const struct lg_cpu *cpu, struct desc_struct *idt, const uint32_t *def)
{
    unsigned int i;
    for (i = 0; i < IDT_ENTRIES; i++) {
        const struct desc_struct *gidt = &cpu->idt[i];
        if (!direct_trap(i))
            continue;
        if (idt_type(gidt->a, gidt->b) == 0xF)
            idt[i] = *gidt;
        else
            default_idt_entry(&idt[i], i, def[i], gidt);
    }
}

void bl_load_guest_idt_entry(struct lg_cpu *cpu, unsigned int num, uint32_t lo, uint32_t hi)
{
    if (num == 2 || num == 8 || num == 15 || num == LGUEST_TRAP_ENTRY)
        return;
    cpu->changed |= 1; /* CHANGED_IDT */
    if (num >= IDT_ENTRIES) {
        kill_guest(cpu);
        return;
    }
    if (!idt_present(lo, hi)) {
        cpu->idt[num].a = cpu->idt[num].b = 0;
        return;
    }
    if (idt_type(lo, hi) != 0xE && idt_type(lo, hi) != 0xF)
        kill_guest(cpu);
    cpu->idt[num].a = (GUEST_CS << 16) | (lo & 0x0000FFFF);
    cpu->idt[num].b = hi & 0xFFFFEF00;
}

/* --- the exported entry points (ctypes) ------------------------------------------
 * The loops below call the static functions: an exported function in a -fPIC
 * shared library is called through the PLT and never inlined (semantic
 * interposition), which the compiled core's static lg_* functions avoid. */
void bl_maybe_do_interrupt(struct lg_cpu *cpu) { maybe_do_interrupt(cpu); }

int bl_deliver_trap(struct lg_cpu *cpu, unsigned int num) { return deliver_trap(cpu, num); }

void bl_copy_traps(const struct lg_cpu *cpu, struct desc_struct *idt, const uint32_t *def)
{
    copy_traps(cpu, idt, def);
}

struct lg_cpu *bl_new(uint32_t mem_size, uint32_t page_offset)
{
    struct lg_cpu *cpu = calloc(1, sizeof(*cpu));
    struct lguest *lg = calloc(1, sizeof(*lg));
    uint8_t *mem = malloc(mem_size);
    if (!cpu || !lg || !mem) {
        free(cpu);
        free(lg);
        free(mem);
        return NULL;
    }
    memset(mem, 0, mem_size);
    lg->mem = mem;
    lg->mem_size = mem_size;
    lg->pfn_limit = mem_size / PAGE_SIZE;
    lg->page_offset = page_offset;
    cpu->lg = lg;
    return cpu;
}

void bl_free(struct lg_cpu *cpu)
{
    if (!cpu)
        return;
    free(cpu->lg->mem);
    free(cpu->lg);
    free(cpu);
}

uint8_t *bl_mem(struct lg_cpu *cpu) { return cpu->lg->mem; }
uint32_t *bl_regs(struct lg_cpu *cpu) { return &cpu->regs.eax; }   /* 18 words, API order */
uint32_t *bl_idt(struct lg_cpu *cpu) { return &cpu->idt[0].a; }     /* 256 x {a, b} */
int bl_dead(struct lg_cpu *cpu) { return cpu->lg->dead; }
uint32_t bl_pending(struct lg_cpu *cpu) { return __atomic_load_n(&cpu->irqs_pending, __ATOMIC_SEQ_CST); }
void bl_set_pending(struct lg_cpu *cpu, uint32_t v) { __atomic_store_n(&cpu->irqs_pending, v, __ATOMIC_SEQ_CST); }

void bl_set_lguest_data(struct lg_cpu *cpu, uint32_t addr)
{
    cpu->lg->has_lguest_data = 1;
    cpu->lg->lguest_data = addr;
}

void bl_set_stack(struct lg_cpu *cpu, uint32_t ss1, uint32_t esp1)
{
    cpu->ss1 = (uint8_t)ss1;
    cpu->esp1 = esp1;
}

void bl_set_noirq(struct lg_cpu *cpu, uint32_t start, uint32_t end)
{
    cpu->lg->noirq_start = start;
    cpu->lg->noirq_end = end;
}

/* kind 0: CLOCK_REALTIME; kind 1: read *cell (int64 ns, e.g. VirtualClock.cell). */
void bl_set_clock(struct lg_cpu *cpu, int kind, const int64_t *cell)
{
    cpu->lg->clock_kind = kind;
    cpu->lg->clock_cell = cell;
}

/* --- timing loops ------------------------------------------------------------------ */
static int64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* n rounds of: set irq pending (set_bit), maybe_do_interrupt, put back the
 * registers a delivery changes -- the same loop as _core.bench_deliver. */
int64_t bl_bench_deliver(struct lg_cpu *cpu, unsigned int irq, int64_t n)
{
    uint32_t ss = cpu->regs.ss, esp = cpu->regs.esp, cs = cpu->regs.cs, eip = cpu->regs.eip;
    uint32_t bit = 1u << irq;
    int64_t i, t0, t1;
    t0 = monotonic_ns();
    for (i = 0; i < n; i++) {
        __atomic_fetch_or(&cpu->irqs_pending, bit, __ATOMIC_SEQ_CST);
        maybe_do_interrupt(cpu);
        cpu->regs.ss = ss;
        cpu->regs.esp = esp;
        cpu->regs.cs = cs;
        cpu->regs.eip = eip;
    }
    t1 = monotonic_ns();
    return t1 - t0;
}

/* The same, but setting all of `mask` pending each round (the lowest
 * unblocked one is delivered). */
int64_t bl_bench_deliver_mask(struct lg_cpu *cpu, uint32_t mask, int64_t n)
{
    uint32_t ss = cpu->regs.ss, esp = cpu->regs.esp, cs = cpu->regs.cs, eip = cpu->regs.eip;
    int64_t i, t0, t1;
    t0 = monotonic_ns();
    for (i = 0; i < n; i++) {
        __atomic_fetch_or(&cpu->irqs_pending, mask, __ATOMIC_SEQ_CST);
        maybe_do_interrupt(cpu);
        cpu->regs.ss = ss;
        cpu->regs.esp = esp;
        cpu->regs.cs = cs;
        cpu->regs.eip = eip;
    }
    t1 = monotonic_ns();
    return t1 - t0;
}

/* Not the kernel's loop: a reference point for what copy_traps could cost if
 * it visited only the vectors that can be direct (0..31 and the syscall
 * vector(s), listed once up front) instead of testing all 256. */
static void copy_traps_listed(const struct lg_cpu *cpu, struct desc_struct *idt, const uint32_t *def,
                              const uint8_t *list, unsigned int count)
{
    unsigned int k;
    for (k = 0; k < count; k++) {
        unsigned int i = list[k];
        const struct desc_struct *gidt = &cpu->idt[i];
        if (idt_type(gidt->a, gidt->b) == 0xF)
            idt[i] = *gidt;
        else
            default_idt_entry(&idt[i], i, def[i], gidt);
    }
}

int64_t bl_bench_copy_traps_listed(struct lg_cpu *cpu, struct desc_struct *idt, const uint32_t *def, int64_t n)
{
    uint8_t list[IDT_ENTRIES];
    unsigned int i, count = 0;
    int64_t j, t0, t1;
    for (i = 0; i < IDT_ENTRIES; i++)
        if (direct_trap(i))
            list[count++] = (uint8_t)i;
    t0 = monotonic_ns();
    for (j = 0; j < n; j++) {
        copy_traps_listed(cpu, idt, def, list, count);
        __asm__ __volatile__("" : : "r"(idt) : "memory");
    }
    t1 = monotonic_ns();
    return t1 - t0;
}

int64_t bl_bench_copy_traps(struct lg_cpu *cpu, struct desc_struct *idt, const uint32_t *def, int64_t n)
{
    int64_t i, t0, t1;
    t0 = monotonic_ns();
    for (i = 0; i < n; i++) {
        copy_traps(cpu, idt, def);
        /* keep the compiler from collapsing identical calls into one */
        __asm__ __volatile__("" : : "r"(idt) : "memory");
    }
    t1 = monotonic_ns();
    return t1 - t0;
}
