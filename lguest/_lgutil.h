/* Small C helpers shared by the compiled modules (_core, _clock, _uchook). */
#ifndef LGUEST_LGUTIL_H
#define LGUEST_LGUTIL_H

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

/* Unaligned little-endian access (x86 host; memcpy keeps it UB-free). */
static inline uint32_t lg_load32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline void lg_store32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

static inline int64_t lg_realtime_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline int64_t lg_monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

#endif /* LGUEST_LGUTIL_H */
