/*
 * An AlphaFold2-like job in C, manual mode: per protein, a long CPU phase (MSA and template
 * search) without a GPU, then a GPU phase (structure inference) with one, through libacb.
 *
 *   ln -sf libacb.so ../../target/release/libacb.so.1     # the SONAME the program asks for
 *   cc -std=c11 fold.c -I../../include -L../../target/release -Wl,-rpath,$PWD/../../target/release -lacb -o fold
 *   ACB_ASSIGNER=unix:/tmp/acb/assigner.sock ACB_JOB_ID=fold-c ./fold [PROTEINS] [MSA_MS] [FOLD_MS]
 *
 * Both phases are sleeps here (the GPU phase is SIMULATED); a real job runs its search where the
 * first sleep is and launches its kernels on the granted device where the second is.
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
  fprintf(stderr, "fold: %s failed (status %u): %s\n", what, (unsigned)status, msg);
  return 1;
}

int main(int argc, char **argv) {
  long proteins = argc > 1 ? strtol(argv[1], NULL, 10) : 3;
  long msa_ms = argc > 2 ? strtol(argv[2], NULL, 10) : 4900;
  long fold_ms = argc > 3 ? strtol(argv[3], NULL, 10) : 1100;
  if (proteins <= 0 || msa_ms < 0 || fold_ms <= 0) {
    fprintf(stderr, "usage: fold [PROTEINS>0] [MSA_MS>=0] [FOLD_MS>0]\n");
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
  if (st != ACB_STATUS_OK) {
    acb_client_free(client);
    return fail("acb_request_new", st);
  }

  int rc = 0;
  for (long i = 0; i < proteins && rc == 0; i++) {
    sleep_ms(msa_ms); /* CPU phase: MSA and template search, no GPU held */
    acb_lease *lease = NULL;
    st = acb_on_device_begin(client, request, &lease);
    if (st != ACB_STATUS_OK) {
      rc = fail("acb_on_device_begin", st);
      break;
    }
    uint32_t gpu = 0;
    acb_lease_device_index(lease, 0, &gpu);
    sleep_ms(fold_ms); /* GPU phase (SIMULATED): inference kernels on device `gpu` */
    acb_lease_free(lease);
    st = acb_on_device_end(client);
    if (st != ACB_STATUS_OK) {
      rc = fail("acb_on_device_end", st);
      break;
    }
    printf("protein %ld: folded on GPU %u (SIMULATED GPU phase)\n", i, gpu);
    fflush(stdout);
  }
  acb_request_free(request);
  acb_client_free(client);
  if (rc == 0) printf("done: %ld proteins\n", proteins);
  return rc;
}
