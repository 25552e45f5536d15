/* lguest/lguest.h -- the public C API of lguest's compiled core, for native
 * emulators (C, C++, Cython).  Find it with lguest.get_include():
 *
 *     cc -I"$(python -c 'import lguest; print(lguest.get_include())')" ...
 *     #include "lguest/lguest.h"
 *
 * Cython users `from lguest.lguest cimport *` (lguest/lguest.pxd, also under
 * get_include()).
 *
 * How to get it (the way numpy exports its C API): the module attribute
 * lguest._core._C_API is a PyCapsule named LGUEST_C_API_CAPSULE holding a
 * `const struct lguest_c_api *`, valid for the life of the process.  Check
 * `version` (== LGUEST_C_API_VERSION, or a later one: fields are only ever
 * appended) and that `size` covers the fields you use.
 *
 *     PyObject *m = PyImport_ImportModule("lguest._core");
 *     PyObject *c = PyObject_GetAttrString(m, "_C_API");
 *     const struct lguest_c_api *api = PyCapsule_GetPointer(c, LGUEST_C_API_CAPSULE);
 *     struct lguest_native_api *h = api->acquire(cpu);   // a lguest._core.Cpu
 *     ... api->deliver_trap(h, 14) ... without the GIL ...
 *     api->release(h);
 *
 * Handles.  acquire(cpu) returns a handle (NULL with a Python exception set
 * if `cpu` is not a ready compiled Cpu, or its guest memory is closed).  A
 * handle keeps the cpu, its guest and its guest memory alive -- the memory
 * is held (GuestMemory.hold()): it cannot be closed or unmapped -- until
 * release(handle).  The handle is a struct lguest_native_api: its regs,
 * irqs_pending and dead_code point into the cpu; its set_guest_interrupt
 * is the first-draft (v1) entry point the Unicorn hook uses.
 *
 * The GIL.  acquire and release need it (they own Python references).
 * None of the delivery calls does: they touch only C state, never raise,
 * and may run on any thread.  A kill (a bad guest stack, a bad lguest_data)
 * is recorded without the GIL: *h->dead_code becomes a LG_KILL_* code (the
 * first one wins) and Python formats the message later (guest.dead).
 *
 * Locks.  The C API takes no lock.  A Launcher (lguest.host.launcher, or
 * lguest.unicorn.UnicornLauncher) running the cpu holds its run lock and
 * changes the same registers from its own thread: while one runs, call
 * only send_irq (an atomic OR plus a wake-up, safe from any thread at any
 * time) and irq_deliverable (a racy read); every other call is the run
 * loop's own business and must come from the thread that drives the cpu
 * -- a native emulator that drives it without a Launcher, or a hook called
 * synchronously from inside that emulator (as the Unicorn hook is).
 */
#ifndef LGUEST_LGUEST_H
#define LGUEST_LGUEST_H

#include "lguest/abi.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the per-cpu table: a handle ------------------------------------------ */
/* Version 1 (first draft) is still what lguest._core.native_api(cpu)
 * returns in a capsule named LGUEST_NATIVE_API_CAPSULE for the Unicorn hook;
 * the C API's acquire() returns the same struct, with the fields after
 * set_guest_interrupt filled in (size says so). */
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
    /* acquire() only (NULL in a native_api() capsule): what the handle owns */
    void *owner;                /* PyObject *: the Cpu */
    void *hold;                 /* PyObject *: the guest memory's hold() */
    void *waker;                /* the cpu's wake-up, for send_irq */
};

typedef struct lguest_native_api lguest_handle;

/* ---- the module-level C API ------------------------------------------------ */
#define LGUEST_C_API_VERSION 1
#define LGUEST_C_API_CAPSULE "lguest._core._C_API"

struct lguest_c_api {
    uint32_t version;           /* LGUEST_C_API_VERSION */
    uint32_t size;              /* sizeof(struct lguest_c_api) */
    /* GIL held.  `cpu` is a PyObject * (a lguest._core.Cpu). */
    lguest_handle *(*acquire)(void *cpu);
    void (*release)(lguest_handle *h);
    /* No GIL needed; never raise.  The kernel's functions of the same names
     * (drivers/lguest/interrupts_and_traps.c). */
    void (*maybe_do_interrupt)(lguest_handle *h);          /* divert into a pending, unblocked irq */
    int (*deliver_trap)(lguest_handle *h, uint32_t num);   /* 0: no gate (the caller kills) */
    void (*set_guest_interrupt)(lguest_handle *h, uint32_t lo, uint32_t hi, int has_err);
    int (*send_irq)(lguest_handle *h, uint32_t irq);       /* -1: irq >= LG_IRQS */
    /* the host IDT (256 x {lo, hi}) from the guest's, non-direct traps to
     * defaults[256] */
    void (*copy_traps)(lguest_handle *h, uint32_t *idt, const uint32_t *defaults);
    /* would maybe_do_interrupt deliver an irq now?  1 or 0 */
    int (*irq_deliverable)(lguest_handle *h);
};

#ifdef __cplusplus
}
#endif

#endif /* LGUEST_LGUEST_H */
