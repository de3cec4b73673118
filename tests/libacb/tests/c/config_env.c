/*
 * The environment's settings as libacb reads them (tests/robustness.rs): acb_config_new, then,
 * with argv[1] "status", one acb_client_status_json call. Prints "config: STATUS MESSAGE" and
 * "status: STATUS MESSAGE" lines; exits 0 whatever libacb answered (the test reads the lines).
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <string.h>

#include "acb.h"

static void say(const char *what, acb_status st) {
  char msg[1024];
  size_t n = 0;
  acb_error_message(msg, sizeof msg, &n);
  printf("%s: %u %s\n", what, (unsigned)st, msg);
  fflush(stdout);
}

int main(int argc, char **argv) {
  acb_config *config = NULL;
  acb_status st = acb_config_new(&config);
  say("config", st);
  if (st != ACB_STATUS_OK || argc < 2 || strcmp(argv[1], "status") != 0) {
    acb_config_free(config);
    return 0;
  }
  acb_client *client = NULL;
  st = acb_client_new(config, &client);
  acb_config_free(config);
  if (st != ACB_STATUS_OK) {
    say("client", st);
    return 0;
  }
  char buf[8192];
  size_t n = 0;
  say("status", acb_client_status_json(client, buf, sizeof buf, &n));
  acb_client_free(client);
  return 0;
}
