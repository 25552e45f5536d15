# Cython declarations of lguest/include/lguest/abi.h, the one definition of
# every fact shared by C, Cython and Python (see that header).  The Cython
# names are those of lguest.constants / lguest.messages, so the core reads
# as the Python twin does; the C names carry the header's LG_ prefix.
from libc.stdint cimport uint32_t

cdef extern from "lguest/abi.h" nogil:
    enum:
        GUEST_PL "LG_GUEST_PL"
        GUEST_CS "LG_GUEST_CS"
        GUEST_DS "LG_GUEST_DS"
        LGUEST_CS "LG_LGUEST_CS"
        LGUEST_TRAP_ENTRY "LG_LGUEST_TRAP_ENTRY"
        SYSCALL_VECTOR "LG_SYSCALL_VECTOR"
        FIRST_EXTERNAL_VECTOR "LG_FIRST_EXTERNAL_VECTOR"
        IDT_ENTRIES "LG_IDT_ENTRIES"
        LGUEST_IRQS "LG_IRQS"
        X86_EFLAGS_IF "LG_X86_EFLAGS_IF"
        CHANGED_IDT "LG_CHANGED_IDT"
        IDT_PRESENT "LG_IDT_PRESENT"
        INTERRUPT_GATE "LG_INTERRUPT_GATE"
        TRAP_GATE "LG_TRAP_GATE"
        LD_IRQ_ENABLED "LG_LD_IRQ_ENABLED"
        LD_BLOCKED_INTERRUPTS "LG_LD_BLOCKED_INTERRUPTS"
        LD_TIME "LG_LD_TIME"
        LD_SYSCALL_VEC "LG_LD_SYSCALL_VEC"
        NUM_REGS "LG_NUM_REGS"
        LGUEST_NATIVE_API_VERSION

    # kill codes (lguest.messages)
    enum:
        K_ALIVE "LG_KILL_ALIVE"
        K_CUSTOM "LG_KILL_CUSTOM"
        K_DISABLING_INTERRUPTS "LG_KILL_DISABLING_INTERRUPTS"
        K_REENABLING_INTERRUPTS "LG_KILL_REENABLING_INTERRUPTS"
        K_BAD_STACK_SEGMENT "LG_KILL_BAD_STACK_SEGMENT"
        K_BAD_STACK_PAGES "LG_KILL_BAD_STACK_PAGES"
        K_BAD_IDT_TYPE "LG_KILL_BAD_IDT_TYPE"
        K_SETTING_IDT_ENTRY "LG_KILL_SETTING_IDT_ENTRY"
        K_BAD_READ_ADDRESS "LG_KILL_BAD_READ_ADDRESS"
        K_BAD_WRITE_ADDRESS "LG_KILL_BAD_WRITE_ADDRESS"
        K_BAD_ADDRESS "LG_KILL_BAD_ADDRESS"
        K_BAD_STACK_PAGE "LG_KILL_BAD_STACK_PAGE"
        K_WRITING_TIMESTAMP "LG_KILL_WRITING_TIMESTAMP"
        K_SWITCHER_PAGES "LG_KILL_SWITCHER_PAGES"
        K_BAD_PGD "LG_KILL_BAD_PGD"
        K_BAD_PTE "LG_KILL_BAD_PTE"

    const char *LGUEST_NATIVE_API_CAPSULE

    ctypedef struct lg_regs "struct lguest_regs":
        uint32_t eax, ebx, ecx, edx, esi, edi, ebp, gs, fs, ds, es
        uint32_t trapnum, errcode, eip, cs, eflags, esp, ss

    ctypedef struct lg_native_api "struct lguest_native_api":
        uint32_t version
        uint32_t size
        void *cpu
        uint32_t *regs
        uint32_t *irqs_pending
        int *dead_code
        void (*set_guest_interrupt)(void *cpu, uint32_t lo, uint32_t hi, int has_err) noexcept nogil

    bint lg_has_err(uint32_t trap) noexcept
    bint lg_gate_present(uint32_t hi) noexcept
    unsigned lg_gate_type(uint32_t hi) noexcept
    bint lg_direct_trap(uint32_t num, uint32_t syscall_vector) noexcept
    bint lg_host_gate_direct(uint32_t lo, uint32_t hi) noexcept
    unsigned lg_irq_to_take(uint32_t pending, uint32_t blocked, uint32_t irq_enabled, int halted,
                            uint32_t eip, uint32_t noirq_start, uint32_t noirq_end) noexcept
    bint lg_irq_deliverable(uint32_t pending, uint32_t blocked, uint32_t irq_enabled, int halted,
                            uint32_t eip, uint32_t noirq_start, uint32_t noirq_end,
                            const uint32_t *guest_idt) noexcept
