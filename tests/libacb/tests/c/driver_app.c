/*
 * A CUDA program written against the DRIVER API only (no acb, no CUDA headers: the few types
 * and prototypes it needs are below), alternating GPU phases and CPU phases, as a training job
 * does. At test time it runs over the fake libcuda (tests/fake_cuda/libcuda.c), whose module
 * "fakecuda-kernels" has the kernels add_u32, mul_add_u32 and copy_u32; with an interposer
 * (LD_PRELOAD) in between, it is the program the interposer must serve unchanged.
 *
 *   driver_app [--procaddress] [--ctx-create] PHASES N_ELEMS CPU_MS OUT_FILE
 *
 * cuInit, device 0, a context (the primary one, retained and made current; or cuCtxCreate with
 * --ctx-create), the module and its functions, two cuMemAlloc buffers of N_ELEMS u32, the first
 * loaded with i*2654435761. Then PHASES times a GPU phase (kernels on the NULL stream: add_u32
 * with phase+1, mul_add_u32 with 3 and phase, copy_u32 into the second buffer, add_u32 of 7
 * there, a cuMemcpyDtoD of half of it back, an event recorded; a cuMemcpyDtoH of the first
 * elements, checked against the same computation done on the host), and a CPU phase of CPU_MS
 * milliseconds (nanosleep, no CUDA call). Last, the whole first buffer is copied back, checked,
 * written raw to OUT_FILE, and "driver_app: done phases=P checksum=0x..." (FNV-1a 64 of it)
 * printed. Exit 0; 1 when a driver call fails ("driver_app: <call> failed: <code>"); 2 for a bad
 * command line; 3 when the GPU's results are not the host's.
 *
 * With --procaddress every driver function after cuInit is found through cuGetProcAddress
 * (cuGetProcAddress_v2 where the driver has it, itself found with dlopen/dlsym), the way the
 * CUDA runtime finds them: the program then calls none of them by name.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long cuuint64_t;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;

CUresult cuInit(unsigned int flags);
CUresult cuDriverGetVersion(int *version);
CUresult cuDeviceGet(CUdevice *dev, int ordinal);
CUresult cuDeviceGetName(char *name, int len, CUdevice dev);
CUresult cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice dev);
CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev);
CUresult cuCtxSetCurrent(CUcontext ctx);
CUresult cuCtxCreate_v2(CUcontext *ctx, unsigned int flags, CUdevice dev);
CUresult cuCtxDestroy_v2(CUcontext ctx);
CUresult cuCtxSynchronize(void);
CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total);
CUresult cuModuleLoadData(CUmodule *module, const void *image);
CUresult cuModuleUnload(CUmodule module);
CUresult cuModuleGetFunction(CUfunction *f, CUmodule module, const char *name);
CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t size);
CUresult cuMemFree_v2(CUdeviceptr p);
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t n);
CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t n);
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n);
CUresult cuMemsetD32_v2(CUdeviceptr dst, unsigned int value, size_t n);
CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, CUstream s, void **params, void **extra);
CUresult cuEventCreate(CUevent *e, unsigned int flags);
CUresult cuEventDestroy_v2(CUevent e);
CUresult cuEventRecord(CUevent e, CUstream s);
CUresult cuEventSynchronize(CUevent e);

/* The driver functions used after cuInit: linked, or from cuGetProcAddress. */
static struct {
  CUresult (*DriverGetVersion)(int *);
  CUresult (*DeviceGet)(CUdevice *, int);
  CUresult (*DeviceGetName)(char *, int, CUdevice);
  CUresult (*DevicePrimaryCtxRetain)(CUcontext *, CUdevice);
  CUresult (*DevicePrimaryCtxRelease)(CUdevice);
  CUresult (*CtxSetCurrent)(CUcontext);
  CUresult (*CtxCreate)(CUcontext *, unsigned int, CUdevice);
  CUresult (*CtxDestroy)(CUcontext);
  CUresult (*CtxSynchronize)(void);
  CUresult (*MemGetInfo)(size_t *, size_t *);
  CUresult (*ModuleLoadData)(CUmodule *, const void *);
  CUresult (*ModuleUnload)(CUmodule);
  CUresult (*ModuleGetFunction)(CUfunction *, CUmodule, const char *);
  CUresult (*MemAlloc)(CUdeviceptr *, size_t);
  CUresult (*MemFree)(CUdeviceptr);
  CUresult (*MemcpyHtoD)(CUdeviceptr, const void *, size_t);
  CUresult (*MemcpyDtoH)(void *, CUdeviceptr, size_t);
  CUresult (*MemcpyDtoD)(CUdeviceptr, CUdeviceptr, size_t);
  CUresult (*MemsetD32)(CUdeviceptr, unsigned int, size_t);
  CUresult (*LaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, CUstream,
                           void **, void **);
  CUresult (*EventCreate)(CUevent *, unsigned int);
  CUresult (*EventDestroy)(CUevent);
  CUresult (*EventRecord)(CUevent, CUstream);
  CUresult (*EventSynchronize)(CUevent);
} api;

static void check(const char *call, CUresult r) {
  if (r != 0) {
    fprintf(stderr, "driver_app: %s failed: %d\n", call, r);
    exit(1);
  }
}

#define CHECK(call, ...) check(call, api.__VA_ARGS__)

typedef CUresult (*get_proc_v1)(const char *, void **, int, cuuint64_t);
typedef CUresult (*get_proc_v2)(const char *, void **, int, cuuint64_t, int *);
static get_proc_v1 gpa1;
static get_proc_v2 gpa2;

/* One function from cuGetProcAddress, by its base name, as CUDA 12.8's runtime asks. */
static void *proc(const char *name) {
  void *p = NULL;
  int status = -1;
  CUresult r = gpa2 ? gpa2(name, &p, 12080, 0, &status) : gpa1(name, &p, 12080, 0);
  if (r != 0 || !p) {
    fprintf(stderr, "driver_app: cuGetProcAddress(%s) failed: %d (status %d)\n", name, r ? r : 500, status);
    exit(1);
  }
  return p;
}

#define GET(field, name)                                                                                               \
  do {                                                                                                                 \
    void *p_ = proc(name);                                                                                             \
    memcpy(&api.field, &p_, sizeof p_);                                                                                \
  } while (0)

static void find_through_get_proc_address(void) {
  void *lib = dlopen("libcuda.so.1", RTLD_NOW);
  if (!lib) lib = dlopen("libcuda.so", RTLD_NOW);
  void *p2 = lib ? dlsym(lib, "cuGetProcAddress_v2") : NULL, *p1 = lib ? dlsym(lib, "cuGetProcAddress") : NULL;
  if (!p1 && !p2) {
    fprintf(stderr, "driver_app: cuGetProcAddress not found: %s\n", lib ? "not in libcuda" : dlerror());
    exit(1);
  }
  memcpy(&gpa1, &p1, sizeof p1);
  memcpy(&gpa2, &p2, sizeof p2);
  GET(DriverGetVersion, "cuDriverGetVersion");
  GET(DeviceGet, "cuDeviceGet");
  GET(DeviceGetName, "cuDeviceGetName");
  GET(DevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain");
  GET(DevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease");
  GET(CtxSetCurrent, "cuCtxSetCurrent");
  GET(CtxCreate, "cuCtxCreate");
  GET(CtxDestroy, "cuCtxDestroy");
  GET(CtxSynchronize, "cuCtxSynchronize");
  GET(MemGetInfo, "cuMemGetInfo");
  GET(ModuleLoadData, "cuModuleLoadData");
  GET(ModuleUnload, "cuModuleUnload");
  GET(ModuleGetFunction, "cuModuleGetFunction");
  GET(MemAlloc, "cuMemAlloc");
  GET(MemFree, "cuMemFree");
  GET(MemcpyHtoD, "cuMemcpyHtoD");
  GET(MemcpyDtoH, "cuMemcpyDtoH");
  GET(MemcpyDtoD, "cuMemcpyDtoD");
  GET(MemsetD32, "cuMemsetD32");
  GET(LaunchKernel, "cuLaunchKernel");
  GET(EventCreate, "cuEventCreate");
  GET(EventDestroy, "cuEventDestroy");
  GET(EventRecord, "cuEventRecord");
  GET(EventSynchronize, "cuEventSynchronize");
}

static void use_linked_functions(void) {
  api.DriverGetVersion = cuDriverGetVersion;
  api.DeviceGet = cuDeviceGet;
  api.DeviceGetName = cuDeviceGetName;
  api.DevicePrimaryCtxRetain = cuDevicePrimaryCtxRetain;
  api.DevicePrimaryCtxRelease = cuDevicePrimaryCtxRelease_v2;
  api.CtxSetCurrent = cuCtxSetCurrent;
  api.CtxCreate = cuCtxCreate_v2;
  api.CtxDestroy = cuCtxDestroy_v2;
  api.CtxSynchronize = cuCtxSynchronize;
  api.MemGetInfo = cuMemGetInfo_v2;
  api.ModuleLoadData = cuModuleLoadData;
  api.ModuleUnload = cuModuleUnload;
  api.ModuleGetFunction = cuModuleGetFunction;
  api.MemAlloc = cuMemAlloc_v2;
  api.MemFree = cuMemFree_v2;
  api.MemcpyHtoD = cuMemcpyHtoD_v2;
  api.MemcpyDtoH = cuMemcpyDtoH_v2;
  api.MemcpyDtoD = cuMemcpyDtoD_v2;
  api.MemsetD32 = cuMemsetD32_v2;
  api.LaunchKernel = cuLaunchKernel;
  api.EventCreate = cuEventCreate;
  api.EventDestroy = cuEventDestroy_v2;
  api.EventRecord = cuEventRecord;
  api.EventSynchronize = cuEventSynchronize;
}

/* A kernel over n elements, on the NULL stream, its arguments through kernelParams. */
static void launch(const char *what, CUfunction f, unsigned n, void **params) {
  char call[64];
  snprintf(call, sizeof call, "cuLaunchKernel(%s)", what);
  CHECK(call, LaunchKernel(f, (n + 255) / 256, 1, 1, 256, 1, 1, 0, NULL, params, NULL));
}

/* The host's own copy of the computation: what the GPU's buffers must hold. */
static void model_phase(uint32_t *a, uint32_t *b, unsigned n, unsigned phase) {
  for (unsigned i = 0; i < n; i++) {
    a[i] = (a[i] + phase + 1) * 3u + phase;
    b[i] = a[i] + 7u;
  }
  memcpy(a, b, (size_t)(n / 2) * 4);
}

static void compare(const char *what, const uint32_t *got, const uint32_t *want, unsigned n) {
  for (unsigned i = 0; i < n; i++)
    if (got[i] != want[i]) {
      fprintf(stderr, "driver_app: %s: element %u is %#x, expected %#x\n", what, i, got[i], want[i]);
      exit(3);
    }
}

static void usage(void) {
  fprintf(stderr, "usage: driver_app [--procaddress] [--ctx-create] PHASES N_ELEMS CPU_MS OUT_FILE\n");
  exit(2);
}

int main(int argc, char **argv) {
  int procaddress = 0, ctx_create = 0, i = 1;
  for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++)
    if (strcmp(argv[i], "--procaddress") == 0)
      procaddress = 1;
    else if (strcmp(argv[i], "--ctx-create") == 0)
      ctx_create = 1;
    else
      usage();
  if (argc - i != 4) usage();
  char *end;
  long phases = strtol(argv[i], &end, 10);
  long n_long = *end ? -1 : strtol(argv[i + 1], &end, 10);
  long cpu_ms = *end ? -1 : strtol(argv[i + 2], &end, 10);
  const char *out_file = argv[i + 3];
  if (*end || phases < 0 || n_long < 1 || n_long > (1L << 28) || cpu_ms < 0) usage();
  unsigned n = (unsigned)n_long;
  size_t bytes = (size_t)n * 4;

  check("cuInit", cuInit(0));
  if (procaddress)
    find_through_get_proc_address();
  else
    use_linked_functions();

  int version = 0;
  CUdevice dev;
  char name[128];
  size_t free_bytes = 0, total = 0;
  CUcontext ctx;
  CHECK("cuDriverGetVersion", DriverGetVersion(&version));
  CHECK("cuDeviceGet", DeviceGet(&dev, 0));
  CHECK("cuDeviceGetName", DeviceGetName(name, (int)sizeof name, dev));
  if (ctx_create) {
    CHECK("cuCtxCreate", CtxCreate(&ctx, 0, dev));
  } else {
    CHECK("cuDevicePrimaryCtxRetain", DevicePrimaryCtxRetain(&ctx, dev));
    CHECK("cuCtxSetCurrent", CtxSetCurrent(ctx));
  }
  CHECK("cuMemGetInfo", MemGetInfo(&free_bytes, &total));
  CUmodule module;
  CUfunction add, mul_add, copy;
  CHECK("cuModuleLoadData", ModuleLoadData(&module, "fakecuda-kernels"));
  CHECK("cuModuleGetFunction(add_u32)", ModuleGetFunction(&add, module, "add_u32"));
  CHECK("cuModuleGetFunction(mul_add_u32)", ModuleGetFunction(&mul_add, module, "mul_add_u32"));
  CHECK("cuModuleGetFunction(copy_u32)", ModuleGetFunction(&copy, module, "copy_u32"));

  CUdeviceptr buf, buf2;
  CHECK("cuMemAlloc", MemAlloc(&buf, bytes));
  CHECK("cuMemAlloc", MemAlloc(&buf2, bytes));
  uint32_t *host = malloc(bytes), *model = malloc(bytes), *model2 = malloc(bytes);
  if (!host || !model || !model2) {
    fprintf(stderr, "driver_app: out of host memory\n");
    return 1;
  }
  for (unsigned k = 0; k < n; k++) model[k] = k * 2654435761u;
  CHECK("cuMemcpyHtoD", MemcpyHtoD(buf, model, bytes));
  CHECK("cuMemsetD32", MemsetD32(buf2, 0, n));
  CUevent done;
  CHECK("cuEventCreate", EventCreate(&done, 0));

  unsigned region = n < 256 ? n : 256;
  struct timespec cpu = {cpu_ms / 1000, (cpu_ms % 1000) * 1000000L};
  for (long phase = 0; phase < phases; phase++) {
    unsigned value = (unsigned)phase + 1, mul = 3, add_value = (unsigned)phase, seven = 7;
    void *add_args[] = {&buf, &n, &value};
    void *mul_add_args[] = {&buf, &n, &mul, &add_value};
    void *copy_args[] = {&buf2, &buf, &n};
    void *add7_args[] = {&buf2, &n, &seven};
    launch("add_u32", add, n, add_args);
    launch("mul_add_u32", mul_add, n, mul_add_args);
    launch("copy_u32", copy, n, copy_args);
    launch("add_u32", add, n, add7_args);
    CHECK("cuMemcpyDtoD", MemcpyDtoD(buf, buf2, (size_t)(n / 2) * 4));
    CHECK("cuEventRecord", EventRecord(done, NULL));
    CHECK("cuMemcpyDtoH", MemcpyDtoH(host, buf, (size_t)region * 4));
    CHECK("cuEventSynchronize", EventSynchronize(done));
    model_phase(model, model2, n, (unsigned)phase);
    compare("after a GPU phase", host, model, region);
    nanosleep(&cpu, NULL); /* the CPU phase: no CUDA call */
  }

  CHECK("cuMemcpyDtoH", MemcpyDtoH(host, buf, bytes));
  CHECK("cuCtxSynchronize", CtxSynchronize());
  compare("at the end", host, model, n);
  FILE *f = fopen(out_file, "wb");
  if (!f || fwrite(host, 1, bytes, f) != bytes || fclose(f) != 0) {
    fprintf(stderr, "driver_app: writing %s failed\n", out_file);
    return 1;
  }
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t k = 0; k < bytes; k++) h = (h ^ ((const unsigned char *)host)[k]) * 0x100000001b3ull;

  CHECK("cuEventDestroy", EventDestroy(done));
  CHECK("cuMemFree", MemFree(buf));
  CHECK("cuMemFree", MemFree(buf2));
  CHECK("cuModuleUnload", ModuleUnload(module));
  if (ctx_create)
    CHECK("cuCtxDestroy", CtxDestroy(ctx));
  else
    CHECK("cuDevicePrimaryCtxRelease", DevicePrimaryCtxRelease(dev));
  free(host), free(model), free(model2);
  printf("driver_app: done phases=%ld checksum=0x%016llx\n", phases, (unsigned long long)h);
  return 0;
}
