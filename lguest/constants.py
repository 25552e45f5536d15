"""The numbers of the lguest host ABI of early 2009 (i386).

Everything here is a fact copied from the spec (ABI.md §1 and §2); nothing is
derived at run time.  Both cores and the control plane import from here so a
value is written down exactly once.
"""

from __future__ import annotations

# --- privilege levels and segment selectors ------------------------------
GUEST_PL = 1  # the guest kernel runs in ring 1
KERNEL_CS = 0x60  # GDT entry 12
KERNEL_DS = 0x68  # GDT entry 13
USER_CS = 0x73  # GDT entry 14, RPL 3
USER_DS = 0x7B  # GDT entry 15, RPL 3
LGUEST_CS = 0x50  # GDT entry 10: the Switcher's own code segment (ring 0)
LGUEST_DS = 0x58  # GDT entry 11
GUEST_CS = KERNEL_CS | GUEST_PL  # 0x61: what the guest kernel sees as cs
GUEST_DS = KERNEL_DS | GUEST_PL  # 0x69: its ds/es/ss

GDT_ENTRY_LGUEST_CS = 10
GDT_ENTRY_LGUEST_DS = 11
GDT_ENTRY_TLS_MIN = 6
GDT_ENTRY_TLS_ENTRIES = 3
GDT_ENTRY_TSS = 16
GDT_ENTRY_DOUBLEFAULT_TSS = 31
GDT_ENTRIES = 32

# --- vectors -----------------------------------------------------------------
LGUEST_TRAP_ENTRY = 0x1F  # int $0x1f: the hypercall trap
SYSCALL_VECTOR = 0x80
FIRST_EXTERNAL_VECTOR = 0x20
IDT_ENTRIES = 256
NR_VECTORS = 256
LGUEST_IRQS = 32  # virtual irqs: one u32 bitmap

X86_EFLAGS_IF = 0x200
X86_EFLAGS_RESERVED = 0x2  # bit 1 always reads as one

CHANGED_IDT = 1
CHANGED_GDT = 2
CHANGED_GDT_TLS = 4
CHANGED_ALL = 3

PAGE_SIZE = 4096
PAGE_SHIFT = 12
SWITCHER_ADDR = 0xFFC00000
RESERVE_MEM = 0x400000  # what LGUEST_INIT tells the guest to keep free at the top

# page-table entry flags (non-PAE, 2 levels)
PAGE_PRESENT = 0x001
PAGE_RW = 0x002
PAGE_USER = 0x004
PAGE_ACCESSED = 0x020
PAGE_DIRTY = 0x040
PAGE_PSE = 0x080
PAGE_GLOBAL = 0x100
PAGE_TABLE = 0x067  # the only flags a page-directory entry may carry

# IDT gate bits in the high word
IDT_PRESENT = 0x8000
IDT_DPL_MASK = 0x6000
INTERRUPT_GATE = 0xE
TRAP_GATE = 0xF

# --- hypercalls (arch/x86/include/asm/lguest_hcall.h at 4cd8b5e2) ----------
LHCALL_FLUSH_ASYNC = 0
LHCALL_LGUEST_INIT = 1
LHCALL_SHUTDOWN = 2
LHCALL_LOAD_GDT = 3
LHCALL_NEW_PGTABLE = 4
LHCALL_FLUSH_TLB = 5
LHCALL_LOAD_IDT_ENTRY = 6
LHCALL_SET_STACK = 7
LHCALL_TS = 8
LHCALL_SET_CLOCKEVENT = 9
LHCALL_HALT = 10
LHCALL_SET_PTE = 14
LHCALL_SET_PMD = 15
LHCALL_LOAD_TLS = 16
LHCALL_NOTIFY = 17
LHCALL_RING_SIZE = 64

LGUEST_SHUTDOWN_POWEROFF = 1
LGUEST_SHUTDOWN_RESTART = 2

KVM_HYPERCALL = b"\x0f\x01\xc1"  # vmcall
LGUEST_HYPERCALL_PATCH = b"\xcd\x1f\x90"  # int $0x1f; nop

# --- struct lguest_data (the guest's page shared with the host) -------------
LD_IRQ_ENABLED = 0
LD_BLOCKED_INTERRUPTS = 4
LD_CR2 = 8
LD_TIME = 12  # struct timespec: tv_sec @12, tv_nsec @16
LD_HCALL_STATUS = 20  # u8[64]
LD_HCALLS = 84  # struct hcall_args[64], 16 bytes each
LD_RESERVE_MEM = 1108
LD_TSC_KHZ = 1112
LD_PGDIR = 1116
LD_NOIRQ_START = 1120
LD_NOIRQ_END = 1124
LD_KERNEL_ADDRESS = 1128
LD_SYSCALL_VEC = 1132
LGUEST_DATA_SIZE = 1136

# --- struct lguest_regs: 18 u32 words, in this order ------------------------
REG_NAMES = (
    "eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "gs", "fs", "ds",
    "es", "trapnum", "errcode", "eip", "cs", "eflags", "esp", "ss",
)
(R_EAX, R_EBX, R_ECX, R_EDX, R_ESI, R_EDI, R_EBP, R_GS, R_FS, R_DS,
 R_ES, R_TRAPNUM, R_ERRCODE, R_EIP, R_CS, R_EFLAGS, R_ESP, R_SS) = range(18)
NUM_REGS = 18

# --- errno values the host hands back ---------------------------------------
EPERM = 1
ENOENT = 2
EIO = 5
EAGAIN = 11
ENOMEM = 12
EFAULT = 14
EBUSY = 16
EINVAL = 22
ERESTART = 85

U32 = 0xFFFFFFFF


# --- the direct-trap rule (lg_direct_trap in lguest/include/lguest/abi.h, which
# the compiled core uses; tests/test_abi_header.py checks that they agree) ---
def is_direct_trap(num: int, syscall_vector: int) -> bool:
    """May trap ``num`` go straight to the guest's handler, without the host?

    Not external interrupts, except a system-call vector (Linux's 0x80 or
    the host's ``syscall_vector``); not #PF, #GP, #NM or #UD, which the host
    must see; never the hypercall trap.  ``num`` is an already checked u32."""
    if num >= FIRST_EXTERNAL_VECTOR and num != SYSCALL_VECTOR and num != syscall_vector:
        return False
    return num not in (14, 13, 7, 6, LGUEST_TRAP_ENTRY)


# The vectors the host kernel itself owns at boot (ABI.md §1, recommended
# model for i386 SMP with a local APIC and thermal monitoring), and who owns
# them, for `lguest vectors`.
HOST_VECTOR_OWNERS: dict[int, str] = {
    **{v: "CPU exception" for v in range(0x00, 0x20)},
    # set_intr_gate plus a direct set_bit in used_vectors at boot (SMP + local APIC)
    0x20: "IRQ move cleanup",
    0x80: "Linux system call",
    0xEF: "local APIC timer",
    **{v: "TLB invalidate IPI" for v in range(0xF0, 0xF8)},
    0xFA: "thermal monitor",
    0xFB: "call-function-single IPI",
    0xFC: "call-function IPI",
    0xFD: "reschedule IPI",
    0xFE: "local APIC error",
    0xFF: "spurious interrupt",
}
# Per-CPU vectors: every CPU maps 0x30-0x3F to the legacy IRQs 0-15 at boot.
HOST_PERCPU_VECTORS = range(0x30, 0x40)

# ``from lguest.constants import *`` (lguest/__init__.py) exports the numbers only.
__all__ = [name for name in dir() if name.isupper() and not name.startswith("_")]
