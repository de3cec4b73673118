/*
 * Times N begin+end cycles through libacb (eager release: every cycle is a grant and a release
 * through the assigner). Prints "p50_us=... mean_us=..." for the benchmark driver
 * (cargo run --release -p acb-ffi --example roundtrip_bench).
 *
 *   ACB_ASSIGNER=unix:/tmp/acb/assigner.sock ./roundtrip_bench N [lazy|eager] [GAP_US]
 *
 * With "lazy", release is lazy and nobody else waits: after the first phase the GPU is kept,
 * so a cycle makes no call to the assigner and measures libacb's own overhead. GAP_US is a
 * pause between phases (a CPU phase), not timed.
 */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "acb.h"

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  long n = argc > 1 ? strtol(argv[1], NULL, 10) : 1000;
  if (n <= 0) return 2;
  bool eager = !(argc > 2 && strcmp(argv[2], "lazy") == 0);
  long gap_us = argc > 3 ? strtol(argv[3], NULL, 10) : 0;
  acb_config *cfg = NULL;
  acb_client *client = NULL;
  acb_request *req = NULL;
  if (acb_config_new(&cfg) || acb_config_set_eager_release(cfg, eager) || acb_client_new(cfg, &client) ||
      acb_request_new(&req)) {
    fprintf(stderr, "setup failed\n");
    return 1;
  }
  acb_config_free(cfg);
  double *lat = malloc(sizeof(double) * (size_t)n);
  if (!lat) return 1;
  /* One warm-up cycle connects the session. */
  for (long i = -1; i < n; i++) {
    acb_lease *lease = NULL;
    double t0 = now_us();
    if (acb_on_device_begin(client, req, &lease) != ACB_STATUS_OK) return 1;
    acb_lease_free(lease);
    if (acb_on_device_end(client) != ACB_STATUS_OK) return 1;
    if (i >= 0) lat[i] = now_us() - t0;
    if (gap_us > 0) {
      struct timespec gap = {gap_us / 1000000, (gap_us % 1000000) * 1000};
      nanosleep(&gap, NULL);
    }
  }
  double sum = 0;
  for (long i = 0; i < n; i++) sum += lat[i];
  qsort(lat, (size_t)n, sizeof(double), cmp);
  printf("p50_us=%.2f mean_us=%.2f\n", lat[n / 2], sum / (double)n);
  free(lat);
  acb_request_free(req);
  acb_client_free(client);
  return 0;
}
