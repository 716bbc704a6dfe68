/* Cache of freed large output buffers (see buffer_cache.h). */
#define _DEFAULT_SOURCE /* madvise under -std=c11 */
#include "buffer_cache.h"

#include <stdint.h>
#include <stdlib.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

/* Calls come from NumPy with the GIL held; the lock keeps the cache sound
 * without it too (free-threaded builds, a C caller). */
#ifndef __STDC_NO_ATOMICS__
#include <stdatomic.h>
static atomic_flag lock_flag = ATOMIC_FLAG_INIT;
static void lock(void)
{
    while (atomic_flag_test_and_set_explicit(&lock_flag, memory_order_acquire)) {
    }
}
static void unlock(void)
{
    atomic_flag_clear_explicit(&lock_flag, memory_order_release);
}
#else
static void lock(void) {}
static void unlock(void) {}
#endif

#define KD_CACHE_DEFAULT_LIMIT ((size_t)1 << 30)
/* limits are clamped here so that the size classes below never overflow */
#define KD_CACHE_MAX_LIMIT (SIZE_MAX >> 2)

typedef struct {
    void *ptr;
    size_t cap;
} block;

/* blocks[0] is the least recently freed */
static block blocks[KD_CACHE_MAX_BLOCKS];
static int n_blocks = 0;
static size_t held = 0, limit = KD_CACHE_DEFAULT_LIMIT, hits = 0, misses = 0;

/* The capacity a request of `size` bytes gets: `size` below the cached sizes
 * (and above the largest limit), else rounded up to a multiple of a quarter
 * of the power of two at or below it. */
static size_t size_class(size_t size)
{
    if (size < KD_CACHE_MIN_BYTES || size > KD_CACHE_MAX_LIMIT)
        return size;
    size_t p = KD_CACHE_MIN_BYTES;
    while (p <= size / 2)
        p *= 2;
    size_t step = p / 4;
    return (size + step - 1) / step * step;
}

/* Large buffers in transparent huge pages, as NumPy's default allocator asks
 * for them: fewer page faults on first touch. */
static void advise_hugepage(void *p, size_t size)
{
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (p && size >= ((size_t)1 << 22)) {
        uintptr_t off = 4096u - (uintptr_t)p % 4096u;
        madvise((char *)p + off, size - off, MADV_HUGEPAGE);
    }
#else
    (void)p;
    (void)size;
#endif
}

static void remove_block(int i)
{
    held -= blocks[i].cap;
    for (int k = i + 1; k < n_blocks && k < KD_CACHE_MAX_BLOCKS; k++)
        blocks[k - 1] = blocks[k];
    n_blocks--;
}

void *kd_cache_malloc(size_t size)
{
    size_t cap = size_class(size);
    if (cap < KD_CACHE_MIN_BYTES)
        return malloc(size ? size : 1);
    void *p = NULL;
    lock();
    for (int i = n_blocks - 1; i >= 0; i--)
        if (blocks[i].cap == cap) {
            p = blocks[i].ptr;
            remove_block(i);
            break;
        }
    if (p)
        hits++;
    else
        misses++;
    unlock();
    if (!p) {
        p = malloc(cap);
        advise_hugepage(p, cap);
    }
    return p;
}

void *kd_cache_calloc(size_t nelem, size_t elsize)
{
    if (elsize && nelem > SIZE_MAX / elsize)
        return NULL;
    size_t size = nelem * elsize, cap = size_class(size);
    if (cap < KD_CACHE_MIN_BYTES)
        return calloc(size ? size : 1, 1);
    /* fresh zero pages cost less than clearing a cached block */
    void *p = calloc(cap, 1);
    advise_hugepage(p, cap);
    return p;
}

void *kd_cache_realloc(void *ptr, size_t new_size)
{
    size_t cap = size_class(new_size);
    return realloc(ptr, cap ? cap : 1);
}

/* Under the lock: takes out the least recently freed blocks until `slots`
 * more blocks and `room` more bytes fit, into `out` (freed by the caller after
 * unlocking: unmapping hundreds of MiB takes a while); returns their count. */
static int evict_for(int slots, size_t room, void **out)
{
    int n = 0;
    while (n_blocks > 0 && (n_blocks + slots > KD_CACHE_MAX_BLOCKS || held + room > limit)) {
        out[n++] = blocks[0].ptr;
        remove_block(0);
    }
    return n;
}

static void free_all(void **ptrs, int n)
{
    for (int i = 0; i < n; i++)
        free(ptrs[i]);
}

void kd_cache_free(void *ptr, size_t size)
{
    if (!ptr)
        return;
    size_t cap = size_class(size);
    void *evicted[KD_CACHE_MAX_BLOCKS + 1];
    int n_evicted = 0;
    lock();
    if (cap < KD_CACHE_MIN_BYTES || cap > limit) {
        evicted[n_evicted++] = ptr;
    } else {
        n_evicted = evict_for(1, cap, evicted);
        blocks[n_blocks].ptr = ptr;
        blocks[n_blocks].cap = cap;
        n_blocks++;
        held += cap;
    }
    unlock();
    free_all(evicted, n_evicted);
}

size_t kd_cache_set_limit(size_t new_limit)
{
    void *evicted[KD_CACHE_MAX_BLOCKS];
    if (new_limit > KD_CACHE_MAX_LIMIT)
        new_limit = KD_CACHE_MAX_LIMIT;
    lock();
    size_t old = limit;
    limit = new_limit;
    int n_evicted = evict_for(0, 0, evicted);
    unlock();
    free_all(evicted, n_evicted);
    return old;
}

void kd_cache_clear(void)
{
    void *evicted[KD_CACHE_MAX_BLOCKS];
    lock();
    int n_evicted = evict_for(KD_CACHE_MAX_BLOCKS + 1, 0, evicted);
    unlock();
    free_all(evicted, n_evicted);
}

kd_cache_info kd_cache_get_info(void)
{
    lock();
    kd_cache_info info = {limit, held, n_blocks, hits, misses};
    unlock();
    return info;
}

void kd_cache_after_fork(void)
{
#ifndef __STDC_NO_ATOMICS__
    atomic_flag_clear(&lock_flag);
#endif
}
