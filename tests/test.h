/* The one assertion header for tests (libuv's test/task.h style): CHECK prints the
 * location and the failing expression, counts the failure, and carries on, so one run
 * reports every problem; test_done() prints the closing line and gives the exit code. */
#ifndef TD_TEST_H
#define TD_TEST_H

#include <stdio.h>
#include <stdlib.h>

static int g_test_checks, g_test_failures;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        g_test_checks++;                                                                           \
        if (!(cond)) {                                                                             \
            g_test_failures++;                                                                     \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                        \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
        }                                                                                          \
    } while (0)

/* For setup steps the rest of a test cannot do without. */
#define REQUIRE(cond, ...)                                                                         \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FATAL %s:%d: %s: ", __FILE__, __LINE__, #cond);                       \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static inline int test_done(const char *name) {
    printf("%s: %d checks, %d failed\n", name, g_test_checks, g_test_failures);
    return g_test_failures ? 1 : 0;
}

#endif
