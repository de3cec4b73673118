/*
 * The C API's contract, from C: NULL handling, status messages, misuse, an unreachable
 * assigner, and (when ACB_ASSIGNER names a running assigner with free GPUs) a real phase.
 * Built with -Wall -Wextra -Werror -Wpedantic and AddressSanitizer + UBSan by the test suite.
 * Prints "N passed, M failed".
 */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "acb.h"

#include "check.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void nulls_and_messages(void) {
  CHECK(acb_abi_version() == ACB_ABI_VERSION);
  CHECK(acb_config_new(NULL) == ACB_STATUS_NULL_PARAMETER);
  CHECK(acb_client_new(NULL, NULL) == ACB_STATUS_NULL_PARAMETER);
  CHECK(acb_on_device_begin(NULL, NULL, NULL) == ACB_STATUS_NULL_PARAMETER);
  CHECK(acb_on_device_end(NULL) == ACB_STATUS_NULL_PARAMETER);
  CHECK(acb_request_set_gpus(NULL, 1) == ACB_STATUS_NULL_PARAMETER);
  CHECK(acb_lease_id(NULL) == 0);
  CHECK(acb_lease_device_count(NULL) == 0);
  acb_config_free(NULL);
  acb_client_free(NULL);
  acb_request_free(NULL);
  acb_lease_free(NULL);

  char buf[128];
  size_t n = 0;
  CHECK(acb_status_message(ACB_STATUS_TIMEOUT, buf, sizeof buf, &n) == ACB_STATUS_OK);
  CHECK(n == strlen(buf) && strstr(buf, "timeout") != NULL);
  CHECK(acb_status_message(9999, buf, sizeof buf, &n) == ACB_STATUS_OUT_OF_RANGE);
  char tiny[4];
  CHECK(acb_status_message(ACB_STATUS_UNAVAILABLE, tiny, sizeof tiny, &n) == ACB_STATUS_BUFFER_TOO_SMALL);
  CHECK(n == 3 && tiny[3] == '\0');
  CHECK(acb_status_message(ACB_STATUS_OK, NULL, 0, &n) == ACB_STATUS_NULL_PARAMETER);
  /* The details of the last failure on this thread. */
  acb_on_device_end(NULL);
  CHECK(acb_error_message(buf, sizeof buf, &n) == ACB_STATUS_OK && strstr(buf, "NULL") != NULL);
}

static void bad_arguments(void) {
  acb_config *config = NULL;
  CHECK(acb_config_new(&config) == ACB_STATUS_OK);
  CHECK(acb_config_set_assigner(config, "nonsense", 8) == ACB_STATUS_INVALID_ARGUMENT);
  CHECK(acb_config_set_assigner(config, "\xff\xfe", 2) == ACB_STATUS_INVALID_ARGUMENT);
  CHECK(acb_config_set_job(config, "", 0) == ACB_STATUS_INVALID_ARGUMENT);
  CHECK(acb_config_set_connect_timeout_ms(config, 0) == ACB_STATUS_INVALID_ARGUMENT);
  /* A group: 1 to 4096 members, a name as a job's; length 0 is none. */
  CHECK(acb_config_set_group(NULL, "g", 1, 2) == ACB_STATUS_NULL_PARAMETER);
  CHECK(acb_config_set_group(config, NULL, 1, 2) == ACB_STATUS_NULL_PARAMETER);
  CHECK(acb_config_set_group(config, "g", 1, 0) == ACB_STATUS_INVALID_ARGUMENT);
  CHECK(acb_config_set_group(config, "g", 1, 4097) == ACB_STATUS_INVALID_ARGUMENT);
  {
    char buf[256];
    size_t n = 0;
    CHECK(acb_error_message(buf, sizeof buf, &n) == ACB_STATUS_OK && strstr(buf, "4096") != NULL);
  }
  CHECK(acb_config_set_group(config, "a\nb", 3, 2) == ACB_STATUS_INVALID_ARGUMENT);
  CHECK(acb_config_set_group(config, "\xff", 1, 2) == ACB_STATUS_INVALID_ARGUMENT);
  CHECK(acb_config_set_group(config, "torchrun:x", 10, 4096) == ACB_STATUS_OK);
  CHECK(acb_config_set_group(config, NULL, 0, 0) == ACB_STATUS_OK);
  acb_config_free(config);
  acb_request *request = NULL;
  CHECK(acb_request_new(&request) == ACB_STATUS_OK);
  CHECK(acb_request_set_gpus(request, 0) == ACB_STATUS_INVALID_ARGUMENT);
  acb_request_free(request);
}

/* An assigner nobody runs: UNAVAILABLE after the configured retries, never a hang. */
static void unreachable_assigner(void) {
  acb_config *config = NULL;
  acb_client *client = NULL;
  acb_request *request = NULL;
  const char *addr = "unix:/nonexistent/acb-test.sock";
  CHECK(acb_config_new(&config) == ACB_STATUS_OK);
  CHECK(acb_config_set_assigner(config, addr, strlen(addr)) == ACB_STATUS_OK);
  CHECK(acb_config_set_connect_retries(config, 2) == ACB_STATUS_OK);
  CHECK(acb_config_set_connect_timeout_ms(config, 100) == ACB_STATUS_OK);
  CHECK(acb_client_new(config, &client) == ACB_STATUS_OK);
  acb_config_free(config);
  CHECK(acb_request_new(&request) == ACB_STATUS_OK);
  acb_lease *lease = NULL;
  double t0 = now_s();
  CHECK(acb_on_device_begin(client, request, &lease) == ACB_STATUS_UNAVAILABLE);
  CHECK(lease == NULL); /* outputs are written only on success */
  CHECK(now_s() - t0 < 10.0);
  char buf[256];
  size_t n = 0;
  CHECK(acb_error_message(buf, sizeof buf, &n) == ACB_STATUS_OK && strstr(buf, "3 attempts") != NULL);
  CHECK(acb_on_device_end(client) == ACB_STATUS_NOT_ACTIVE);
  acb_request_free(request);
  acb_client_free(client);
}

/* With a running assigner (ACB_ASSIGNER): a phase, misuse inside it, a refused request. */
static void real_phase(void) {
  acb_config *config = NULL;
  acb_client *client = NULL;
  acb_request *request = NULL;
  acb_lease *lease = NULL;
  CHECK(acb_config_new(&config) == ACB_STATUS_OK);
  CHECK(acb_config_set_job(config, "api-test", 8) == ACB_STATUS_OK);
  CHECK(acb_client_new(config, &client) == ACB_STATUS_OK);
  acb_config_free(config);
  CHECK(acb_request_new(&request) == ACB_STATUS_OK);
  CHECK(acb_on_device_end(client) == ACB_STATUS_NOT_ACTIVE);
  CHECK(acb_on_device_begin(client, request, &lease) == ACB_STATUS_OK);
  CHECK(lease != NULL && acb_lease_id(lease) > 0 && acb_lease_device_count(lease) == 1);
  char uuid[64];
  size_t n = 0;
  CHECK(acb_lease_device_uuid(lease, 0, uuid, sizeof uuid, &n) == ACB_STATUS_OK && strncmp(uuid, "fake-", 5) == 0);
  uint32_t index = 99;
  CHECK(acb_lease_device_index(lease, 1, &index) == ACB_STATUS_OUT_OF_RANGE && index == 99);
  acb_lease *again = NULL;
  CHECK(acb_on_device_begin(client, request, &again) == ACB_STATUS_ALREADY_ACTIVE && again == NULL);
  acb_lease_free(lease);
  CHECK(acb_on_device_end(client) == ACB_STATUS_OK);
  CHECK(acb_on_device_end(client) == ACB_STATUS_NOT_ACTIVE);
  /* Lazy release kept the GPU: the next phase reuses it. */
  CHECK(acb_on_device_begin(client, request, &lease) == ACB_STATUS_OK);
  acb_lease_free(lease);
  CHECK(acb_on_device_end(client) == ACB_STATUS_OK);
  /* More GPUs than the assigner has: refused, with the reason. */
  CHECK(acb_request_set_gpus(request, 64) == ACB_STATUS_OK);
  CHECK(acb_on_device_begin(client, request, &lease) == ACB_STATUS_REJECTED);
  char buf[256];
  CHECK(acb_error_message(buf, sizeof buf, &n) == ACB_STATUS_OK && strstr(buf, "GPU") != NULL);
  acb_request_free(request);
  acb_client_free(client);
}

int main(void) {
  nulls_and_messages();
  bad_arguments();
  unreachable_assigner();
  if (getenv("ACB_ASSIGNER") != NULL) real_phase();
  printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
