/* A small cache of freed large output buffers, so that a training loop that
 * frees its gradient and asks for one of the same size at the next step gets
 * memory whose pages are already mapped (a fresh 256 MiB buffer costs the
 * kernel 30-50 ms of page faults and zeroing on a 2-core VM, as much as a
 * forward-KL call writing into it). No Python here: the binding wraps these
 * in a NumPy memory handler (NEP 49) used only for kdtemp's returned arrays.
 *
 * Blocks of at least KD_CACHE_MIN_BYTES are allocated in size classes (four
 * per power of two), so a request reuses a cached block of its class: at most
 * 25% of a block is unused. The cache keeps at most KD_CACHE_MAX_BLOCKS
 * blocks and at most `limit` bytes, evicting the least recently freed. */
#ifndef KDTEMP_BUFFER_CACHE_H
#define KDTEMP_BUFFER_CACHE_H

#include <stddef.h>

#define KD_CACHE_MIN_BYTES ((size_t)1 << 20)
#define KD_CACHE_MAX_BLOCKS 4

typedef struct {
    size_t limit;   /* bytes the cache may hold; 0: caching off */
    size_t bytes;   /* bytes held now */
    int blocks;     /* blocks held now */
    size_t hits;    /* allocations served from the cache */
    size_t misses;  /* allocations of cacheable size that were not */
} kd_cache_info;

void *kd_cache_malloc(size_t size);
void *kd_cache_calloc(size_t nelem, size_t elsize);
void *kd_cache_realloc(void *ptr, size_t new_size);
/* `size`: what the block was last requested with (malloc or realloc) */
void kd_cache_free(void *ptr, size_t size);

/* sets the byte limit (evicting what no longer fits) and returns the old one */
size_t kd_cache_set_limit(size_t limit);
/* frees every cached block */
void kd_cache_clear(void);
kd_cache_info kd_cache_get_info(void);
/* in a forked child: the lock may have been held by a thread that is gone */
void kd_cache_after_fork(void);

#endif
