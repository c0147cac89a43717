/* Tiny assertion helpers shared by the C tests. */
#ifndef TE_CTEST_CHECK_H
#define TE_CTEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>

static int te_failures = 0;

#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__,         \
                    __LINE__, #cond);                                      \
            te_failures++;                                                 \
        }                                                                  \
    } while (0)

/* Compare an integer result with the exact expected value. */
#define CHECK_EQ(expr, expected)                                           \
    do {                                                                   \
        long long te_got_ = (long long)(expr);                             \
        long long te_want_ = (long long)(expected);                        \
        if (te_got_ != te_want_) {                                         \
            fprintf(stderr, "%s:%d: %s == %lld, expected %lld\n", __FILE__, \
                    __LINE__, #expr, te_got_, te_want_);                   \
            te_failures++;                                                 \
        }                                                                  \
    } while (0)

/* Abort the test at once (for setup steps everything else depends on). */
#define REQUIRE(cond)                                                      \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "%s:%d: REQUIRE failed: %s\n", __FILE__,       \
                    __LINE__, #cond);                                      \
            exit(1);                                                       \
        }                                                                  \
    } while (0)

static int te_finish(const char *name) {
    if (te_failures) {
        fprintf(stderr, "%s: %d check(s) failed\n", name, te_failures);
        return 1;
    }
    printf("%s: all checks passed\n", name);
    return 0;
}

#endif
