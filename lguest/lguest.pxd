# cython: language_level=3
# Cython declarations of lguest/lguest.h, the public C API of the compiled
# core (see that header for the rules: handles, the GIL, locks).
#
#     from lguest.lguest cimport lguest_c_api, lguest_handle, LGUEST_C_API_CAPSULE
#
# and compile with include_dirs=[lguest.get_include()].
from libc.stdint cimport uint32_t

cdef extern from "lguest/lguest.h" nogil:
    enum:
        LGUEST_NATIVE_API_VERSION
        LGUEST_C_API_VERSION
    const char *LGUEST_NATIVE_API_CAPSULE
    const char *LGUEST_C_API_CAPSULE

    ctypedef struct lg_native_api "struct lguest_native_api":
        uint32_t version
        uint32_t size
        void *cpu
        uint32_t *regs
        uint32_t *irqs_pending
        int *dead_code
        void (*set_guest_interrupt)(void *cpu, uint32_t lo, uint32_t hi, int has_err) noexcept nogil
        void *owner
        void *hold
        void *waker

    ctypedef lg_native_api lguest_handle

    ctypedef struct lguest_c_api "struct lguest_c_api":
        uint32_t version
        uint32_t size
        lguest_handle *(*acquire)(void *cpu) noexcept
        void (*release)(lguest_handle *h) noexcept
        void (*maybe_do_interrupt)(lguest_handle *h) noexcept nogil
        int (*deliver_trap)(lguest_handle *h, uint32_t num) noexcept nogil
        void (*set_guest_interrupt)(lguest_handle *h, uint32_t lo, uint32_t hi, int has_err) noexcept nogil
        int (*send_irq)(lguest_handle *h, uint32_t irq) noexcept nogil
        void (*copy_traps)(lguest_handle *h, uint32_t *idt, const uint32_t *defaults) noexcept nogil
        int (*irq_deliverable)(lguest_handle *h) noexcept nogil
