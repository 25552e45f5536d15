/* lguest/abi.h -- the facts shared by C, Cython and Python, defined once.
 *
 * First draft of the public C header for native emulators: a hook compiled
 * against it (e.g. lguest/unicorn/_uchook.pyx for Unicorn) gets the register layout
 * of struct lguest_regs, the kill codes, the rules a native fast path must
 * apply exactly as the core does (has_err, the direct-trap rule, "which irq
 * would maybe_do_interrupt take"), and the versioned table of C entry points
 * that lguest._core.native_api(cpu) hands out in a PyCapsule.
 *
 * Everything here is self-contained C99 with no side effects: constants,
 * plain structs and static inline predicates over values the caller read.
 * The Python constants (lguest/constants.py, lguest/messages.py) are checked
 * against this file by tests/test_abi_header.py, which parses it: keep each
 * fact on one `#define NAME VALUE` line or one `NAME = VALUE,` enum line.
 *
 * The behaviour re-created is Linux's drivers/lguest (early 2009, i386).
 */
#ifndef LGUEST_ABI_H
#define LGUEST_ABI_H

#include <stdint.h>

/* ---- privilege, selectors, vectors (ABI.md section 1) -------------------- */
#define LG_GUEST_PL 1                /* the guest kernel runs in ring 1 */
#define LG_GUEST_CS 0x61             /* KERNEL_CS | GUEST_PL */
#define LG_GUEST_DS 0x69             /* KERNEL_DS | GUEST_PL: ds, es, ss */
#define LG_LGUEST_CS 0x50            /* the Switcher's ring-0 code segment */
#define LG_LGUEST_TRAP_ENTRY 0x1F    /* int $0x1f: the hypercall trap */
#define LG_SYSCALL_VECTOR 0x80       /* Linux's system call vector */
#define LG_FIRST_EXTERNAL_VECTOR 0x20
#define LG_IDT_ENTRIES 256
#define LG_IRQS 32                   /* virtual irqs: one u32 bitmap */
#define LG_X86_EFLAGS_IF 0x200
#define LG_CHANGED_IDT 1

/* IDT gate bits, in the high word of a gate */
#define LG_IDT_PRESENT 0x8000
#define LG_INTERRUPT_GATE 0xE
#define LG_TRAP_GATE 0xF

/* ---- struct lguest_data: the offsets the core and hooks read ------------- */
#define LG_LD_IRQ_ENABLED 0          /* u32: X86_EFLAGS_IF or 0 */
#define LG_LD_BLOCKED_INTERRUPTS 4   /* u32 bitmap */
#define LG_LD_TIME 12                /* struct timespec: two i386 longs */
#define LG_LD_SYSCALL_VEC 1132

/* ---- struct lguest_regs: 18 u32 words, in this order --------------------- */
enum lguest_reg {
    LG_R_EAX = 0,
    LG_R_EBX = 1,
    LG_R_ECX = 2,
    LG_R_EDX = 3,
    LG_R_ESI = 4,
    LG_R_EDI = 5,
    LG_R_EBP = 6,
    LG_R_GS = 7,
    LG_R_FS = 8,
    LG_R_DS = 9,
    LG_R_ES = 10,
    LG_R_TRAPNUM = 11,
    LG_R_ERRCODE = 12,
    LG_R_EIP = 13,
    LG_R_CS = 14,
    LG_R_EFLAGS = 15,
    LG_R_ESP = 16,
    LG_R_SS = 17,
    LG_NUM_REGS = 18,
};

struct lguest_regs {
    uint32_t eax, ebx, ecx, edx, esi, edi, ebp, gs, fs, ds, es;
    uint32_t trapnum, errcode, eip, cs, eflags, esp, ss;
};

/* ---- kill codes: why a guest died (messages in lguest/messages.py) ------- */
enum lguest_kill {
    LG_KILL_ALIVE = 0,                 /* not dead */
    LG_KILL_CUSTOM = 1,                /* a reason string given to Guest.kill() */
    LG_KILL_DISABLING_INTERRUPTS = 2,
    LG_KILL_REENABLING_INTERRUPTS = 3,
    LG_KILL_BAD_STACK_SEGMENT = 4,
    LG_KILL_BAD_STACK_PAGES = 5,
    LG_KILL_BAD_IDT_TYPE = 6,
    LG_KILL_SETTING_IDT_ENTRY = 7,
    LG_KILL_BAD_READ_ADDRESS = 8,
    LG_KILL_BAD_WRITE_ADDRESS = 9,
    LG_KILL_BAD_ADDRESS = 10,
    LG_KILL_BAD_STACK_PAGE = 11,
    LG_KILL_WRITING_TIMESTAMP = 12,
    LG_KILL_SWITCHER_PAGES = 13,
    LG_KILL_BAD_PGD = 14,
    LG_KILL_BAD_PTE = 15,
};

/* ---- the rules ------------------------------------------------------------ */

/* The traps for which the CPU pushes an error code. */
static inline int lg_has_err(uint32_t trap)
{
    return trap == 8 || (trap >= 10 && trap <= 14) || trap == 17;
}

/* A gate's present bit and type (0xE interrupt, 0xF trap), from its high word. */
static inline int lg_gate_present(uint32_t hi) { return (hi & LG_IDT_PRESENT) != 0; }
static inline unsigned lg_gate_type(uint32_t hi) { return (hi >> 8) & 0xF; }

/* direct_trap: may trap `num` go straight to the guest's handler, without
 * the host?  Not external interrupts (except a system-call vector: Linux's
 * 0x80 or the host's syscall_vector), not the traps the host must see (#PF
 * for shadow paging, #GP for in/out emulation, #NM for the lazy FPU, #UD
 * for the vmcall patch) and never the hypercall trap. */
static inline int lg_direct_trap(uint32_t num, uint32_t syscall_vector)
{
    if (num >= LG_FIRST_EXTERNAL_VECTOR && num != LG_SYSCALL_VECTOR && num != syscall_vector)
        return 0;
    return !(num == 14 || num == 13 || num == 7 || num == 6 || num == LG_LGUEST_TRAP_ENTRY);
}

/* Is host IDT entry {lo, hi} a guest gate that copy_traps copied for a direct
 * trap?  It copies the guest's present trap gates (selector GUEST_CS) and
 * points everything else at the Switcher, so a native hook that finds one
 * may deliver the trap into the guest itself, as the CPU would have. */
static inline int lg_host_gate_direct(uint32_t lo, uint32_t hi)
{
    return lg_gate_present(hi) && lg_gate_type(hi) == LG_TRAP_GATE && (lo >> 16) == LG_GUEST_CS;
}

/* Which virtual irq would maybe_do_interrupt try to deliver now?  LG_IRQS
 * when none.  Side-effect free: the caller reads the pending bitmap (with an
 * atomic load) and lguest_data's blocked_interrupts / irq_enabled; whether
 * the irq's gate is present is the caller's next question (the core still
 * wakes a halted cpu and refreshes the time for an irq without a handler).
 *   - the lowest pending, unblocked irq;
 *   - none while eip is inside the guest's iret sequence [noirq_start, noirq_end);
 *   - a halted cpu takes it whatever irq_enabled says (the irq wakes it),
 *     a running one only while irq_enabled is non-zero (any bit: the
 *     kernel's `if (!irq_enabled) return`). */
static inline unsigned lg_irq_to_take(uint32_t pending, uint32_t blocked, uint32_t irq_enabled, int halted,
                                      uint32_t eip, uint32_t noirq_start, uint32_t noirq_end)
{
    uint32_t ready = pending & ~blocked;
    if (!ready)
        return LG_IRQS;
    if (eip >= noirq_start && eip < noirq_end)
        return LG_IRQS;
    if (!halted && !irq_enabled)
        return LG_IRQS;
    return (unsigned)__builtin_ctz(ready);
}

/* ... and would it be delivered: the irq's gate in the guest IDT
 * (256 x {lo, hi}) is present.  1 or 0. */
static inline int lg_irq_deliverable(uint32_t pending, uint32_t blocked, uint32_t irq_enabled, int halted,
                                     uint32_t eip, uint32_t noirq_start, uint32_t noirq_end,
                                     const uint32_t *guest_idt)
{
    unsigned irq = lg_irq_to_take(pending, blocked, irq_enabled, halted, eip, noirq_start, noirq_end);
    return irq < LG_IRQS && lg_gate_present(guest_idt[2 * (LG_FIRST_EXTERNAL_VECTOR + irq) + 1]);
}

/* ---- the native API: C entry points for an emulator's hook --------------- */
/* lguest._core.native_api(cpu) returns a PyCapsule named
 * LGUEST_NATIVE_API_CAPSULE holding a `struct lguest_native_api *` for that
 * cpu.  A native hook checks `version` (and that `size` covers the fields
 * it uses), then delivers a direct trap without Python: fill *regs from the
 * emulator, call set_guest_interrupt, check *dead_code, load *regs back.
 * The pointers stay valid while the capsule lives; guest memory may still
 * be closed (every access then fails its bounds check, killing the guest),
 * so hold it (GuestMemory.hold()) while a hook may run without the GIL. */
#define LGUEST_NATIVE_API_VERSION 1
#define LGUEST_NATIVE_API_CAPSULE "lguest._core.lg_native_api"

struct lguest_native_api {
    uint32_t version;           /* LGUEST_NATIVE_API_VERSION */
    uint32_t size;              /* sizeof(struct lguest_native_api) */
    void *cpu;                  /* the core's lg_cpu: opaque, pass it back */
    uint32_t *regs;             /* struct lguest_regs as 18 words (LG_R_* order) */
    uint32_t *irqs_pending;     /* the cpu's pending-irq bitmap: atomic access only */
    int *dead_code;             /* LG_KILL_ALIVE until the guest is killed */
    /* set_guest_interrupt(cpu, lo, hi, has_err): push an interrupt frame
     * for gate {lo, hi} on the guest's stack (with regs[LG_R_ERRCODE] if
     * has_err) and move regs to the handler; nogil, never raises. */
    void (*set_guest_interrupt)(void *cpu, uint32_t lo, uint32_t hi, int has_err);
};

#endif /* LGUEST_ABI_H */
