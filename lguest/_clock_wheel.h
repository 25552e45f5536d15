/* The native clock's code: wakers and the timer wheel (types in _clock.h).
 * Included by lguest/_clock.pyx only. */
#ifndef LGUEST_CLOCK_WHEEL_H
#define LGUEST_CLOCK_WHEEL_H

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>

#include "_clock.h"
#include "_lgutil.h"

/* ---- waking a sleeping run loop ---------------------------------------------- */
static void lg_waker_init(lg_waker *w)
{
    pthread_condattr_t a;
    pthread_mutex_init(&w->m, NULL);
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&w->c, &a);
    pthread_condattr_destroy(&a);
    w->flag = 0;
}

static void lg_waker_destroy(lg_waker *w)
{
    pthread_cond_destroy(&w->c);
    pthread_mutex_destroy(&w->m);
}

static void lg_wake(lg_waker *w)
{
    pthread_mutex_lock(&w->m);
    w->flag = 1;
    pthread_cond_broadcast(&w->c);
    pthread_mutex_unlock(&w->m);
}

/* Sleep until woken (1) or timeout_ns passes (0); timeout_ns < 0: forever. */
static int lg_wait(lg_waker *w, int64_t timeout_ns)
{
    struct timespec ts;
    int woken;
    pthread_mutex_lock(&w->m);
    if (timeout_ns >= 0) {
        int64_t t = lg_monotonic_ns() + timeout_ns;
        ts.tv_sec = t / 1000000000LL;
        ts.tv_nsec = t % 1000000000LL;
    }
    while (!w->flag) {
        int rc = timeout_ns < 0 ? pthread_cond_wait(&w->c, &w->m) : pthread_cond_timedwait(&w->c, &w->m, &ts);
        if (rc == ETIMEDOUT)
            break;
    }
    woken = w->flag;
    w->flag = 0;
    pthread_mutex_unlock(&w->m);
    return woken;
}

/* ---- the timer wheel: one thread firing every armed cpu clock ----------------- */

/* Waits shorter than this are spun (sched_yield), not slept: a condvar
 * sleep costs ~60 us of timer slack, too coarse for a 100 kHz clock. */
#define LG_SPIN_NS 200000

/* clockdev_fn for `t`, with the wheel's mutex held: irq 0 pending, wake the
 * cpu if it sleeps.  A periodic timer that fell more than a period behind
 * skips the missed expiries (hrtimer_forward's overrun rule): the thread
 * must never be left permanently behind, looping with the mutex held while
 * Python threads wait for it. */
static void lg_timer_fire_locked(lg_wheel *w, lg_timer *t)
{
    if (t->period > 0) {
        t->expiry += t->period;
        if (t->expiry <= lg_realtime_ns())
            t->expiry = lg_realtime_ns() + t->period;
    } else {
        t->armed = 0;
    }
    w->fired++;
    /* A fire that found the bit clear opened a new pending window. */
    if (!(__atomic_fetch_or(t->pending, 1u, __ATOMIC_SEQ_CST) & 1u))
        w->windows++;
    if (__atomic_load_n(t->halted, __ATOMIC_SEQ_CST))
        lg_wake(t->waker);
}

/* Wait, mutex held, until `first` may be due: sleep on the condvar while it
 * is far, spin (mutex released) over the last LG_SPIN_NS.  Any arm or
 * cancel (generation bump, condvar signal) ends the wait early. */
static void lg_wheel_wait_locked(lg_wheel *w, const lg_timer *first, int64_t left)
{
    if (left > LG_SPIN_NS) {
        struct timespec ts;
        int64_t until = first->expiry - LG_SPIN_NS / 2;
        ts.tv_sec = until / 1000000000LL;
        ts.tv_nsec = until % 1000000000LL;
        pthread_cond_timedwait(&w->c, &w->m, &ts);   /* CLOCK_REALTIME condvar */
    } else {
        uint64_t gen = w->generation;
        int64_t expiry = first->expiry;   /* 'first' may go once unlocked */
        pthread_mutex_unlock(&w->m);
        while (lg_realtime_ns() < expiry && __atomic_load_n(&w->generation, __ATOMIC_SEQ_CST) == gen)
            sched_yield();
        pthread_mutex_lock(&w->m);
    }
}

static void *lg_wheel_main(void *arg)
{
    lg_wheel *w = (lg_wheel *)arg;
    pthread_mutex_lock(&w->m);
    while (!w->stop) {
        lg_timer *t, *first = NULL;
        int64_t left;
        for (t = w->list; t; t = t->next)
            if (t->armed && (!first || t->expiry < first->expiry))
                first = t;
        if (!first) {
            pthread_cond_wait(&w->c, &w->m);
            continue;
        }
        left = first->expiry - lg_realtime_ns();
        if (left <= 0)
            lg_timer_fire_locked(w, first);
        else
            lg_wheel_wait_locked(w, first, left);
    }
    w->running = 0;
    pthread_mutex_unlock(&w->m);
    return NULL;
}

static void lg_wheel_init(lg_wheel *w)
{
    memset(w, 0, sizeof *w);
    pthread_mutex_init(&w->m, NULL);
    pthread_cond_init(&w->c, NULL);
}

static void lg_timer_unlink_locked(lg_timer *t)
{
    lg_wheel *w = t->wheel;
    lg_timer **pp;
    for (pp = &w->list; *pp; pp = &(*pp)->next)
        if (*pp == t) {
            *pp = t->next;
            break;
        }
    t->next = NULL;
    t->wheel = NULL;
    t->armed = 0;
}

/* Arm (or re-arm, replacing the expiry) t on w; 0, or an errno. */
/* Whether the wheel's thread runs (set under the lock, once; read without it). */
static inline int lg_wheel_running(lg_wheel *w)
{
    return __atomic_load_n(&w->running, __ATOMIC_SEQ_CST);
}

static int lg_wheel_arm(lg_wheel *w, lg_timer *t, int64_t expiry, int64_t period)
{
    int rc = 0;
    pthread_mutex_lock(&w->m);
    if (t->wheel && t->wheel != w)
        lg_timer_unlink_locked(t);
    if (!t->wheel) {
        t->wheel = w;
        t->next = w->list;
        w->list = t;
    }
    t->expiry = expiry;
    t->period = period;
    t->armed = 1;
    __atomic_add_fetch(&w->generation, 1, __ATOMIC_SEQ_CST);
    if (!w->running && !w->stop) {
        rc = pthread_create(&w->thread, NULL, lg_wheel_main, w);
        if (rc == 0)
            w->running = 1;
    }
    pthread_cond_signal(&w->c);
    pthread_mutex_unlock(&w->m);
    return rc;
}

static void lg_timer_cancel(lg_timer *t)
{
    lg_wheel *w = t->wheel;
    if (!w) {
        t->armed = 0;
        return;
    }
    pthread_mutex_lock(&w->m);
    t->armed = 0;
    __atomic_add_fetch(&w->generation, 1, __ATOMIC_SEQ_CST);
    pthread_cond_signal(&w->c);
    pthread_mutex_unlock(&w->m);
}

static void lg_timer_detach(lg_timer *t)
{
    lg_wheel *w = t->wheel;
    if (!w)
        return;
    pthread_mutex_lock(&w->m);
    lg_timer_unlink_locked(t);
    __atomic_add_fetch(&w->generation, 1, __ATOMIC_SEQ_CST);
    pthread_cond_signal(&w->c);
    pthread_mutex_unlock(&w->m);
}

static void lg_wheel_shutdown(lg_wheel *w)
{
    int was_running;
    pthread_mutex_lock(&w->m);
    w->stop = 1;
    was_running = w->running;
    pthread_cond_signal(&w->c);
    while (w->list)
        lg_timer_unlink_locked(w->list);
    pthread_mutex_unlock(&w->m);
    if (was_running)
        pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->c);
    pthread_mutex_destroy(&w->m);
}

#endif /* LGUEST_CLOCK_WHEEL_H */
