/*
 * One of many C clients across an assigner restart (tests/robustness.rs). It runs GPU phases
 * in a loop; errors are expected while the assigner is down. Once the file named by argv[1]
 * exists (the test creates it when the new assigner is up) it must get one phase from the new
 * assigner within 20 s, and exits 0. Dying of SIGPIPE, as C hosts of libacb did on a graceful
 * restart, is what the test looks for.
 *
 * stdout: "ready" after the first phase; "new assigner: phase N" at the end.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "acb.h"

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void say_error(const char *what, acb_status st) {
  char msg[512];
  size_t n = 0;
  acb_error_message(msg, sizeof msg, &n);
  fprintf(stderr, "%s: status %u: %s\n", what, (unsigned)st, msg);
}

/* One phase: begin (2 s at most), a little work, end. */
static acb_status phase(acb_client *client, acb_request *request) {
  acb_lease *lease = NULL;
  acb_status st = acb_on_device_begin(client, request, &lease);
  if (st != ACB_STATUS_OK) return st;
  sleep_ms(2);
  acb_lease_free(lease);
  return acb_on_device_end(client);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: restart_client GO_FILE\n");
    return 2;
  }
  acb_config *config = NULL;
  acb_client *client = NULL;
  acb_request *request = NULL;
  acb_status st = acb_config_new(&config);
  if (st == ACB_STATUS_OK) st = acb_config_set_connect_timeout_ms(config, 1000);
  if (st == ACB_STATUS_OK) st = acb_client_new(config, &client);
  if (st == ACB_STATUS_OK) st = acb_request_new(&request);
  if (st == ACB_STATUS_OK) st = acb_request_set_timeout_ms(request, 2000);
  acb_config_free(config);
  if (st != ACB_STATUS_OK) {
    say_error("setup", st);
    return 1;
  }
  int ready = 0, rc = 1;
  /* Before the go file: phases until it appears (bounded: 120 s). */
  for (int i = 0; i < 12000 && access(argv[1], F_OK) != 0; i++) {
    st = phase(client, request);
    if (st == ACB_STATUS_OK && !ready) {
      printf("ready\n");
      fflush(stdout);
      ready = 1;
    }
    if (st != ACB_STATUS_OK) sleep_ms(10);
  }
  /* After: the new assigner must grant a phase within 20 s. */
  for (int i = 0; i < 200; i++) {
    st = phase(client, request);
    if (st == ACB_STATUS_OK) {
      printf("new assigner: phase %d\n", i + 1);
      rc = 0;
      break;
    }
    if (i == 199) say_error("no phase from the new assigner", st);
    sleep_ms(100);
  }
  acb_request_free(request);
  acb_client_free(client);
  return rc;
}
