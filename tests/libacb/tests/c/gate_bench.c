/*
 * The cost of one gated CUDA driver call, for the interposer benchmark
 * (tests/libacb/examples/interposer_bench.rs). Written against the DRIVER API only (no acb, no
 * CUDA headers: the few types and prototypes it needs are below), like driver_app.c, so that the
 * same program runs alone, under libacb_preload.so in automatic mode, and under it with
 * automatic mode off.
 *
 *   gate_bench [N] [ELEMS]
 *
 * cuInit, device 0, its primary context (retained and made current), one cuMemAlloc'd buffer of
 * 4 KiB. Then a warm-up (the first gated call is there: in automatic mode it begins the GPU
 * phase), and N (default 2000000) calls of cuMemsetD32_v2 on the buffer, ELEMS elements each
 * (default 0), timed together with clock_gettime(CLOCK_MONOTONIC). cuMemsetD32_v2 is one of the
 * functions the interposer gates; with 0 elements the fake libcuda's memset is its cheapest
 * gated call (its lock, the context and stream checks, nothing queued or run), so that the
 * interposer's part of the time is as large a share of it as it can be. Then N calls of
 * cuCtxGetCurrent, which the interposer does not wrap, as a reference. Prints
 *
 *   gate_bench: N calls, X.X ns/call
 *   gate_bench: reference cuCtxGetCurrent X.X ns/call
 *
 * Exit 0; 1 when a driver call fails ("gate_bench: <call> failed: <code>"); 2 for a bad command
 * line.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;

CUresult cuInit(unsigned int flags);
CUresult cuDeviceGet(CUdevice *dev, int ordinal);
CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice dev);
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev);
CUresult cuCtxSetCurrent(CUcontext ctx);
CUresult cuCtxGetCurrent(CUcontext *ctx);
CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t size);
CUresult cuMemFree_v2(CUdeviceptr p);
CUresult cuMemsetD32_v2(CUdeviceptr dst, unsigned int value, size_t n);

#define CHECK(call)                                                   \
  do {                                                                \
    CUresult r_ = (call);                                             \
    if (r_ != 0) {                                                    \
      fprintf(stderr, "gate_bench: %s failed: %d\n", #call, (int)r_); \
      exit(1);                                                        \
    }                                                                 \
  } while (0)

#define BUFFER_BYTES 4096
#define WARMUP 20000

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static long arg(int argc, char **argv, int i, long dflt, long lo, long hi) {
  if (argc <= i) return dflt;
  char *end = NULL;
  long v = strtol(argv[i], &end, 10);
  if (!*argv[i] || *end || v < lo || v > hi) {
    fprintf(stderr, "usage: gate_bench [N] [ELEMS]  (N >= 1; 0 <= ELEMS <= %d)\n", BUFFER_BYTES / 4);
    exit(2);
  }
  return v;
}

int main(int argc, char **argv) {
  if (argc > 3) {
    fprintf(stderr, "usage: gate_bench [N] [ELEMS]\n");
    return 2;
  }
  long n = arg(argc, argv, 1, 2000000, 1, 1000000000L);
  size_t elems = (size_t)arg(argc, argv, 2, 0, 0, BUFFER_BYTES / 4);

  CUdevice dev;
  CUcontext ctx, cur = NULL;
  CUdeviceptr buf;
  CHECK(cuInit(0));
  CHECK(cuDeviceGet(&dev, 0));
  CHECK(cuDevicePrimaryCtxRetain(&ctx, dev));
  CHECK(cuCtxSetCurrent(ctx));
  CHECK(cuMemAlloc_v2(&buf, BUFFER_BYTES));

  /* Warm-up: the first gated call (automatic mode: the phase begins here), caches, branch
   * predictors, the lazy symbol bindings of both paths. */
  CHECK(cuMemsetD32_v2(buf, 0, BUFFER_BYTES / 4));
  for (long i = 0; i < WARMUP; i++) {
    CHECK(cuMemsetD32_v2(buf, (unsigned)i, elems));
    CHECK(cuCtxGetCurrent(&cur));
  }
  if (cur != ctx) {
    fprintf(stderr, "gate_bench: cuCtxGetCurrent gave %p, not the primary context %p\n", (void *)cur, (void *)ctx);
    return 1;
  }

  double t0 = now_ns();
  for (long i = 0; i < n; i++) CHECK(cuMemsetD32_v2(buf, (unsigned)i, elems));
  double gated = (now_ns() - t0) / (double)n;

  t0 = now_ns();
  for (long i = 0; i < n; i++) CHECK(cuCtxGetCurrent(&cur));
  double reference = (now_ns() - t0) / (double)n;

  CHECK(cuMemFree_v2(buf));
  CHECK(cuDevicePrimaryCtxRelease_v2(dev));
  printf("gate_bench: %ld calls, %.1f ns/call\n", n, gated);
  printf("gate_bench: reference cuCtxGetCurrent %.1f ns/call\n", reference);
  return 0;
}
