/* test.h - the tiny harness every C test uses. Each CHECK counts as one
 * assertion; a test program prints one line per named case and ends with
 * "N passed, N failed", exiting non-zero if anything failed. */
#ifndef DISTILLD_TEST_H
#define DISTILLD_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int test_passed, test_failed, test_case_failed;
static char test_case_name[256]; /* a copy: callers may pass a name they build on the stack */

#define TEST_CASE(name) test_begin(name)
#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (!(cond)) {                                                          \
            test_case_failed = 1;                                               \
            fprintf(stderr, "  FAIL %s:%d [%s]: ", __FILE__, __LINE__, test_case_name); \
            fprintf(stderr, __VA_ARGS__);                                       \
            fprintf(stderr, "\n");                                              \
        }                                                                       \
    } while (0)

static inline void test_end_case(void) {
    if (!*test_case_name) return;
    if (test_case_failed) {
        test_failed++;
        printf("FAIL %s\n", test_case_name);
    } else {
        test_passed++;
        printf("ok   %s\n", test_case_name);
    }
    fflush(stdout);
}

static inline void test_begin(const char *name) {
    test_end_case();
    snprintf(test_case_name, sizeof test_case_name, "%s", name);
    test_case_failed = 0;
}

static inline int test_finish(void) {
    test_end_case();
    test_case_name[0] = '\0';
    printf("%d passed, %d failed\n", test_passed, test_failed);
    return test_failed ? 1 : 0;
}

/* |a-b| <= atol + rtol*|b| */
static inline int close_enough(double a, double b, double rtol, double atol) {
    return fabs(a - b) <= atol + rtol * fabs(b);
}

#endif
