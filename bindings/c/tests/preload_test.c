/*
 * The cudaMalloc/cudaFree interposer (libacb_preload.so, run under LD_PRELOAD) on a machine
 * without a CUDA runtime: with a client set for the allocator, device allocations come from
 * libacb's swappable memory in GPU phases; without one, or for pointers that are not libacb's,
 * the real CUDA runtime would be called, and here there is none, which gives CUDA errors.
 *
 *   ACB_ASSIGNER=unix:/path.sock LD_PRELOAD=libacb_preload.so ./preload_test
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include "acb.h"

typedef int (*cuda_malloc_fn)(void **, size_t);
typedef int (*cuda_free_fn)(void *);

#include "check.h"

int main(void) {
  cuda_malloc_fn cuda_malloc;
  cuda_free_fn cuda_free;
  /* The interposer's symbols; the casts go through a union-free memcpy for -Wpedantic. */
  void *m = dlsym(RTLD_DEFAULT, "cudaMalloc");
  void *f = dlsym(RTLD_DEFAULT, "cudaFree");
  if (m == NULL || f == NULL) {
    fprintf(stderr, "preload_test: run with LD_PRELOAD=libacb_preload.so\n");
    return 2;
  }
  memcpy(&cuda_malloc, &m, sizeof m);
  memcpy(&cuda_free, &f, sizeof f);

  void *p = NULL;
  CHECK(cuda_malloc(NULL, 16) == 1);   /* cudaErrorInvalidValue */
  CHECK(!acb_allocator_has_client());
  CHECK(cuda_malloc(&p, 64) == 35);    /* no client, no CUDA runtime: cudaErrorInsufficientDriver */
  CHECK(cuda_free(NULL) == 0);

  acb_config *config = NULL;
  CHECK(acb_config_new(&config) == ACB_STATUS_OK);
  acb_client *client = NULL;
  CHECK(acb_client_new(config, &client) == ACB_STATUS_OK);
  acb_config_free(config);
  CHECK(acb_allocator_set_client(client) == ACB_STATUS_OK);
  CHECK(acb_allocator_has_client());
  CHECK(cuda_malloc(&p, 64) == 2);     /* outside a GPU phase: cudaErrorMemoryAllocation */

  acb_request *request = NULL;
  CHECK(acb_request_new(&request) == ACB_STATUS_OK);
  acb_lease *lease = NULL;
  CHECK(acb_on_device_begin(client, request, &lease) == ACB_STATUS_OK);
  p = NULL;
  CHECK(cuda_malloc(&p, 1 << 20) == 0);
  CHECK(p != NULL);
  if (p != NULL) memset(p, 0x5a, 1 << 20);
  acb_memory_stats stats;
  CHECK(acb_client_memory_stats(client, &stats) == ACB_STATUS_OK);
  CHECK(stats.allocations == 1 && stats.resident_bytes >= (1u << 20));
  CHECK(cuda_free(p) == 0);
  CHECK(acb_client_memory_stats(client, &stats) == ACB_STATUS_OK);
  CHECK(stats.allocations == 0);
  int not_ours = 0;
  CHECK(cuda_free(&not_ours) == 1);    /* not libacb's, and no CUDA runtime to pass it to */
  CHECK(acb_on_device_end(client) == ACB_STATUS_OK);

  acb_lease_free(lease);
  acb_request_free(request);
  acb_client_free(client);             /* unsets the allocator's client */
  CHECK(!acb_allocator_has_client());
  printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
