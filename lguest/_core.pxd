# cython: language_level=3
# The compiled core's C state and how it touches guest memory; the seed
# functions over them are in _core.pyx, which Cython reads after this file.
#
# Guest memory is only ever reached through these accessors: lg_range_ok is
# lguest_address_ok, a failing lg_read32/lg_write32 kills the guest with the
# kernel's reason (and reads give 0), the lguest_data accessors fail quietly
# like get_user/put_user (their callers decide whether that kills), and
# guest_pa / pin_page walk the guest's page tables through lg_read32.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t

from lguest.abi cimport (K_ALIVE, K_BAD_ADDRESS, K_BAD_PGD, K_BAD_PTE, K_BAD_READ_ADDRESS, K_BAD_STACK_PAGE,
                         K_BAD_WRITE_ADDRESS, K_SWITCHER_PAGES, lg_regs)

cdef extern from "_lgutil.h" nogil:
    void lg_atomic_or(uint32_t *p, uint32_t v) noexcept
    void lg_atomic_and(uint32_t *p, uint32_t v) noexcept
    uint32_t lg_atomic_load(const uint32_t *p) noexcept
    void lg_atomic_store(uint32_t *p, uint32_t v) noexcept
    uint32_t lg_load32(const uint8_t *p) noexcept
    void lg_store32(uint8_t *p, uint32_t v) noexcept
    int64_t lg_realtime_ns() noexcept
    int64_t lg_monotonic_ns() noexcept

# Page-table bits and the clock kinds: facts of this file alone.
cdef enum:
    PAGE_SIZE = 4096
    PAGE_PRESENT = 0x1
    PAGE_RW = 0x2
    PAGE_ACCESSED = 0x20
    PAGE_DIRTY = 0x40
    PAGE_PSE = 0x80
    PAGE_TABLE = 0x67
    CLOCK_REALTIME_KIND = 0
    CLOCK_CELL_KIND = 1
    CLOCK_PYTHON_KIND = 2

# --- the C state ----------------------------------------------------------------
ctypedef struct lg_guest:
    uint8_t *mem            # guest-physical 0; NULL once the memory is closed
    uint64_t mem_size       # bytes
    uint64_t limit          # pfn_limit * PAGE_SIZE: see lg_range_ok
    uint32_t pfn_limit
    uint32_t page_offset
    int has_lguest_data
    uint32_t lguest_data
    int has_pgdir
    uint32_t pgdir
    uint32_t noirq_start
    uint32_t noirq_end
    uint32_t stack_pages
    uint32_t syscall_vector
    int dead_code
    uint32_t dead_a
    uint32_t dead_b
    int clock_kind
    int64_t *clock_cell
    void *clock_obj         # borrowed: the Guest object keeps it alive
    uint8_t direct[256]     # direct_trap(i), fixed by syscall_vector
    uint8_t direct_list[256]  # the i with direct[i], ascending (copy_traps visits only these)
    uint32_t n_direct

ctypedef struct lg_cpu:
    lg_guest *lg
    lg_regs *regs
    uint32_t *idt           # 256 x {a, b}
    uint32_t esp1
    uint8_t ss1
    int halted
    uint32_t changed
    uint32_t irqs_pending   # atomic bit operations only
    uint64_t irq_counts[32] # deliveries per virtual irq (statistics)


# --- kill_guest -------------------------------------------------------------------
cdef inline void lg_kill(lg_guest *lg, int code, uint32_t a, uint32_t b) noexcept nogil:
    # Only the first reason counts; the caller carries on regardless.
    if lg.dead_code == K_ALIVE:
        lg.dead_code = code
        lg.dead_a = a
        lg.dead_b = b


# --- guest memory through lguest_address_ok --------------------------------------
cdef inline bint lg_range_ok(const lg_guest *lg, uint32_t addr, uint32_t n) noexcept nogil:
    # lguest_address_ok: ((addr+n) mod 2**32) / PAGE_SIZE < pfn_limit and no
    # wrap.  With limit = pfn_limit*PAGE_SIZE <= 2**32 that is exactly one
    # 64-bit comparison: a wrapping end has addr+n >= 2**32 >= limit.
    return <uint64_t>addr + n < lg.limit

cdef inline uint32_t lg_read32(lg_guest *lg, uint32_t addr) noexcept nogil:
    if not lg_range_ok(lg, addr, 4):
        lg_kill(lg, K_BAD_READ_ADDRESS, addr, 4)
        return 0
    return lg_load32(lg.mem + addr)

cdef inline void lg_write32(lg_guest *lg, uint32_t addr, uint32_t val) noexcept nogil:
    if not lg_range_ok(lg, addr, 4):
        lg_kill(lg, K_BAD_WRITE_ADDRESS, addr, 4)
        return
    lg_store32(lg.mem + addr, val)

# get_user/put_user on a lguest_data field: fail while unset or past the end.
cdef inline bint lg_ld_ok(const lg_guest *lg, uint32_t off, uint32_t n) noexcept nogil:
    return lg.has_lguest_data and <uint64_t>lg.lguest_data + off + n <= lg.mem_size

cdef inline bint lg_ld_read(lg_guest *lg, uint32_t off, uint32_t *out) noexcept nogil:
    if not lg_ld_ok(lg, off, 4):
        return False
    out[0] = lg_load32(lg.mem + lg.lguest_data + off)
    return True

cdef inline bint lg_ld_write(lg_guest *lg, uint32_t off, uint32_t val) noexcept nogil:
    if not lg_ld_ok(lg, off, 4):
        return False
    lg_store32(lg.mem + lg.lguest_data + off, val)
    return True


# --- address translation (page_tables.c's guest_pa and pin_page) ------------------------------------------------------------
cdef inline uint32_t lg_guest_pa(lg_guest *lg, uint32_t vaddr) noexcept nogil:
    cdef uint32_t pgd, pte
    if not lg.has_pgdir:
        return vaddr - lg.page_offset
    pgd = lg_read32(lg, lg.pgdir + (vaddr >> 22) * 4)
    if not (pgd & PAGE_PRESENT):
        lg_kill(lg, K_BAD_ADDRESS, vaddr, 0)
        return 0xFFFFFFFF
    pte = lg_read32(lg, (pgd & 0xFFFFF000U) + ((vaddr >> 12) & 0x3FF) * 4)
    if not (pte & PAGE_PRESENT):
        lg_kill(lg, K_BAD_ADDRESS, vaddr, 0)
    return (pte & 0xFFFFF000U) | (vaddr & 0xFFF)

cdef inline void lg_pin_page(lg_guest *lg, uint32_t vaddr) noexcept nogil:
    cdef uint32_t pgd, pte, pte_addr
    cdef uint64_t page
    if not lg.has_pgdir:
        page = lg_guest_pa(lg, vaddr) & 0xFFFFF000U
        if page + PAGE_SIZE > lg.mem_size:
            lg_kill(lg, K_BAD_STACK_PAGE, vaddr, 0)
        return
    # page_writable + demand_page(vaddr, write) without shadow tables, in
    # the kernel's order (API.md): the Switcher's range first, whatever the
    # guest's tables say; it touches no guest memory.
    if vaddr >= 0xFFC00000U:
        lg_kill(lg, K_SWITCHER_PAGES, 0, 0)
        return
    pgd = lg_read32(lg, lg.pgdir + (vaddr >> 22) * 4)
    if not (pgd & PAGE_PRESENT):
        lg_kill(lg, K_BAD_STACK_PAGE, vaddr, 0)
        return
    # check_gpgd kills but demand_page carries on with the walk (a bad pfn
    # then fails the pte read, whose kill is already shadowed).
    if (pgd & 0xFFF & ~(<uint32_t>PAGE_TABLE)) or (pgd >> 12) >= lg.pfn_limit:
        lg_kill(lg, K_BAD_PGD, 0, 0)
    pte_addr = (pgd & 0xFFFFF000U) + ((vaddr >> 12) & 0x3FF) * 4
    pte = lg_read32(lg, pte_addr)
    if not (pte & PAGE_PRESENT) or not (pte & PAGE_RW):
        lg_kill(lg, K_BAD_STACK_PAGE, vaddr, 0)
        return
    if (pte & PAGE_PSE) or (pte >> 12) >= lg.pfn_limit:
        lg_kill(lg, K_BAD_PTE, 0, 0)  # check_gpte; the pin counts as done
        return
    # It marks the pte accessed and dirty, as the MMU would.
    lg_write32(lg, pte_addr, pte | PAGE_ACCESSED | PAGE_DIRTY)
