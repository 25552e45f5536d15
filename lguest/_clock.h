/* The native clock's types (lguest/_clock.pyx; the code is in _clock_wheel.h).
 *
 * A wheel is one pthread firing the clock event of every compiled cpu armed
 * on it, without the GIL.  A cpu owns one timer and one waker (lguest._clock
 * .CpuTimer, the base of lguest._core.Cpu): the timer points at the cpu's
 * irqs_pending and halted, and firing it is lguest's clockdev_fn -- set irq
 * 0 pending, wake the cpu if it sleeps. */
#ifndef LGUEST_CLOCK_H
#define LGUEST_CLOCK_H

#include <pthread.h>
#include <stdint.h>

/* The Launcher task's wake_up_process: a flag under a CLOCK_MONOTONIC condvar. */
typedef struct {
    pthread_mutex_t m;
    pthread_cond_t c;
    int flag;
} lg_waker;

struct lg_wheel;

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
    pthread_cond_t c;         /* CLOCK_REALTIME: expiries are wall-clock times */
    pthread_t thread;
    int running, stop;
    uint64_t generation;      /* bumped by every arm/cancel: ends a spin early */
    uint64_t fired, windows;  /* statistics (NativeClock.fired / .windows) */
    lg_timer *list;
} lg_wheel;

#endif /* LGUEST_CLOCK_H */
