/*
 * The C and C++ tests' one check macro: it counts checks passed and failed and says where one
 * failed; each test ends by printing "N passed, M failed".
 */
#ifndef ACB_TEST_CHECK_H
#define ACB_TEST_CHECK_H

#include <stdio.h>

static int passed, failed;

#define CHECK(cond)                                                      \
  do {                                                                   \
    if (cond) {                                                          \
      passed++;                                                          \
    } else {                                                             \
      failed++;                                                          \
      fprintf(stderr, "FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);  \
    }                                                                    \
  } while (0)

#endif
