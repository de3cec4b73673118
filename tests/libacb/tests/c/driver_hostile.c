/*
 * Hostile CUDA driver-API program for tests/interposer_hostile.rs. Not linked with libcuda: it
 * dlopen()s libcuda.so.1 RTLD_LOCAL and dlsym()s every function, as some frameworks do.
 * Built with -DSHIM it is instead a tiny LD_PRELOAD library that wraps cuLaunchKernel and
 * forwards with dlsym(RTLD_NEXT), counting calls in shim_launches.
 *
 *   driver_hostile MODE [ARGS]   (idle waits use IDLE_WAIT_MS from the environment, default 100)
 * Exit 0 and "hostile: ok" on success; 1 when a call fails; 3 on wrong results; 4 on a usage error.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
typedef void *H;

#ifdef SHIM
long shim_launches;
CUresult cuLaunchKernel(H f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned sh, H s, void **p, void **e) {
  typedef CUresult (*fn_t)(H, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, H, void **, void **);
  void *n = dlsym(RTLD_NEXT, "cuLaunchKernel");
  fn_t fn;
  memcpy(&fn, &n, sizeof n);
  __atomic_add_fetch(&shim_launches, 1, __ATOMIC_SEQ_CST);
  if (!fn) return 500;
  return fn(f, gx, gy, gz, bx, by, bz, sh, s, p, e);
}
#else

static void *lib;
static void *sym(const char *name) {
  void *p = dlsym(lib, name);
  if (!p) {
    fprintf(stderr, "hostile: dlsym(%s) failed\n", name);
    exit(1);
  }
  return p;
}

typedef CUresult (*init_t)(unsigned);
typedef CUresult (*devget_t)(int *, int);
typedef CUresult (*retain_t)(H *, int);
typedef CUresult (*ctx1_t)(H);
typedef CUresult (*ctxcreate_t)(H *, unsigned, int);
typedef CUresult (*void_t)(void);
typedef CUresult (*modload_t)(H *, const void *);
typedef CUresult (*getfn_t)(H *, H, const char *);
typedef CUresult (*alloc_t)(CUdeviceptr *, size_t);
typedef CUresult (*free_t)(CUdeviceptr);
typedef CUresult (*freeasync_t)(CUdeviceptr, H);
typedef CUresult (*htod_t)(CUdeviceptr, const void *, size_t);
typedef CUresult (*dtoh_t)(void *, CUdeviceptr, size_t);
typedef CUresult (*memset_t)(CUdeviceptr, unsigned, size_t);
typedef CUresult (*launch_t)(H, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, H, void **,
                             void **);
typedef CUresult (*streamcreate_t)(H *, unsigned);
typedef CUresult (*h1_t)(H);
typedef CUresult (*evrec_t)(H, H);
typedef CUresult (*evcreate_t)(H *, unsigned);

#define FN(type, name) ((type)sym(#name))

static void ck(const char *what, CUresult r) {
  if (r != 0) {
    fprintf(stderr, "hostile: %s failed: %d\n", what, r);
    exit(1);
  }
}

static H ctx, add_fn;
static void load_module(void) {
  H mod;
  ck("cuModuleLoadData", FN(modload_t, cuModuleLoadData)(&mod, "fakecuda-kernels"));
  ck("cuModuleGetFunction", FN(getfn_t, cuModuleGetFunction)(&add_fn, mod, "add_u32"));
}
static long idle_wait_ms = 100;
static unsigned N = 4096;

static void msleep(long ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&t, NULL);
}

static void setup(int create) {
  lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    fprintf(stderr, "hostile: dlopen: %s\n", dlerror());
    exit(1);
  }
  const char *w = getenv("IDLE_WAIT_MS");
  if (w) idle_wait_ms = atol(w);
  ck("cuInit", FN(init_t, cuInit)(0));
  int dev;
  ck("cuDeviceGet", FN(devget_t, cuDeviceGet)(&dev, 0));
  if (create)
    ck("cuCtxCreate", FN(ctxcreate_t, cuCtxCreate_v2)(&ctx, 0, dev));
  else {
    ck("cuDevicePrimaryCtxRetain", FN(retain_t, cuDevicePrimaryCtxRetain)(&ctx, dev));
    ck("cuCtxSetCurrent", FN(ctx1_t, cuCtxSetCurrent)(ctx));
  }
  load_module();
}

static CUdeviceptr alloc_init(uint32_t seed) {
  CUdeviceptr p;
  ck("cuMemAlloc", FN(alloc_t, cuMemAlloc_v2)(&p, (size_t)N * 4));
  uint32_t *h = malloc((size_t)N * 4);
  for (unsigned i = 0; i < N; i++) h[i] = i * 2654435761u + seed;
  ck("cuMemcpyHtoD", FN(htod_t, cuMemcpyHtoD_v2)(p, h, (size_t)N * 4));
  free(h);
  return p;
}

static void add(CUdeviceptr p, unsigned v, H stream) {
  void *args[] = {&p, &N, &v};
  ck("cuLaunchKernel", FN(launch_t, cuLaunchKernel)(add_fn, (N + 255) / 256, 1, 1, 256, 1, 1, 0, stream, args, NULL));
}

static void expect(CUdeviceptr p, uint32_t seed, uint32_t added) {
  uint32_t *h = malloc((size_t)N * 4);
  ck("cuMemcpyDtoH", FN(dtoh_t, cuMemcpyDtoH_v2)(h, p, (size_t)N * 4));
  for (unsigned i = 0; i < N; i++)
    if (h[i] != i * 2654435761u + seed + added) {
      fprintf(stderr, "hostile: element %u of %#llx is %#x, expected %#x\n", i, p, h[i], i * 2654435761u + seed + added);
      exit(3);
    }
  free(h);
}

/* Many threads, each its own stream and buffer, launching while the idle thread releases. */
static int iters = 40;
static CUdeviceptr bufs[16];
static void *worker(void *arg) {
  long t = (long)arg;
  ck("cuCtxSetCurrent", FN(ctx1_t, cuCtxSetCurrent)(ctx));
  H s;
  ck("cuStreamCreate", FN(streamcreate_t, cuStreamCreate)(&s, 0));
  unsigned r = (unsigned)t * 7919u + 1;
  for (int i = 0; i < iters; i++) {
    add(bufs[t], (unsigned)t + 1, s);
    r = r * 1103515245u + 12345u;
    if (r % 3 == 0) ck("cuStreamSynchronize", FN(h1_t, cuStreamSynchronize)(s));
    msleep((long)(r >> 16) % 6);
  }
  ck("cuStreamSynchronize", FN(h1_t, cuStreamSynchronize)(s));
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 2) return 4;
  const char *mode = argv[1];
  setbuf(stdout, NULL);
  if (!strcmp(mode, "threads")) {
    int threads = argc > 2 ? atoi(argv[2]) : 8;
    if (argc > 3) iters = atoi(argv[3]);
    if (threads < 1 || threads > 16) return 4;
    setup(0);
    for (int t = 0; t < threads; t++) bufs[t] = alloc_init((uint32_t)t);
    pthread_t th[16];
    for (long t = 0; t < threads; t++) pthread_create(&th[t], NULL, worker, (void *)t);
    for (int t = 0; t < threads; t++) pthread_join(th[t], NULL);
    for (int t = 0; t < threads; t++) expect(bufs[t], (uint32_t)t, (uint32_t)((t + 1) * iters));
  } else if (!strcmp(mode, "syncwait")) {
    /* a long kernel; the thread waits in cuStreamSynchronize / cuEventSynchronize meanwhile */
    setup(0);
    CUdeviceptr p = alloc_init(1);
    add(p, 5, NULL);
    ck("cuStreamSynchronize", FN(h1_t, cuStreamSynchronize)(NULL));
    add(p, 6, NULL);
    H ev;
    ck("cuEventCreate", FN(evcreate_t, cuEventCreate)(&ev, 0));
    ck("cuEventRecord", FN(evrec_t, cuEventRecord)(ev, NULL));
    ck("cuEventSynchronize", FN(h1_t, cuEventSynchronize)(ev));
    expect(p, 1, 11);
  } else if (!strcmp(mode, "free-queued")) {
    setup(0);
    CUdeviceptr a = alloc_init(1), b = alloc_init(2), c = alloc_init(3);
    add(a, 1, NULL);
    ck("cuMemFree(a) with a kernel queued", FN(free_t, cuMemFree_v2)(a));
    H s;
    ck("cuStreamCreate", FN(streamcreate_t, cuStreamCreate)(&s, 0));
    add(b, 1, s);
    /* the fake has no stream-ordered allocation: the interposer's own cuMemFreeAsync */
    void *fa = dlsym(RTLD_DEFAULT, "cuMemFreeAsync");
    freeasync_t free_async;
    memcpy(&free_async, &fa, sizeof fa);
    if (!free_async) return 6;
    ck("cuMemFreeAsync(b) with a kernel queued", free_async(b, s));
    add(c, 2, NULL);
    msleep(idle_wait_ms);
    expect(c, 3, 2);
    ck("cuMemFree(c) after a release", FN(free_t, cuMemFree_v2)(c));
  } else if (!strcmp(mode, "second-ctx")) {
    /* memory from the phase's first context; work queued from a second one, then idle time */
    setup(1);
    CUdeviceptr p = alloc_init(1);
    int dev;
    ck("cuDeviceGet", FN(devget_t, cuDeviceGet)(&dev, 0));
    H ctx2;
    ck("cuCtxCreate(second)", FN(ctxcreate_t, cuCtxCreate_v2)(&ctx2, 0, dev));
    load_module();
    add(p, 9, NULL);
    msleep(idle_wait_ms); /* the program's own CPU work: the GPU may go back now */
    ck("cuCtxSynchronize(second)", FN(void_t, cuCtxSynchronize)());
    expect(p, 1, 9);
  } else if (!strcmp(mode, "destroy-ctx")) {
    /* a created context used, then destroyed; the process goes on with another one */
    setup(1);
    CUdeviceptr p = alloc_init(1);
    add(p, 2, NULL);
    expect(p, 1, 2);
    ck("cuMemFree", FN(free_t, cuMemFree_v2)(p));
    ck("cuCtxDestroy", FN(h1_t, cuCtxDestroy_v2)(ctx));
    int dev;
    ck("cuDeviceGet", FN(devget_t, cuDeviceGet)(&dev, 0));
    ck("cuDevicePrimaryCtxRetain", FN(retain_t, cuDevicePrimaryCtxRetain)(&ctx, dev));
    ck("cuCtxSetCurrent", FN(ctx1_t, cuCtxSetCurrent)(ctx));
    load_module();
    msleep(idle_wait_ms); /* a release happens here, with the first context gone */
    CUdeviceptr q = alloc_init(4);
    add(q, 3, NULL);
    expect(q, 4, 3);
  } else if (!strcmp(mode, "fork")) {
    /* argv[2]: "exit" (child exits at once), "cuda" (child makes a gated call after the release) */
    setup(0);
    CUdeviceptr p = alloc_init(1);
    add(p, 1, NULL);
    expect(p, 1, 1);
    msleep(idle_wait_ms);
    pid_t pid = fork();
    if (pid == 0) {
      alarm(8);
      if (argc > 2 && !strcmp(argv[2], "cuda")) {
        CUresult r = FN(memset_t, cuMemsetD32_v2)(p, 0, N);
        printf("hostile: child memset: %d\n", r);
      }
      exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    printf("hostile: child %s %d\n", WIFEXITED(st) ? "exited" : "killed by", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
    add(p, 2, NULL);
    expect(p, 1, 3);
  } else if (!strcmp(mode, "hold")) {
    /* argv[2] = "exit": exits mid-phase; else sleeps (to be killed) */
    setup(0);
    CUdeviceptr p = alloc_init(1);
    add(p, 1, NULL);
    expect(p, 1, 1);
    printf("hostile: holding\n");
    if (argc > 2 && !strcmp(argv[2], "exit")) exit(0);
    msleep(30000);
  } else if (!strcmp(mode, "huge")) {
    setup(0);
    CUdeviceptr h = 0;
    CUresult r = FN(alloc_t, cuMemAlloc_v2)(&h, (size_t)1 << 40);
    printf("hostile: 1 TiB: %d\n", r);
    if (r == 0) return 5;
    r = FN(alloc_t, cuMemAlloc_v2)(&h, SIZE_MAX);
    printf("hostile: SIZE_MAX: %d\n", r);
    if (r == 0) return 5;
    CUdeviceptr p = alloc_init(1);
    add(p, 1, NULL);
    expect(p, 1, 1);
  } else if (!strcmp(mode, "ptds")) {
    /* a per-thread-default-stream program (nvcc --default-stream per-thread): cuMemsetD32 is
     * cuMemsetD32_v2_ptds; cuMemsetD32Async is cuMemsetD32Async_ptsz */
    setup(0);
    CUdeviceptr p = alloc_init(1);
    msleep(idle_wait_ms); /* released: the memory is out */
    ck("cuMemsetD32_v2_ptds after a release", FN(memset_t, cuMemsetD32_v2_ptds)(p, 7, N));
    uint32_t *h = malloc((size_t)N * 4);
    ck("cuMemcpyDtoH_v2_ptds", FN(dtoh_t, cuMemcpyDtoH_v2_ptds)(h, p, (size_t)N * 4));
    for (unsigned i = 0; i < N; i++)
      if (h[i] != 7) return 3;
    msleep(idle_wait_ms);
    typedef CUresult (*msa_t)(CUdeviceptr, unsigned, size_t, H);
    ck("cuMemsetD32Async_ptsz after a release", FN(msa_t, cuMemsetD32Async_ptsz)(p, 9, N, NULL));
    ck("cuStreamSynchronize_ptsz", FN(h1_t, cuStreamSynchronize_ptsz)(NULL));
    ck("cuMemcpyDtoH_v2_ptds", FN(dtoh_t, cuMemcpyDtoH_v2_ptds)(h, p, (size_t)N * 4));
    for (unsigned i = 0; i < N; i++)
      if (h[i] != 9) return 3;
    free(h);
  } else if (!strcmp(mode, "phases")) {
    /* argv[2] phases with IDLE_WAIT_MS of CPU time between them */
    int phases = argc > 2 ? atoi(argv[2]) : 3;
    setup(0);
    CUdeviceptr p = alloc_init(1);
    for (int i = 0; i < phases; i++) {
      add(p, 1, NULL);
      expect(p, 1, (uint32_t)i + 1);
      printf("hostile: phase %d\n", i);
      msleep(idle_wait_ms);
    }
  } else if (!strcmp(mode, "shim")) {
    /* launches through dlsym(RTLD_DEFAULT) must reach an earlier-preloaded shim */
    setup(0);
    CUdeviceptr p = alloc_init(1);
    void *l = dlsym(RTLD_DEFAULT, "cuLaunchKernel");
    launch_t launch;
    memcpy(&launch, &l, sizeof l);
    unsigned v = 4;
    void *args[] = {&p, &N, &v};
    ck("cuLaunchKernel (RTLD_DEFAULT)", launch(add_fn, (N + 255) / 256, 1, 1, 256, 1, 1, 0, NULL, args, NULL));
    expect(p, 1, 4);
    long *count = dlsym(RTLD_DEFAULT, "shim_launches");
    printf("hostile: shim launches %ld\n", count ? *count : -1);
  } else {
    return 4;
  }
  printf("hostile: ok\n");
  return 0;
}
#endif
