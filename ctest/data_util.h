/* Helpers shared by the data-path C tests: a monotonic clock, a short nap,
 * and a position-dependent byte pattern to fill and verify buffers. */
#ifndef TE_CTEST_DATA_UTIL_H
#define TE_CTEST_DATA_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <time.h>

static inline double now_sec(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline void nap(void) {
    struct timespec ts = {0, 1000 * 1000};
    nanosleep(&ts, NULL);
}

static inline uint8_t pattern(size_t i, unsigned seed) {
    return (uint8_t)((i * 167u + seed * 7u) ^ (i >> 13));
}

static inline void fill(uint8_t *p, size_t n, unsigned seed) {
    size_t i;
    for (i = 0; i < n; i++) p[i] = pattern(i, seed);
}

/* 1 if p[0..n] holds the pattern; reports the first wrong byte. */
static inline int verify(const uint8_t *p, size_t n, unsigned seed, const char *what) {
    size_t i;
    for (i = 0; i < n; i++) {
        if (p[i] != pattern(i, seed)) {
            fprintf(stderr, "%s: byte %zu of %zu is 0x%02x, expected 0x%02x\n", what, i, n,
                    p[i], pattern(i, seed));
            return 0;
        }
    }
    return 1;
}

#endif
