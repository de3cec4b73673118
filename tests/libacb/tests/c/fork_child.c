/*
 * A forked child and its parent's client (tests/robustness.rs). The parent makes a client and
 * holds a GPU phase; it forks; the child calls libacb with the inherited client: every call
 * must return ACB_STATUS_FORKED at once (no hang), and acb_client_free must return at once.
 * The child then makes a client of its own, which works. The parent's client is untouched.
 *
 * Exit status 0 when all held; the child's findings go to stdout, one line each.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "acb.h"

static int failures = 0;

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void expect(const char *who, const char *what, acb_status got, acb_status want) {
  char msg[512];
  size_t n = 0;
  acb_error_message(msg, sizeof msg, &n);
  if (got != want) {
    printf("%s FAIL %s: status %u, expected %u (%s)\n", who, what, (unsigned)got, (unsigned)want, msg);
    failures++;
  } else {
    printf("%s ok %s%s%s\n", who, what, n ? ": " : "", msg);
  }
  fflush(stdout);
}

static acb_client *new_client(const char *job) {
  acb_config *config = NULL;
  acb_client *client = NULL;
  if (acb_config_new(&config) != ACB_STATUS_OK) return NULL;
  acb_config_set_job(config, job, strlen(job));
  acb_config_set_eager_release(config, true);
  acb_status st = acb_client_new(config, &client);
  acb_config_free(config);
  return st == ACB_STATUS_OK ? client : NULL;
}

/* What the child does with its parent's client, then with one of its own. */
static int child(acb_client *inherited, acb_request *request) {
  double t0 = now_ms();
  acb_lease *lease = NULL;
  expect("child", "begin on the parent's client", acb_on_device_begin(inherited, request, &lease),
         ACB_STATUS_FORKED);
  expect("child", "end on the parent's client", acb_on_device_end(inherited), ACB_STATUS_FORKED);
  void *p = NULL;
  expect("child", "alloc on the parent's client", acb_client_alloc(inherited, 64, &p), ACB_STATUS_FORKED);
  acb_memory_stats stats;
  expect("child", "memory stats of the parent's client", acb_client_memory_stats(inherited, &stats),
         ACB_STATUS_FORKED);
  char buf[64];
  size_t n = 0;
  expect("child", "status of the parent's client", acb_client_status_json(inherited, buf, sizeof buf, &n),
         ACB_STATUS_FORKED);
  acb_client_free(inherited);
  double took = now_ms() - t0;
  printf("child calls and free took %.1f ms\n", took);
  if (took > 1000) {
    printf("child FAIL the calls and free took %.0f ms\n", took);
    failures++;
  }
  /* A client of its own works. */
  acb_client *own = new_client("fork-child");
  if (!own) {
    printf("child FAIL no client of its own\n");
    return 1;
  }
  lease = NULL;
  expect("child", "begin on its own client", acb_on_device_begin(own, request, &lease), ACB_STATUS_OK);
  acb_lease_free(lease);
  expect("child", "end on its own client", acb_on_device_end(own), ACB_STATUS_OK);
  acb_client_free(own);
  return failures ? 1 : 0;
}

int main(void) {
  acb_client *client = new_client("fork-parent");
  acb_request *request = NULL;
  if (!client || acb_request_new(&request) != ACB_STATUS_OK) {
    printf("parent FAIL setup\n");
    return 1;
  }
  acb_request_set_timeout_ms(request, 10000);
  acb_lease *lease = NULL;
  expect("parent", "begin", acb_on_device_begin(client, request, &lease), ACB_STATUS_OK);
  /* The child asks for the only GPU while the parent holds it: it must wait for the parent's
     end, not hang on the parent's connection. */
  pid_t pid = fork();
  if (pid == 0) {
    /* _exit: the inherited client is leaked by design, and a forked child skips atexit. */
    _exit(child(client, request));
  }
  if (pid < 0) {
    printf("parent FAIL fork\n");
    return 1;
  }
  /* The parent's client still works while the child runs. */
  struct timespec ts = {0, 300 * 1000000L};
  nanosleep(&ts, NULL);
  expect("parent", "end while the child runs", acb_on_device_end(client), ACB_STATUS_OK);
  acb_lease_free(lease);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    printf("parent FAIL the child ended with status 0x%x\n", status);
    failures++;
  }
  lease = NULL;
  expect("parent", "begin after the child", acb_on_device_begin(client, request, &lease), ACB_STATUS_OK);
  acb_lease_free(lease);
  expect("parent", "end after the child", acb_on_device_end(client), ACB_STATUS_OK);
  acb_request_free(request);
  acb_client_free(client);
  printf("%s\n", failures ? "FAILED" : "all held");
  return failures ? 1 : 0;
}
