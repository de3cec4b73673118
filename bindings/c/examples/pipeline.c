/*
 * A pipeline job: it alternates CPU phases (data preparation) and GPU phases, asking acb for a
 * GPU only for the GPU phases. The phases here are sleeps of the given lengths, so that the
 * example runs anywhere; a real job puts its CPU work and its kernels where the sleeps are.
 *
 *   ACB_ASSIGNER=unix:/tmp/acb/assigner.sock ./pipeline [PHASES] [CPU_MS] [GPU_MS]
 *
 * Prints one line per GPU phase; exits 0 when every phase ran, 1 otherwise.
 */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "acb.h"

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static int fail(const char *what, acb_status status) {
  char msg[512];
  size_t n = 0;
  if (acb_error_message(msg, sizeof msg, &n) != ACB_STATUS_OK || n == 0) {
    acb_status_message(status, msg, sizeof msg, &n);
  }
  fprintf(stderr, "pipeline: %s failed (status %u): %s\n", what, (unsigned)status, msg);
  return 1;
}

int main(int argc, char **argv) {
  long phases = argc > 1 ? strtol(argv[1], NULL, 10) : 3;
  long cpu_ms = argc > 2 ? strtol(argv[2], NULL, 10) : 200;
  long gpu_ms = argc > 3 ? strtol(argv[3], NULL, 10) : 100;
  if (phases <= 0 || cpu_ms < 0 || gpu_ms < 0) {
    fprintf(stderr, "usage: pipeline [PHASES>0] [CPU_MS>=0] [GPU_MS>=0]\n");
    return 2;
  }

  acb_config *config = NULL;
  acb_status st = acb_config_new(&config);
  if (st != ACB_STATUS_OK) return fail("acb_config_new", st);
  acb_client *client = NULL;
  st = acb_client_new(config, &client);
  acb_config_free(config);
  if (st != ACB_STATUS_OK) return fail("acb_client_new", st);

  acb_request *request = NULL;
  st = acb_request_new(&request);
  if (st != ACB_STATUS_OK) return fail("acb_request_new", st);

  int rc = 0;
  for (long i = 0; i < phases && rc == 0; i++) {
    sleep_ms(cpu_ms); /* CPU phase: no GPU held */
    acb_lease *lease = NULL;
    st = acb_on_device_begin(client, request, &lease);
    if (st != ACB_STATUS_OK) {
      rc = fail("acb_on_device_begin", st);
      break;
    }
    uint32_t index = 0;
    acb_lease_device_index(lease, 0, &index);
    printf("phase %ld: lease %llu on GPU %u\n", i, (unsigned long long)acb_lease_id(lease), index);
    fflush(stdout);
    sleep_ms(gpu_ms); /* GPU phase: kernels would run here */
    acb_lease_free(lease);
    st = acb_on_device_end(client);
    if (st != ACB_STATUS_OK) rc = fail("acb_on_device_end", st);
  }
  acb_request_free(request);
  acb_client_free(client);
  if (rc == 0) printf("done: %ld phases\n", phases);
  return rc;
}
