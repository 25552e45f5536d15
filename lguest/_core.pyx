# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The compiled core: interrupt and trap delivery over raw guest memory.

This is ``lguest.fallback`` again, in C.  Guest memory is a raw pointer into
the GuestMemory mmap, the cpu and guest state are C structs, and the
delivery path (stack pushes, the pending/blocked bitmaps, IDT checks and the
IDT copy) touches no Python object, allocates nothing and raises nothing:
a misbehaving guest is killed by recording a reason code, which Python
formats only when ``guest.dead`` is read.

The ``lg_*`` functions are ``nogil`` so an emulator's native hook can call
them without the interpreter; the classes below are their Python face.
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy, memset
from cpython.buffer cimport PyBUF_FORMAT, PyBUF_WRITABLE

import operator
import threading

import numpy as np

from . import messages as _messages
from . import validate as _validate
from .constants import REG_NAMES
from .validate import check_vector as _check_vector

NAME = "cython"

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #include <time.h>
    /* Single-bit operations on irqs_pending must be atomic: a timer thread
     * (or another thread's send_irq) sets bits while the cpu's loop, maybe
     * without the GIL inside an emulator hook, clears them. */
    static inline void lg_atomic_or(uint32_t *p, uint32_t v) { __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
    static inline void lg_atomic_and(uint32_t *p, uint32_t v) { __atomic_fetch_and(p, v, __ATOMIC_SEQ_CST); }
    static inline uint32_t lg_atomic_load(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
    static inline void lg_atomic_store(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
    /* find_first_bit on one word: 32 when empty. */
    static inline unsigned lg_first_bit(uint32_t w) { return w ? (unsigned)__builtin_ctz(w) : 32u; }
    /* Unaligned little-endian access (x86 host; memcpy keeps it UB-free). */
    static inline uint32_t lg_load32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
    static inline void lg_store32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
    static inline int64_t lg_realtime_ns(void) {
        struct timespec ts; clock_gettime(CLOCK_REALTIME, &ts);
        return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    }
    static inline int64_t lg_monotonic_ns(void) {
        struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    }

    /* ---- waking a sleeping run loop: the Launcher task's wake_up_process ---- */
    #include <errno.h>
    #include <pthread.h>
    #include <sched.h>
    typedef struct { pthread_mutex_t m; pthread_cond_t c; int flag; } lg_waker;
    static void lg_waker_init(lg_waker *w) {
        pthread_condattr_t a;
        pthread_mutex_init(&w->m, NULL);
        pthread_condattr_init(&a);
        pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
        pthread_cond_init(&w->c, &a);
        pthread_condattr_destroy(&a);
        w->flag = 0;
    }
    static void lg_waker_destroy(lg_waker *w) { pthread_cond_destroy(&w->c); pthread_mutex_destroy(&w->m); }
    static void lg_wake(lg_waker *w) {
        pthread_mutex_lock(&w->m); w->flag = 1; pthread_cond_broadcast(&w->c); pthread_mutex_unlock(&w->m);
    }
    /* Sleep until woken (1) or timeout_ns passes (0); timeout_ns < 0: forever. */
    static int lg_wait(lg_waker *w, int64_t timeout_ns) {
        struct timespec ts; int woken;
        pthread_mutex_lock(&w->m);
        if (timeout_ns >= 0) {
            int64_t t = lg_monotonic_ns() + timeout_ns;
            ts.tv_sec = t / 1000000000LL; ts.tv_nsec = t % 1000000000LL;
        }
        while (!w->flag) {
            int rc = timeout_ns < 0 ? pthread_cond_wait(&w->c, &w->m) : pthread_cond_timedwait(&w->c, &w->m, &ts);
            if (rc == ETIMEDOUT) break;
        }
        woken = w->flag; w->flag = 0;
        pthread_mutex_unlock(&w->m);
        return woken;
    }

    /* ---- the native timer wheel: one thread firing every armed cpu clock ---- */
    typedef struct lg_timer {
        struct lg_timer *next;
        struct lg_wheel *wheel;   /* NULL while not linked */
        int64_t expiry;           /* CLOCK_REALTIME ns */
        int64_t period;           /* 0: one-shot, as lguest's; else re-armed (stress tests) */
        int armed;
        uint32_t *pending;        /* the cpu's irqs_pending: bit 0 is the clock */
        int *halted;
        lg_waker *waker;
    } lg_timer;
    typedef struct lg_wheel {
        pthread_mutex_t m;
        pthread_cond_t c;
        pthread_t thread;
        int running, stop;
        uint64_t generation, fired, windows;
        lg_timer *list;
    } lg_wheel;
    /* Waits shorter than this are spun (sched_yield), not slept: a condvar
     * sleep costs ~60 us of timer slack, too coarse for a 100 kHz clock. */
    #define LG_SPIN_NS 200000
    static void *lg_wheel_main(void *arg) {
        lg_wheel *w = (lg_wheel *)arg;
        pthread_mutex_lock(&w->m);
        while (!w->stop) {
            lg_timer *t, *first = NULL;
            int64_t left;
            for (t = w->list; t; t = t->next)
                if (t->armed && (!first || t->expiry < first->expiry)) first = t;
            if (!first) { pthread_cond_wait(&w->c, &w->m); continue; }
            left = first->expiry - lg_realtime_ns();
            if (left <= 0) {
                /* clockdev_fn: irq 0 pending; wake the cpu if it sleeps.
                 * A periodic timer that fell more than a period behind skips
                 * the missed expiries (hrtimer_forward's overrun rule): the
                 * thread must never be left permanently behind, looping with
                 * the mutex held while Python threads wait for it. */
                if (first->period > 0) {
                    first->expiry += first->period;
                    if (first->expiry <= lg_realtime_ns()) first->expiry = lg_realtime_ns() + first->period;
                }
                else first->armed = 0;
                w->fired++;
                /* A fire that found the bit clear opened a new pending window. */
                if (!(__atomic_fetch_or(first->pending, 1u, __ATOMIC_SEQ_CST) & 1u)) w->windows++;
                if (__atomic_load_n(first->halted, __ATOMIC_SEQ_CST)) lg_wake(first->waker);
                continue;
            }
            if (left > LG_SPIN_NS) {
                struct timespec ts; int64_t until = first->expiry - LG_SPIN_NS / 2;
                ts.tv_sec = until / 1000000000LL; ts.tv_nsec = until % 1000000000LL;
                pthread_cond_timedwait(&w->c, &w->m, &ts);   /* CLOCK_REALTIME condvar */
            } else {
                uint64_t gen = w->generation;
                int64_t expiry = first->expiry;   /* 'first' may go once unlocked */
                pthread_mutex_unlock(&w->m);
                while (lg_realtime_ns() < expiry &&
                       __atomic_load_n(&w->generation, __ATOMIC_SEQ_CST) == gen)
                    sched_yield();
                pthread_mutex_lock(&w->m);
            }
        }
        w->running = 0;
        pthread_mutex_unlock(&w->m);
        return NULL;
    }
    static void lg_wheel_init(lg_wheel *w) {
        memset(w, 0, sizeof *w);
        pthread_mutex_init(&w->m, NULL);
        pthread_cond_init(&w->c, NULL);
    }
    static void lg_timer_unlink_locked(lg_timer *t) {
        lg_wheel *w = t->wheel; lg_timer **pp;
        for (pp = &w->list; *pp; pp = &(*pp)->next)
            if (*pp == t) { *pp = t->next; break; }
        t->next = NULL; t->wheel = NULL; t->armed = 0;
    }
    /* Arm (or re-arm, replacing the expiry) t on w; 0, or an errno. */
    static int lg_wheel_arm(lg_wheel *w, lg_timer *t, int64_t expiry, int64_t period) {
        int rc = 0;
        pthread_mutex_lock(&w->m);
        if (t->wheel && t->wheel != w) lg_timer_unlink_locked(t);
        if (!t->wheel) { t->wheel = w; t->next = w->list; w->list = t; }
        t->expiry = expiry; t->period = period; t->armed = 1;
        __atomic_add_fetch(&w->generation, 1, __ATOMIC_SEQ_CST);
        if (!w->running && !w->stop) {
            rc = pthread_create(&w->thread, NULL, lg_wheel_main, w);
            if (rc == 0) w->running = 1;
        }
        pthread_cond_signal(&w->c);
        pthread_mutex_unlock(&w->m);
        return rc;
    }
    static void lg_timer_cancel(lg_timer *t) {
        lg_wheel *w = t->wheel;
        if (!w) { t->armed = 0; return; }
        pthread_mutex_lock(&w->m);
        t->armed = 0;
        __atomic_add_fetch(&w->generation, 1, __ATOMIC_SEQ_CST);
        pthread_cond_signal(&w->c);
        pthread_mutex_unlock(&w->m);
    }
    static void lg_timer_detach(lg_timer *t) {
        lg_wheel *w = t->wheel;
        if (!w) return;
        pthread_mutex_lock(&w->m);
        lg_timer_unlink_locked(t);
        __atomic_add_fetch(&w->generation, 1, __ATOMIC_SEQ_CST);
        pthread_cond_signal(&w->c);
        pthread_mutex_unlock(&w->m);
    }
    static void lg_wheel_shutdown(lg_wheel *w) {
        int was_running;
        pthread_mutex_lock(&w->m);
        w->stop = 1;
        was_running = w->running;
        pthread_cond_signal(&w->c);
        while (w->list) lg_timer_unlink_locked(w->list);
        pthread_mutex_unlock(&w->m);
        if (was_running) pthread_join(w->thread, NULL);
        pthread_cond_destroy(&w->c);
        pthread_mutex_destroy(&w->m);
    }
    """
    void lg_atomic_or(uint32_t *p, uint32_t v) noexcept nogil
    void lg_atomic_and(uint32_t *p, uint32_t v) noexcept nogil
    uint32_t lg_atomic_load(const uint32_t *p) noexcept nogil
    void lg_atomic_store(uint32_t *p, uint32_t v) noexcept nogil
    unsigned lg_first_bit(uint32_t w) noexcept nogil
    uint32_t lg_load32(const uint8_t *p) noexcept nogil
    void lg_store32(uint8_t *p, uint32_t v) noexcept nogil
    int64_t lg_realtime_ns() noexcept nogil
    int64_t lg_monotonic_ns() noexcept nogil
    ctypedef struct lg_waker:
        pass
    void lg_waker_init(lg_waker *w) noexcept nogil
    void lg_waker_destroy(lg_waker *w) noexcept nogil
    void lg_wake(lg_waker *w) noexcept nogil
    int lg_wait(lg_waker *w, int64_t timeout_ns) noexcept nogil
    ctypedef struct lg_wheel:
        uint64_t fired
        uint64_t windows
    ctypedef struct lg_timer:
        lg_wheel *wheel
        int64_t expiry
        int armed
        uint32_t *pending
        int *halted
        lg_waker *waker
    void lg_wheel_init(lg_wheel *w) noexcept nogil
    int lg_wheel_arm(lg_wheel *w, lg_timer *t, int64_t expiry, int64_t period) noexcept nogil
    void lg_timer_cancel(lg_timer *t) noexcept nogil
    void lg_timer_detach(lg_timer *t) noexcept nogil
    void lg_wheel_shutdown(lg_wheel *w) noexcept nogil

# --- constants (the same numbers as lguest.constants) ------------------------
cdef enum:
    GUEST_PL = 1
    GUEST_CS = 0x61
    GUEST_DS = 0x69
    LGUEST_CS = 0x50
    LGUEST_TRAP_ENTRY = 0x1F
    SYSCALL_VECTOR = 0x80
    FIRST_EXTERNAL_VECTOR = 0x20
    IDT_ENTRIES = 256
    LGUEST_IRQS = 32
    X86_EFLAGS_IF = 0x200
    CHANGED_IDT = 1
    PAGE_SIZE = 4096
    PAGE_PRESENT = 0x1
    PAGE_RW = 0x2
    PAGE_ACCESSED = 0x20
    PAGE_DIRTY = 0x40
    PAGE_PSE = 0x80
    PAGE_TABLE = 0x67
    LD_IRQ_ENABLED = 0
    LD_BLOCKED_INTERRUPTS = 4
    LD_TIME = 12
    LD_SYSCALL_VEC = 1132
    # clock kinds
    CLOCK_REALTIME_KIND = 0
    CLOCK_CELL_KIND = 1
    CLOCK_PYTHON_KIND = 2

# kill codes: keep in step with lguest/messages.py
cdef enum:
    K_ALIVE = 0
    K_CUSTOM = 1
    K_DISABLING_INTERRUPTS = 2
    K_REENABLING_INTERRUPTS = 3
    K_BAD_STACK_SEGMENT = 4
    K_BAD_STACK_PAGES = 5
    K_BAD_IDT_TYPE = 6
    K_SETTING_IDT_ENTRY = 7
    K_BAD_READ_ADDRESS = 8
    K_BAD_WRITE_ADDRESS = 9
    K_BAD_ADDRESS = 10
    K_BAD_STACK_PAGE = 11
    K_WRITING_TIMESTAMP = 12
    K_SWITCHER_PAGES = 13
    K_BAD_PGD = 14
    K_BAD_PTE = 15

# --- the C state ----------------------------------------------------------------
ctypedef struct lg_regs:
    uint32_t eax, ebx, ecx, edx, esi, edi, ebp, gs, fs, ds, es
    uint32_t trapnum, errcode, eip, cs, eflags, esp, ss

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


# --- address translation ------------------------------------------------------------
cdef uint32_t lg_guest_pa(lg_guest *lg, uint32_t vaddr) noexcept nogil:
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

cdef void lg_pin_page(lg_guest *lg, uint32_t vaddr) noexcept nogil:
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


# --- the clock ----------------------------------------------------------------------
cdef int64_t lg_now_ns(lg_guest *lg) noexcept nogil:
    if lg.clock_kind == CLOCK_REALTIME_KIND:
        return lg_realtime_ns()
    if lg.clock_kind == CLOCK_CELL_KIND:
        return lg.clock_cell[0]
    with gil:
        return _python_now(<object>lg.clock_obj)

cdef int64_t _python_now(object clock) noexcept:
    try:
        return clock.now_ns()
    except BaseException as exc:  # a broken host clock must not unwind a delivery
        import sys
        sys.unraisablehook(_Unraisable(exc, clock))
        return 0

class _Unraisable:
    def __init__(self, exc, obj):
        self.exc_type = type(exc)
        self.exc_value = exc
        self.exc_traceback = exc.__traceback__
        self.err_msg = "lguest: guest clock now_ns() failed"
        self.object = obj

cdef void lg_write_timestamp(lg_guest *lg) noexcept nogil:
    cdef int64_t now = lg_now_ns(lg)
    cdef int64_t sec, nsec
    if not lg_ld_ok(lg, LD_TIME, 8):
        lg_kill(lg, K_WRITING_TIMESTAMP, 0, 0)
        return
    # struct timespec of i386: two 32-bit longs; tv_sec wraps past 2038.
    sec = now // 1000000000
    nsec = now - sec * 1000000000
    if nsec < 0:
        nsec += 1000000000
        sec -= 1
    lg_store32(lg.mem + lg.lguest_data + LD_TIME, <uint32_t>sec)
    lg_store32(lg.mem + lg.lguest_data + LD_TIME + 4, <uint32_t>nsec)


# --- delivery -------------------------------------------------------------------------
cdef inline void lg_push(lg_guest *lg, uint32_t *gstack, uint32_t val) noexcept nogil:
    # push_guest_stack: the stack grows down, so move first, then write.
    gstack[0] -= 4
    lg_write32(lg, gstack[0], val)

cdef void lg_set_guest_interrupt(lg_cpu *cpu, uint32_t lo, uint32_t hi, bint has_err) noexcept nogil:
    cdef lg_guest *lg = cpu.lg
    cdef lg_regs *r = cpu.regs
    cdef uint32_t gstack, origstack, virtstack, ss, eflags, irq_enable

    if (r.ss & 3) != GUEST_PL:
        # Interrupted guest userspace: change to the kernel stack the guest
        # gave us with SET_STACK, saving ss:esp there for iret.
        virtstack = cpu.esp1
        ss = cpu.ss1
        gstack = origstack = lg_guest_pa(lg, virtstack)
        lg_push(lg, &gstack, r.ss)
        lg_push(lg, &gstack, r.esp)
    else:
        virtstack = r.esp
        ss = r.ss
        gstack = origstack = lg_guest_pa(lg, virtstack)

    # The real IF is never off in a guest; the frame shows the guest's own
    # wish from irq_enabled (read after the pushes above, as the C does).
    eflags = r.eflags
    if lg_ld_read(lg, LD_IRQ_ENABLED, &irq_enable) and not (irq_enable & X86_EFLAGS_IF):
        eflags &= ~(<uint32_t>X86_EFLAGS_IF)

    lg_push(lg, &gstack, eflags)
    lg_push(lg, &gstack, r.cs)
    lg_push(lg, &gstack, r.eip)
    if has_err:
        lg_push(lg, &gstack, r.errcode)

    r.ss = ss
    r.esp = virtstack + (gstack - origstack)
    r.cs = GUEST_CS
    r.eip = (lo & 0x0000FFFF) | (hi & 0xFFFF0000U)

    # Interrupt gates (type 0xE) enter with interrupts disabled.
    if ((hi >> 8) & 0xF) == 0xE:
        if not lg_ld_write(lg, LD_IRQ_ENABLED, 0):
            lg_kill(lg, K_DISABLING_INTERRUPTS, 0, 0)

cdef void lg_maybe_do_interrupt(lg_cpu *cpu) noexcept nogil:
    cdef lg_guest *lg = cpu.lg
    cdef uint32_t blk, irq, irq_enabled, a, b
    if not lg.has_lguest_data:
        return
    if not lg_ld_read(lg, LD_BLOCKED_INTERRUPTS, &blk):
        return
    blk = lg_atomic_load(&cpu.irqs_pending) & ~blk
    irq = lg_first_bit(blk)
    if irq >= LGUEST_IRQS:
        return
    # Inside the guest's iret sequence nothing may be delivered.
    if cpu.regs.eip >= lg.noirq_start and cpu.regs.eip < lg.noirq_end:
        return
    if cpu.halted:
        # An interrupt wakes a halted guest with interrupts back on.
        if not lg_ld_write(lg, LD_IRQ_ENABLED, X86_EFLAGS_IF):
            lg_kill(lg, K_REENABLING_INTERRUPTS, 0, 0)
        cpu.halted = 0
    else:
        if not lg_ld_read(lg, LD_IRQ_ENABLED, &irq_enabled):
            irq_enabled = 0
        if not irq_enabled:
            return
    a = cpu.idt[2 * (FIRST_EXTERNAL_VECTOR + irq)]
    b = cpu.idt[2 * (FIRST_EXTERNAL_VECTOR + irq) + 1]
    if b & 0x8000:
        lg_atomic_and(&cpu.irqs_pending, ~(<uint32_t>1 << irq))
        lg_set_guest_interrupt(cpu, a, b, False)
        cpu.irq_counts[irq] += 1
    # The timestamp is refreshed at every attempt: at least every timer tick.
    lg_write_timestamp(lg)

cdef inline bint lg_has_err(uint32_t trap) noexcept nogil:
    return trap == 8 or (trap >= 10 and trap <= 14) or trap == 17

cdef bint lg_deliver_trap(lg_cpu *cpu, uint32_t num) noexcept nogil:
    cdef uint32_t a, b
    if num >= IDT_ENTRIES:
        return False  # e.g. 256, the Switcher's "impossible" trap number
    a = cpu.idt[2 * num]
    b = cpu.idt[2 * num + 1]
    if not (b & 0x8000):
        return False
    lg_set_guest_interrupt(cpu, a, b, lg_has_err(num))
    return True


# --- stacks -------------------------------------------------------------------------------
cdef void lg_pin_stack_pages(lg_cpu *cpu) noexcept nogil:
    cdef lg_guest *lg = cpu.lg
    cdef uint32_t i
    for i in range(lg.stack_pages):
        if lg.dead_code != K_ALIVE:
            break  # hardening: don't spin 2**32 times for a dead guest
        lg_pin_page(lg, cpu.esp1 - 1 - i * PAGE_SIZE)

cdef void lg_guest_set_stack(lg_cpu *cpu, uint32_t seg, uint32_t esp, uint32_t pages) noexcept nogil:
    cdef lg_guest *lg = cpu.lg
    if (seg & 3) != GUEST_PL:
        lg_kill(lg, K_BAD_STACK_SEGMENT, seg, 0)
    if pages > 2:
        lg_kill(lg, K_BAD_STACK_PAGES, pages, 0)
    cpu.ss1 = <uint8_t>seg
    cpu.esp1 = esp
    lg.stack_pages = pages
    lg_pin_stack_pages(cpu)


# --- the IDT ----------------------------------------------------------------------------------
cdef inline void lg_default_idt_entry(uint32_t *entry, uint32_t trap, uint32_t handler,
                                      const uint32_t *base) noexcept nogil:
    cdef uint32_t flags = 0x8E00
    if trap == LGUEST_TRAP_ENTRY:
        flags |= GUEST_PL << 13
    elif base != NULL:
        flags |= base[1] & 0x6000
    entry[0] = (<uint32_t>LGUEST_CS << 16) | (handler & 0x0000FFFF)
    entry[1] = (handler & 0xFFFF0000U) | flags

cdef void lg_load_guest_idt_entry(lg_cpu *cpu, uint32_t num, uint32_t lo, uint32_t hi) noexcept nogil:
    cdef uint32_t t
    # NMI, double fault, spurious interrupt and the hypercall trap are
    # never the guest's to handle: ignore attempts to set them.
    if num == 2 or num == 8 or num == 15 or num == LGUEST_TRAP_ENTRY:
        return
    cpu.changed |= CHANGED_IDT
    if num >= IDT_ENTRIES:
        lg_kill(cpu.lg, K_SETTING_IDT_ENTRY, num, 0)
        return
    if not (hi & 0x8000):
        cpu.idt[2 * num] = 0
        cpu.idt[2 * num + 1] = 0
        return
    t = (hi >> 8) & 0xF
    if t != 0xE and t != 0xF:
        lg_kill(cpu.lg, K_BAD_IDT_TYPE, t, 0)
    # Keep only the handler, present bit, DPL and type; the selector is
    # always the guest kernel's.
    cpu.idt[2 * num] = (<uint32_t>GUEST_CS << 16) | (lo & 0x0000FFFF)
    cpu.idt[2 * num + 1] = hi & 0xFFFFEF00U

cdef void lg_copy_traps(const lg_cpu *cpu, uint32_t *idt, const uint32_t *defaults) noexcept nogil:
    cdef unsigned i
    cdef const uint32_t *gidt
    for i in range(IDT_ENTRIES):
        if not cpu.lg.direct[i]:
            continue
        gidt = cpu.idt + 2 * i
        if ((gidt[1] >> 8) & 0xF) == 0xF:
            idt[2 * i] = gidt[0]
            idt[2 * i + 1] = gidt[1]
        else:
            lg_default_idt_entry(idt + 2 * i, i, defaults[i], gidt)

cdef void lg_fill_direct(lg_guest *lg) noexcept nogil:
    cdef unsigned i
    for i in range(IDT_ENTRIES):
        if i >= FIRST_EXTERNAL_VECTOR and not (i == SYSCALL_VECTOR or i == lg.syscall_vector):
            lg.direct[i] = 0
        else:
            lg.direct[i] = not (i == 14 or i == 13 or i == 7 or i == 6 or i == LGUEST_TRAP_ENTRY)


# ===================================================================================
# The Python face
# ===================================================================================
cdef object _py_to_u32 = _validate.to_u32
cdef object _py_to_index = _validate.to_index

cdef uint32_t to_u32(object v, str what) except? 0xFFFFFFFF:
    """A guest-visible 32-bit value from Python: outside 0..2**32-1 is host misuse.

    The rule is lguest.validate.to_u32's (no bools, TypeError / ValueError);
    exact ints take this C fast path, everything else goes to that function,
    so both cores agree by construction."""
    if type(v) is int and 0 <= v <= 0xFFFFFFFF:
        return <uint32_t>(<unsigned long long>v)
    return <uint32_t>(<unsigned long long>_py_to_u32(v, what))


cdef inline int _not_ready(object obj) except -1:
    raise _validate.not_initialised(obj)


cdef class BufferExporter:
    """Lends GuestMemory the buffer protocol on Pythons without __buffer__.

    The exported buffer is the mapping itself; ``_exports`` counts live views
    so GuestMemory.close() can refuse to unmap memory that is still seen.
    """
    cdef char *_buf
    cdef Py_ssize_t _len
    cdef Py_ssize_t _shape[1]
    cdef Py_ssize_t _strides[1]
    cdef public int _exports

    def _set_buffer(self, object address, Py_ssize_t length):
        if address is None:
            self._buf = NULL
            self._len = 0
        else:
            self._buf = <char *><size_t>address
            self._len = length

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        if self._buf == NULL:
            raise ValueError("guest memory is closed")
        self._shape[0] = self._len
        self._strides[0] = 1
        buffer.buf = self._buf
        buffer.obj = self
        buffer.len = self._len
        buffer.readonly = 0
        buffer.itemsize = 1
        if flags & PyBUF_FORMAT:
            buffer.format = b"B"
        else:
            buffer.format = NULL
        buffer.ndim = 1
        buffer.shape = self._shape
        buffer.strides = self._strides
        buffer.suboffsets = NULL
        buffer.internal = NULL
        self._exports += 1

    def __releasebuffer__(self, Py_buffer *buffer):
        self._exports -= 1


# --- IDT helpers ------------------------------------------------------------------------
def idt_address(lo, hi) -> int:
    """The handler address, split across the two words of a gate."""
    return (to_u32(lo, "lo") & 0x0000FFFF) | (to_u32(hi, "hi") & 0xFFFF0000U)


def idt_type(lo, hi) -> int:
    """Gate type, bits 8-11 of the high word (0xE interrupt, 0xF trap)."""
    to_u32(lo, "lo")
    return (to_u32(hi, "hi") >> 8) & 0xF


def idt_present(lo, hi) -> bool:
    to_u32(lo, "lo")
    return bool(to_u32(hi, "hi") & 0x8000)


def has_err(trap) -> bool:
    """The traps for which the CPU pushes an error code."""
    return lg_has_err(to_u32(trap, "trap"))


def default_idt_entry(trap, handler, base=None):
    """A present interrupt gate into the Switcher, which returns to the host."""
    cdef uint32_t entry[2]
    cdef uint32_t b[2]
    cdef uint32_t t = to_u32(trap, "trap")
    cdef uint32_t h = to_u32(handler, "handler")
    if base is None:
        lg_default_idt_entry(entry, t, h, NULL)
    else:
        b[0], b[1] = _validate.to_idt_pair(base)
        lg_default_idt_entry(entry, t, h, b)
    return (entry[0], entry[1])


cdef uint32_t[:, ::1] _as_idt(object idt) except *:
    # lguest.validate.as_idt: the one rule for both cores.
    return _validate.as_idt(idt)


cdef object _as_defaults(object defaults):
    return _validate.as_defaults(defaults)


def setup_default_idt_entries(idt, defaults):
    """Fill a host IDT with the default Switcher entries."""
    cdef uint32_t[:, ::1] t = _as_idt(idt)
    cdef const uint32_t[::1] d = _as_defaults(defaults)
    cdef unsigned i
    for i in range(IDT_ENTRIES):
        lg_default_idt_entry(&t[i, 0], i, d[i], NULL)


# --- registers ---------------------------------------------------------------------------
cdef class Regs:
    """``struct lguest_regs``: 18 u32 words, attribute access and a numpy view."""
    cdef lg_regs *r
    cdef readonly object array
    cdef uint32_t[::1] _view   # held for life: numpy then refuses to resize the array under us

    def __cinit__(self, array=None):
        cdef uint32_t[::1] view
        if array is None:
            array = np.zeros(18, dtype=np.uint32)
        _validate.check_regs_array(array)
        view = array
        self._view = view
        self.array = array
        self.r = <lg_regs *>&view[0]

    @property
    def eax(self):
        return self.r.eax

    @eax.setter
    def eax(self, value):
        self.r.eax = to_u32(value, "eax")

    @property
    def ebx(self):
        return self.r.ebx

    @ebx.setter
    def ebx(self, value):
        self.r.ebx = to_u32(value, "ebx")

    @property
    def ecx(self):
        return self.r.ecx

    @ecx.setter
    def ecx(self, value):
        self.r.ecx = to_u32(value, "ecx")

    @property
    def edx(self):
        return self.r.edx

    @edx.setter
    def edx(self, value):
        self.r.edx = to_u32(value, "edx")

    @property
    def esi(self):
        return self.r.esi

    @esi.setter
    def esi(self, value):
        self.r.esi = to_u32(value, "esi")

    @property
    def edi(self):
        return self.r.edi

    @edi.setter
    def edi(self, value):
        self.r.edi = to_u32(value, "edi")

    @property
    def ebp(self):
        return self.r.ebp

    @ebp.setter
    def ebp(self, value):
        self.r.ebp = to_u32(value, "ebp")

    @property
    def gs(self):
        return self.r.gs

    @gs.setter
    def gs(self, value):
        self.r.gs = to_u32(value, "gs")

    @property
    def fs(self):
        return self.r.fs

    @fs.setter
    def fs(self, value):
        self.r.fs = to_u32(value, "fs")

    @property
    def ds(self):
        return self.r.ds

    @ds.setter
    def ds(self, value):
        self.r.ds = to_u32(value, "ds")

    @property
    def es(self):
        return self.r.es

    @es.setter
    def es(self, value):
        self.r.es = to_u32(value, "es")

    @property
    def trapnum(self):
        return self.r.trapnum

    @trapnum.setter
    def trapnum(self, value):
        self.r.trapnum = to_u32(value, "trapnum")

    @property
    def errcode(self):
        return self.r.errcode

    @errcode.setter
    def errcode(self, value):
        self.r.errcode = to_u32(value, "errcode")

    @property
    def eip(self):
        return self.r.eip

    @eip.setter
    def eip(self, value):
        self.r.eip = to_u32(value, "eip")

    @property
    def cs(self):
        return self.r.cs

    @cs.setter
    def cs(self, value):
        self.r.cs = to_u32(value, "cs")

    @property
    def eflags(self):
        return self.r.eflags

    @eflags.setter
    def eflags(self, value):
        self.r.eflags = to_u32(value, "eflags")

    @property
    def esp(self):
        return self.r.esp

    @esp.setter
    def esp(self, value):
        self.r.esp = to_u32(value, "esp")

    @property
    def ss(self):
        return self.r.ss

    @ss.setter
    def ss(self, value):
        self.r.ss = to_u32(value, "ss")

    def __reduce_ex__(self, protocol):
        raise _validate.no_pickle(self)

    def __repr__(self):
        return "Regs(" + ", ".join(f"{n}={int(v):#x}" for n, v in zip(REG_NAMES, self.array)) + ")"


# --- the guest ------------------------------------------------------------------------------
cdef class Guest:
    """``struct lguest``: one guest, its memory and its kill state.

    A Guest whose ``__init__`` never ran (``Guest.__new__(Guest)``, a
    subclass skipping ``super().__init__``) raises ``RuntimeError`` on every
    use instead of touching its zeroed C state -- as the Python core does.
    """
    cdef lg_guest g
    cdef bint _ready
    cdef bint _init_started
    cdef object _host
    cdef object _memory
    cdef object _clock
    cdef list _cpus
    cdef bint _restart
    cdef uint32_t _kernel_address
    cdef uint32_t _tsc_khz
    cdef object _custom_dead
    cdef object _dead_cache
    cdef int64_t[::1] _clock_cell   # held for life: the cell cannot be resized under the raw pointer
    cdef object __weakref__

    def __init__(self, host, memory, *, page_offset=0xC0000000, clock=None):
        from .memory import GuestMemory
        cdef int64_t[::1] cell_view
        if self._init_started:
            raise RuntimeError("Guest.__init__ called twice")
        if not isinstance(memory, GuestMemory):
            raise TypeError("memory must be a GuestMemory")
        cdef uint32_t po = to_u32(page_offset, "page_offset")
        cdef uint32_t vector = _check_vector(host.syscall_vector)
        clock = clock if clock is not None else native_clock()
        # The cell is read through a raw pointer on every timestamp: check
        # it now (lguest.validate.clock_cell, the Python core's check too).
        cell = _validate.clock_cell(clock)
        address = memory.address  # ValueError if closed
        self._init_started = True
        memset(&self.g, 0, sizeof(lg_guest))
        self._host = host
        self._memory = memory
        self._cpus = []
        self.g.page_offset = po
        self.g.syscall_vector = vector
        lg_fill_direct(&self.g)
        self._clock = clock
        if getattr(clock, "realtime", False) is True:
            self.g.clock_kind = CLOCK_REALTIME_KIND
        elif cell is not None:
            cell_view = cell
            self._clock_cell = cell_view
            self.g.clock_kind = CLOCK_CELL_KIND
            self.g.clock_cell = &cell_view[0]
        else:
            self.g.clock_kind = CLOCK_PYTHON_KIND
        self.g.clock_obj = <void *>clock
        self.g.mem = <uint8_t *><size_t>address
        self.g.mem_size = memory.size
        self.g.pfn_limit = memory.size // PAGE_SIZE
        self.g.limit = <uint64_t>self.g.pfn_limit * PAGE_SIZE
        memory._register(self)
        self._ready = True

    cdef inline int _check_ready(self) except -1:
        if not self._ready:
            _not_ready(self)
        return 0

    def __reduce_ex__(self, protocol):
        raise _validate.no_pickle(self)

    @property
    def host(self):
        self._check_ready()
        return self._host

    @property
    def memory(self):
        self._check_ready()
        return self._memory

    @property
    def clock(self):
        self._check_ready()
        return self._clock

    @property
    def cpus(self):
        self._check_ready()
        return self._cpus

    @property
    def restart(self):
        self._check_ready()
        return self._restart

    @restart.setter
    def restart(self, value):
        self._check_ready()
        self._restart = bool(value)

    @property
    def kernel_address(self):
        self._check_ready()
        return self._kernel_address

    @kernel_address.setter
    def kernel_address(self, value):
        self._check_ready()
        self._kernel_address = to_u32(value, "kernel_address")

    @property
    def tsc_khz(self):
        self._check_ready()
        return self._tsc_khz

    @tsc_khz.setter
    def tsc_khz(self, value):
        self._check_ready()
        self._tsc_khz = to_u32(value, "tsc_khz")

    def _detach_memory(self):
        """Called by GuestMemory.close() before it unmaps: no more raw access."""
        self.g.mem = NULL
        self.g.mem_size = 0
        self.g.limit = 0

    def _attach_memory(self):
        """Undo _detach_memory when GuestMemory.close() was refused."""
        memory = self._memory
        self.g.mem = <uint8_t *><size_t>memory.address
        self.g.mem_size = memory.size
        self.g.limit = <uint64_t>self.g.pfn_limit * PAGE_SIZE

    cdef inline int _check_mem(self) except -1:
        if self.g.mem == NULL:
            raise ValueError("guest memory is closed")
        return 0

    # --- fields --------------------------------------------------------------------
    @property
    def page_offset(self):
        self._check_ready()
        return self.g.page_offset

    @property
    def pfn_limit(self):
        self._check_ready()
        return self.g.pfn_limit

    @property
    def syscall_vector(self):
        self._check_ready()
        return self.g.syscall_vector

    @property
    def lguest_data(self):
        self._check_ready()
        return self.g.lguest_data if self.g.has_lguest_data else None

    @lguest_data.setter
    def lguest_data(self, value):
        self._check_ready()
        if value is None:
            self.g.has_lguest_data = 0
            self.g.lguest_data = 0
        else:
            self.g.lguest_data = to_u32(value, "lguest_data")
            self.g.has_lguest_data = 1

    @property
    def pgdir(self):
        self._check_ready()
        return self.g.pgdir if self.g.has_pgdir else None

    @pgdir.setter
    def pgdir(self, value):
        self._check_ready()
        if value is None:
            self.g.has_pgdir = 0
            self.g.pgdir = 0
        else:
            self.g.pgdir = to_u32(value, "pgdir")
            self.g.has_pgdir = 1

    @property
    def noirq_start(self):
        self._check_ready()
        return self.g.noirq_start

    @noirq_start.setter
    def noirq_start(self, value):
        self._check_ready()
        self.g.noirq_start = to_u32(value, "noirq_start")

    @property
    def noirq_end(self):
        self._check_ready()
        return self.g.noirq_end

    @noirq_end.setter
    def noirq_end(self, value):
        self._check_ready()
        self.g.noirq_end = to_u32(value, "noirq_end")

    @property
    def stack_pages(self):
        self._check_ready()
        return self.g.stack_pages

    @stack_pages.setter
    def stack_pages(self, value):
        self._check_ready()
        self.g.stack_pages = to_u32(value, "stack_pages")

    # --- death --------------------------------------------------------------------------
    @property
    def dead(self):
        self._check_ready()
        cdef int code = self.g.dead_code
        if code == K_ALIVE:
            return None
        if code == K_CUSTOM:
            return self._custom_dead
        if self._dead_cache is None:
            self._dead_cache = _messages.format_reason(code, self.g.dead_a, self.g.dead_b)
        return self._dead_cache

    def kill(self, reason):
        """``kill_guest``: only the first reason sticks; the caller carries on."""
        self._check_ready()
        if self.g.dead_code == K_ALIVE:
            self._custom_dead = str(reason)
            self.g.dead_code = K_CUSTOM

    # --- guest memory through lguest's checks ------------------------------------------
    def address_ok(self, addr, length) -> bool:
        """``lguest_address_ok``: the end's page must be below pfn_limit, no wrap."""
        self._check_ready()
        cdef uint32_t a = to_u32(addr, "addr")
        cdef uint32_t n = to_u32(length, "length")
        self._check_mem()  # closed memory has no addresses, in both cores
        return lg_range_ok(&self.g, a, n)

    def ld_read_u32(self, off):
        """get_user on a lguest_data field: None if it would fault."""
        self._check_ready()
        cdef uint32_t v
        cdef uint32_t o = to_u32(off, "off")
        self._check_mem()
        if not lg_ld_read(&self.g, o, &v):
            return None
        return v

    def ld_write_u32(self, off, value) -> bool:
        """put_user on a lguest_data field: False (nothing written) if it would fault."""
        self._check_ready()
        cdef uint32_t o = to_u32(off, "off")
        cdef uint32_t v = to_u32(value, "value")
        self._check_mem()
        return lg_ld_write(&self.g, o, v)

    def guest_pa(self, vaddr) -> int:
        """Guest-virtual to guest-physical, as the core sees it."""
        self._check_ready()
        cdef uint32_t v = to_u32(vaddr, "vaddr")
        self._check_mem()
        return lg_guest_pa(&self.g, v)

    def pin_page(self, vaddr):
        """Make sure a kernel stack page is mapped, else kill the guest."""
        self._check_ready()
        cdef uint32_t v = to_u32(vaddr, "vaddr")
        self._check_mem()
        lg_pin_page(&self.g, v)

    def check_syscall_vector(self) -> bool:
        """The guest's wanted syscall vector must be one this host allows."""
        self._check_ready()
        cdef uint32_t vector
        self._check_mem()
        if not lg_ld_read(&self.g, LD_SYSCALL_VEC, &vector):
            return False
        return vector == SYSCALL_VECTOR or vector == self.g.syscall_vector

    def could_be_syscall(self, num) -> bool:
        self._check_ready()
        cdef uint32_t n = to_u32(num, "num")
        return n == SYSCALL_VECTOR or n == self.g.syscall_vector

    def direct_trap(self, num) -> bool:
        self._check_ready()
        cdef uint32_t n = to_u32(num, "num")
        return n < IDT_ENTRIES and self.g.direct[n] != 0

    def new_cpu(self):
        self._check_ready()
        cpu = Cpu(self, len(self.cpus))
        self.cpus.append(cpu)
        return cpu

    def __repr__(self):
        if not self._ready:
            return "<Guest (cython core) uninitialised>"
        dead = self.dead
        return f"<Guest (cython core) {self.g.mem_size:#x} bytes{' dead: ' + repr(dead) if dead else ''}>"


# --- the virtual CPU ----------------------------------------------------------------------------
cdef class Cpu:
    """``struct lg_cpu``: registers, IDT, pending irqs and the guest's kernel stack.

    Like :class:`Guest`, a Cpu whose ``__init__`` never ran raises
    ``RuntimeError`` on use: its ``c.lg`` / ``c.regs`` are NULL.
    """
    cdef lg_cpu c
    cdef bint _ready
    cdef Guest _guest
    cdef Regs _regs
    cdef object _idt
    cdef object _gdt
    cdef int _id
    cdef uint32_t[:, ::1] _idt_view   # held for life: the IDT cannot be resized under us
    cdef lg_waker waker
    cdef lg_timer timer
    cdef object _native_clock   # keeps the wheel alive while our timer may be on it
    cdef int _ts
    cdef uint32_t _pending_notify
    cdef uint32_t _last_pagefault
    cdef bint _hcall_pending
    cdef int _next_hcall
    cdef bint _break_out
    cdef object __weakref__

    def __init__(self, guest, id=0):
        cdef uint32_t[:, ::1] idt_view
        if self._guest is not None:
            # memset below would unlink nothing and corrupt an armed timer.
            raise RuntimeError("Cpu.__init__ called twice")
        if not isinstance(guest, Guest):
            raise TypeError(f"guest must be a {__name__}.Guest, not {type(guest).__name__}")
        (<Guest>guest)._check_ready()
        cdef int ident = _validate.to_range(id, 0, 0x7FFFFFFF, "id")
        memset(&self.c, 0, sizeof(lg_cpu))
        self._guest = guest
        self._id = ident
        self._regs = Regs()
        self._idt = np.zeros((IDT_ENTRIES, 2), dtype=np.uint32)
        self._gdt = np.zeros((32, 2), dtype=np.uint32)
        idt_view = self._idt
        self._idt_view = idt_view
        self.c.lg = &(<Guest>guest).g
        self.c.regs = self._regs.r
        self.c.idt = &idt_view[0, 0]
        self.timer.pending = &self.c.irqs_pending
        self.timer.halted = &self.c.halted
        self.timer.waker = &self.waker
        self._ready = True

    cdef inline int _check_ready(self) except -1:
        if not self._ready:
            _not_ready(self)
        return 0

    def __reduce_ex__(self, protocol):
        raise _validate.no_pickle(self)

    # --- read-only parts ------------------------------------------------------------------
    @property
    def guest(self):
        self._check_ready()
        return self._guest

    @property
    def regs(self):
        self._check_ready()
        return self._regs

    @property
    def idt(self):
        self._check_ready()
        return self._idt

    @property
    def gdt(self):
        self._check_ready()
        return self._gdt

    @property
    def id(self):
        self._check_ready()
        return self._id

    # --- control-plane state (same C types, and rules, as lg_cpu's) ---------------------------
    @property
    def ts(self):
        self._check_ready()
        return self._ts

    @ts.setter
    def ts(self, value):
        self._check_ready()
        self._ts = _validate.to_range(value, -0x80000000, 0x7FFFFFFF, "ts")

    @property
    def pending_notify(self):
        self._check_ready()
        return self._pending_notify

    @pending_notify.setter
    def pending_notify(self, value):
        self._check_ready()
        self._pending_notify = to_u32(value, "pending_notify")

    @property
    def last_pagefault(self):
        self._check_ready()
        return self._last_pagefault

    @last_pagefault.setter
    def last_pagefault(self, value):
        self._check_ready()
        self._last_pagefault = to_u32(value, "last_pagefault")

    @property
    def hcall_pending(self):
        self._check_ready()
        return self._hcall_pending

    @hcall_pending.setter
    def hcall_pending(self, value):
        self._check_ready()
        self._hcall_pending = bool(value)

    @property
    def next_hcall(self):
        self._check_ready()
        return self._next_hcall

    @next_hcall.setter
    def next_hcall(self, value):
        self._check_ready()
        self._next_hcall = _validate.to_range(value, 0, 63, "next_hcall")

    @property
    def break_out(self):
        self._check_ready()
        return self._break_out

    @break_out.setter
    def break_out(self, value):
        self._check_ready()
        self._break_out = bool(value)

    def __cinit__(self, *args, **kwargs):
        lg_waker_init(&self.waker)

    def __dealloc__(self):
        lg_timer_detach(&self.timer)
        lg_waker_destroy(&self.waker)

    cdef inline int _check_mem(self) except -1:
        if self.c.lg.mem == NULL:
            raise ValueError("guest memory is closed")
        return 0

    # --- fields ---------------------------------------------------------------------------
    @property
    def esp1(self):
        self._check_ready()
        return self.c.esp1

    @esp1.setter
    def esp1(self, value):
        self._check_ready()
        self.c.esp1 = to_u32(value, "esp1")

    @property
    def ss1(self):
        self._check_ready()
        return self.c.ss1

    @ss1.setter
    def ss1(self, value):
        self._check_ready()
        self.c.ss1 = <uint8_t>to_u32(value, "ss1")  # a u8 in this era's lg_cpu

    @property
    def halted(self):
        self._check_ready()
        return bool(self.c.halted)

    @halted.setter
    def halted(self, value):
        self._check_ready()
        self.c.halted = 1 if value else 0

    @property
    def changed(self):
        self._check_ready()
        return self.c.changed

    @changed.setter
    def changed(self, value):
        self._check_ready()
        self.c.changed = to_u32(value, "changed")

    @property
    def irqs_pending(self):
        self._check_ready()
        return lg_atomic_load(&self.c.irqs_pending)

    @irqs_pending.setter
    def irqs_pending(self, value):
        self._check_ready()
        lg_atomic_store(&self.c.irqs_pending, to_u32(value, "irqs_pending"))

    @property
    def irq_counts(self):
        """How many times each virtual irq was delivered (a 32-tuple)."""
        self._check_ready()
        return tuple(self.c.irq_counts[i] for i in range(LGUEST_IRQS))

    # --- wake-ups -----------------------------------------------------------------------------
    def wake(self):
        """Wake the run loop if it sleeps (the kernel's wake_up_process)."""
        self._check_ready()
        with nogil:
            lg_wake(&self.waker)

    def wait_for_wakeup(self, timeout=None) -> bool:
        """Sleep (without the GIL) until wake(), the clock or ``timeout`` seconds."""
        self._check_ready()
        # lguest.validate.to_timeout: None / inf mean "until woken", NaN and
        # non-numbers raise (the float cast below is then always defined).
        t_obj = _validate.to_timeout(timeout)
        cdef int64_t ns = -1 if t_obj is None else <int64_t>(<double>t_obj * 1e9)
        cdef int woken
        with nogil:
            woken = lg_wait(&self.waker, ns)
        return bool(woken)

    # --- checked guest memory ------------------------------------------------------------------
    def lgread(self, addr, n) -> bytes:
        """__lgread: zeros and a kill if the range is not the guest's."""
        self._check_ready()
        cdef uint32_t a = to_u32(addr, "addr")
        cdef uint32_t length = to_u32(n, "n")
        self._check_mem()
        if not lg_range_ok(&self._guest.g, a, length):
            lg_kill(&self._guest.g, K_BAD_READ_ADDRESS, a, length)
            return bytes(length)
        return (<char *>self.c.lg.mem)[a:a + length]

    def lgwrite(self, addr, data) -> bool:
        """__lgwrite: nothing written and a kill if the range is not the guest's."""
        self._check_ready()
        cdef uint32_t a = to_u32(addr, "addr")
        # bytes-like only: bytes(8) would be eight zero bytes, not an error.
        cdef const uint8_t[::1] src = _validate.to_bytes(data)
        cdef uint32_t length = to_u32(src.shape[0], "length")  # > 4 GiB must not wrap
        self._check_mem()
        if not lg_range_ok(&self._guest.g, a, length):
            lg_kill(&self._guest.g, K_BAD_WRITE_ADDRESS, a, length)
            return False
        if length:
            memcpy(self.c.lg.mem + a, &src[0], length)
        return True

    # --- the seed functions -----------------------------------------------------------------------
    def set_guest_interrupt(self, lo, hi, has_err):
        """Push an interrupt frame on the guest's stack and jump to its handler."""
        self._check_ready()
        cdef uint32_t l = to_u32(lo, "lo")
        cdef uint32_t h = to_u32(hi, "hi")
        cdef bint e = bool(has_err)  # before the check: __bool__ may run Python
        self._check_mem()
        lg_set_guest_interrupt(&self.c, l, h, e)

    def maybe_do_interrupt(self):
        """Before entering the guest: divert it into a pending, unblocked irq."""
        self._check_ready()
        if self.c.lg.mem == NULL:
            raise ValueError("guest memory is closed")
        lg_maybe_do_interrupt(&self.c)

    def deliver_trap(self, num) -> bool:
        """Reflect trap ``num`` into the guest; False if it has no handler."""
        self._check_ready()
        cdef uint32_t n = to_u32(num, "num")
        self._check_mem()
        return lg_deliver_trap(&self.c, n)

    def setup_regs(self, start):
        """lguest_arch_setup_regs: the registers a new guest starts with.

        Kernel segments at the guest's privilege level (cs 0x61, ds = es =
        ss 0x69), interrupts on (eflags 0x202: IF and the always-one bit),
        eip = ``start``; every other word, the trap number included, zero.
        The cs RPL of 1 is what marks the guest kernel: the first vmcall is
        patched only from there."""
        self._check_ready()
        cdef uint32_t eip = to_u32(start, "start")
        memset(self.c.regs, 0, sizeof(lg_regs))
        self.c.regs.ds = GUEST_DS
        self.c.regs.es = GUEST_DS
        self.c.regs.ss = GUEST_DS
        self.c.regs.cs = GUEST_CS
        self.c.regs.eflags = X86_EFLAGS_IF | 2
        self.c.regs.eip = eip

    def pin_stack_pages(self):
        self._check_ready()
        self._check_mem()
        lg_pin_stack_pages(&self.c)

    def guest_set_stack(self, seg, esp, pages):
        """SET_STACK: where the guest kernel stack is, for user-to-kernel traps."""
        self._check_ready()
        cdef uint32_t s = to_u32(seg, "seg")
        cdef uint32_t e = to_u32(esp, "esp")
        cdef uint32_t p = to_u32(pages, "pages")
        self._check_mem()
        lg_guest_set_stack(&self.c, s, e, p)

    def load_guest_idt_entry(self, num, lo, hi):
        """LOAD_IDT_ENTRY: check and store one of the guest's gates."""
        self._check_ready()
        cdef uint32_t n = to_u32(num, "num")
        cdef uint32_t l = to_u32(lo, "lo")
        cdef uint32_t h = to_u32(hi, "hi")
        self._check_mem()
        lg_load_guest_idt_entry(&self.c, n, l, h)

    def copy_traps(self, idt, defaults):
        """Build the host IDT used while this guest runs."""
        self._check_ready()
        cdef uint32_t[:, ::1] t = _as_idt(idt)
        cdef const uint32_t[::1] d = _as_defaults(defaults)
        lg_copy_traps(&self.c, &t[0, 0], &d[0])

    def set_clockevent(self, delta_ns):
        """Arm the guest's one-shot timer ``delta_ns`` from now; 0 cancels."""
        self._check_ready()
        cdef uint32_t delta = to_u32(delta_ns, "delta_ns")
        cdef NativeClock native
        clock = self._guest.clock
        if isinstance(clock, NativeClock):
            # The compiled clock fires in C, without the GIL.
            native = <NativeClock>clock
            if delta == 0:
                lg_timer_cancel(&self.timer)
            else:
                self._native_clock = native
                if lg_wheel_arm(&native.wheel, &self.timer, lg_realtime_ns() + delta, 0) != 0:
                    raise OSError("could not start the clock thread")
            return
        if delta == 0:
            clock.cancel(self)
            return
        clock.arm(self, clock.now_ns() + delta, self._clock_fired)

    def _clock_fired(self):
        """clockdev_fn: irq 0 is the timer; wake the cpu if it sleeps."""
        lg_atomic_or(&self.c.irqs_pending, 1)
        if self.c.halted:
            lg_wake(&self.waker)

    def write_timestamp(self):
        self._check_ready()
        self._check_mem()
        lg_write_timestamp(self.c.lg)

    def send_irq(self, irq):
        """The Launcher's LHREQ_IRQ: mark ``irq`` pending and wake the cpu."""
        self._check_ready()
        cdef object i = _py_to_index(irq, "irq")
        if i < 0 or i >= LGUEST_IRQS:
            raise ValueError(f"irq {i} out of range 0..{LGUEST_IRQS - 1}")
        lg_atomic_or(&self.c.irqs_pending, <uint32_t>1 << <unsigned>i)
        lg_wake(&self.waker)

    def __repr__(self):
        if not self._ready:
            return "<Cpu (cython core) uninitialised>"
        return f"<Cpu {self._id} (cython core) eip={self.c.regs.eip:#x}>"


# --- the compiled wall clock ------------------------------------------------------------------
cdef class NativeClock:
    """CLOCK_REALTIME with a native timer wheel: one C thread fires the clock
    event of every compiled Cpu armed on it, without taking the GIL (so a
    busy Python thread cannot delay it, and 100 kHz clocks are possible).

    Timers of other owners (``arm(key, expiry, callback)`` with a Python
    callback) are passed to a Python :class:`lguest.clock.SystemClock`.
    """
    cdef lg_wheel wheel
    cdef object _py
    realtime = True

    def __cinit__(self):
        lg_wheel_init(&self.wheel)

    def __dealloc__(self):
        with nogil:
            lg_wheel_shutdown(&self.wheel)

    @staticmethod
    def now_ns():
        return lg_realtime_ns()

    @property
    def fired(self):
        """How many compiled-cpu clock events have fired."""
        return self.wheel.fired

    @property
    def windows(self):
        """How many fires found irq 0 not yet pending (each must be delivered once)."""
        return self.wheel.windows

    def arm_periodic(self, Cpu cpu not None, period_ns):
        """Fire ``cpu``'s clock every ``period_ns`` until cancelled (not in
        lguest, whose clock is one-shot: a load generator for stress tests).

        ``period_ns`` must be at least ``lguest.validate.MIN_TIMER_PERIOD_NS``
        (10 us): a shorter period keeps the timer thread permanently behind
        (``ValueError``).  Missed periods are skipped, not replayed."""
        cdef int64_t period = _validate.check_timer_period(period_ns)
        cpu._check_ready()
        if cpu._guest._clock is not self:
            raise ValueError("the cpu's guest does not use this clock")
        cpu._native_clock = self
        if lg_wheel_arm(&self.wheel, &cpu.timer, lg_realtime_ns() + period, period) != 0:
            raise OSError("could not start the clock thread")

    cdef object _python(self):
        if self._py is None:
            from .clock import SystemClock
            self._py = SystemClock()
        return self._py

    def __reduce_ex__(self, protocol):
        raise _validate.no_pickle(self)

    def arm(self, key, expiry_ns, callback):
        cdef Cpu cpu
        expiry_ns = _validate.check_expiry(expiry_ns)
        _validate.check_callback(callback)
        if isinstance(key, Cpu) and (<Cpu>key)._guest is not None and (<Cpu>key)._guest._clock is self and callback == key._clock_fired:
            cpu = <Cpu>key
            cpu._native_clock = self
            if lg_wheel_arm(&self.wheel, &cpu.timer, <int64_t>expiry_ns, 0) != 0:
                raise OSError("could not start the clock thread")
        else:
            self._python().arm(key, expiry_ns, callback)

    def cancel(self, key):
        if isinstance(key, Cpu) and (<Cpu>key).timer.wheel == &self.wheel:
            lg_timer_cancel(&(<Cpu>key).timer)
        elif self._py is not None:
            self._py.cancel(key)

    def armed(self, key):
        """The expiry armed for ``key`` (ns), or None."""
        if isinstance(key, Cpu) and (<Cpu>key).timer.wheel == &self.wheel:
            return (<Cpu>key).timer.expiry if (<Cpu>key).timer.armed else None
        return None if self._py is None else self._py.armed(key)


_native_clock = None


def native_clock():
    """The process-wide compiled wall clock that compiled guests use by default."""
    global _native_clock
    if _native_clock is None:
        _native_clock = NativeClock()
    return _native_clock


# --- benchmark entry points: loops in C over the real delivery code ---------------------------------
def bench_deliver(Cpu cpu not None, irq, long long n) -> int:
    """``n`` rounds of: set ``irq`` pending, maybe_do_interrupt, then put back
    the registers a delivery changes (ss, esp, cs, eip).  Returns elapsed ns."""
    cdef long long irqn = operator.index(irq)
    cdef uint32_t bit
    cdef lg_cpu *c = &cpu.c
    if not 0 <= irqn < LGUEST_IRQS:
        raise ValueError("irq out of range")
    bit = <uint32_t>1 << <unsigned>irqn
    cpu._check_ready()
    cpu._check_mem()
    with cpu._guest._memory.hold():   # the loop runs without the GIL: no close() under it
        return _bench_deliver_loop(c, bit, n)


cdef int64_t _bench_deliver_loop(lg_cpu *c, uint32_t bit, long long n) except? -1:
    cdef uint32_t ss, esp, cs, eip
    cdef int64_t t0, t1
    cdef long long i
    ss = c.regs.ss
    esp = c.regs.esp
    cs = c.regs.cs
    eip = c.regs.eip
    with nogil:
        t0 = lg_monotonic_ns()
        for i in range(n):
            lg_atomic_or(&c.irqs_pending, bit)
            lg_maybe_do_interrupt(c)
            c.regs.ss = ss
            c.regs.esp = esp
            c.regs.cs = cs
            c.regs.eip = eip
        t1 = lg_monotonic_ns()
    return t1 - t0


def bench_copy_traps(Cpu cpu not None, idt, defaults, long long n) -> int:
    """``n`` calls of copy_traps in a C loop; returns elapsed ns."""
    cdef uint32_t[:, ::1] t = _as_idt(idt)
    cdef const uint32_t[::1] d = _as_defaults(defaults)
    cdef uint32_t *tp = &t[0, 0]
    cdef const uint32_t *dp = &d[0]
    cpu._check_ready()
    cdef lg_cpu *c = &cpu.c
    cdef int64_t t0, t1
    cdef long long i
    with nogil:
        t0 = lg_monotonic_ns()
        for i in range(n):
            lg_copy_traps(c, tp, dp)
        t1 = lg_monotonic_ns()
    return t1 - t0


# --- the native API for an emulator's compiled hook (lguest._uchook) ------------------------
# A native hook (e.g. a Unicorn UC_HOOK_INTR callback) delivers a direct trap
# without entering Python: it fills cpu.regs from the emulator, calls
# set_guest_interrupt through this table and loads the result back.  The
# layout is versioned; the struct lguest_regs it points at is the ABI's.
from cpython.pycapsule cimport PyCapsule_New, PyCapsule_GetPointer, PyCapsule_GetContext, PyCapsule_SetContext
from cpython.ref cimport Py_INCREF, Py_XDECREF, PyObject
from libc.stdlib cimport malloc, free

ctypedef struct lg_native_api:
    uint32_t version            # LG_NATIVE_API_VERSION
    uint32_t size               # sizeof(lg_native_api)
    void *cpu                   # the lg_cpu, opaque to the caller
    uint32_t *regs              # struct lguest_regs: 18 u32 (R_* order)
    uint32_t *irqs_pending      # atomic access only
    int *dead_code              # non-zero once the guest is killed
    void (*set_guest_interrupt)(void *cpu, uint32_t lo, uint32_t hi, int has_err) noexcept nogil

cdef enum:
    LG_NATIVE_API_VERSION = 1

cdef void _api_set_guest_interrupt(void *cpu, uint32_t lo, uint32_t hi, int has_err) noexcept nogil:
    lg_set_guest_interrupt(<lg_cpu *>cpu, lo, hi, has_err != 0)

cdef void _api_free(object capsule) noexcept:
    # The capsule owns a reference to its cpu (the context): the raw
    # pointers in the table stay valid exactly as long as the capsule.
    cdef void *cpu = PyCapsule_GetContext(capsule)
    free(PyCapsule_GetPointer(capsule, b"lguest._core.lg_native_api"))
    Py_XDECREF(<PyObject *>cpu)

def native_api(Cpu cpu not None):
    """A PyCapsule ("lguest._core.lg_native_api") holding the C entry points a
    native emulator hook uses to deliver traps for ``cpu`` (see lguest._uchook).
    The capsule keeps ``cpu`` (and so its guest) alive; the guest memory can
    still be closed, after which every access fails the bounds check -- hold
    it (``GuestMemory.hold()``) while a hook may run without the GIL."""
    cpu._check_ready()
    cdef lg_native_api *api = <lg_native_api *>malloc(sizeof(lg_native_api))
    if api == NULL:
        raise MemoryError()
    api.version = LG_NATIVE_API_VERSION
    api.size = sizeof(lg_native_api)
    api.cpu = <void *>&cpu.c
    api.regs = <uint32_t *>cpu.c.regs
    api.irqs_pending = &cpu.c.irqs_pending
    api.dead_code = &cpu.c.lg.dead_code
    api.set_guest_interrupt = _api_set_guest_interrupt
    try:
        capsule = PyCapsule_New(<void *>api, b"lguest._core.lg_native_api", _api_free)
    except BaseException:
        free(api)
        raise
    Py_INCREF(cpu)
    PyCapsule_SetContext(capsule, <void *>cpu)
    return capsule
