/*
 * Readers that sleep until the writer publishes: a futex on the ring head.
 *
 * Header words (shm/layout.py): HEAD (the feed_seq of the newest record), WAITERS (how
 * many readers are about to sleep or sleeping on this segment's head) and WAKES (1 when
 * the segment's writer wakes them; a writer without these helpers leaves it 0 and its
 * readers poll). The futex word is the low half of the head: x86-64 and arm64 Linux are
 * little-endian, and 2^32 records never pass between a reader's look and its sleep.
 *
 * The writer stores the head, then reads WAITERS; a reader adds itself to WAITERS, then
 * reads the head. Both pairs are sequentially consistent, so either the reader sees the
 * new head and does not sleep, or the writer sees the reader and wakes it; a wake that
 * comes between the reader's look and its sleep makes the futex call return at once,
 * because the head no longer holds the value the reader expects.
 *
 * A reader killed while asleep (SIGKILL, or SIGTERM without a handler) never takes
 * itself off WAITERS, and the writer would then pay a needless wake call (about 0.5 us)
 * on every record. So the writer counts in WAKE_MISSES its wakes in a row that found
 * nobody asleep, and from WAKE_MISSES_TO_DOUBT on it stops waking; every reader clears
 * WAKE_MISSES after adding itself to WAITERS and before its look at the head. By the
 * same ordering argument the writer then either sees the cleared count and wakes, or
 * the reader sees the new head. The writer updates the count with a compare-and-swap,
 * so it never overwrites a reader's clear.
 *
 * Include it after Python.h, whose feature macros declare syscall().
 */
#ifndef UPFEED_NOTIFY_H
#define UPFEED_NOTIFY_H

#include <limits.h>
#include <stdint.h>

#if !defined(__linux__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the shm futex helpers need little-endian Linux"
#endif

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define STATE_WORD 3
#define HEAD_WORD 9
#define WAITERS_WORD 20
#define WAKES_WORD 21
#define WAKE_MISSES_WORD 22
#define NOTIFY_HEADER_SIZE 256
#define WAKE_MISSES_TO_DOUBT 64

static inline int64_t
monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline uint32_t *
head_futex(uint8_t *base)
{
    return (uint32_t *)(base + HEAD_WORD * 8);
}

/* Every reader sleeping on this segment's head returns and looks again; how many. */
static inline long
wake_head_waiters(uint8_t *base)
{
    return syscall(SYS_futex, head_futex(base), FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/* The last store of a record's write protocol: the head, then a wake if anyone sleeps. */
static inline void
publish_head_and_wake(uint8_t *base, uint64_t feed_seq)
{
    uint64_t *words = (uint64_t *)base;
    __atomic_store_n(words + HEAD_WORD, feed_seq, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(words + WAITERS_WORD, __ATOMIC_SEQ_CST) == 0) {
        return;
    }
    uint64_t misses = __atomic_load_n(words + WAKE_MISSES_WORD, __ATOMIC_SEQ_CST);
    if (misses >= WAKE_MISSES_TO_DOUBT) {
        return;
    }
    uint64_t counted = wake_head_waiters(base) > 0 ? 0 : misses + 1;
    __atomic_compare_exchange_n(words + WAKE_MISSES_WORD, &misses, counted, 0, __ATOMIC_SEQ_CST,
                                __ATOMIC_RELAXED);
}

/* A reader's step before it looks at the head for the last time before sleeping. */
static inline void
count_sleeper(uint8_t *base)
{
    uint64_t *words = (uint64_t *)base;
    __atomic_fetch_add(words + WAITERS_WORD, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(words + WAKE_MISSES_WORD, __ATOMIC_SEQ_CST) != 0) {
        __atomic_store_n(words + WAKE_MISSES_WORD, 0, __ATOMIC_SEQ_CST);
    }
}

#endif
