/*
 * A FAKE libcuda.so for tests: not a GPU, and not CUDA. It implements the CUDA driver API
 * calls libacb's CUDA backend makes, over host memory, and checks the rules the real driver
 * imposes on them, so that the backend's use of the API is tested where no GPU is:
 *
 *   - calls that need a context find one current on the calling thread (cuCtxPush/Pop keep a
 *     per-thread stack), and a copy's stream belongs to the current context;
 *   - VMM: cuMemCreate sizes are multiples of the granularity; cuMemMap maps a whole handle
 *     inside a reserved range, over nothing already mapped; cuMemSetAccess covers mapped
 *     memory; cuMemUnmap removes exact mappings; cuMemAddressFree frees a whole reservation
 *     with nothing mapped in it; a handle is released once;
 *   - copies are asynchronous for real: they run at cuStreamSynchronize or cuCtxSynchronize,
 *     so unmapping memory or freeing a host buffer with a copy still queued is caught;
 *   - device memory is only readable through copies (unmapped memory is PROT_NONE, mapped
 *     memory is host memory, which the tests may read to check it: that much is fake);
 *   - copies with host memory not from cuMemHostAlloc (pageable, in the real driver) work, as
 *     they do there, and are counted; FAKECUDA_PINNED_MIB bounds what cuMemHostAlloc gives.
 *
 * A broken rule is printed ("fake libcuda: rule broken: ...") and counted, and the call fails
 * as the real driver's would. Tests read the counts through fakecuda_* functions.
 * Devices: FAKECUDA_DEVICES (default 2), each with FAKECUDA_DEVICE_MIB of memory (default 4096).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

typedef int CUresult;
#define CUDA_SUCCESS 0
#define CUDA_ERROR_INVALID_VALUE 1
#define CUDA_ERROR_OUT_OF_MEMORY 2
#define CUDA_ERROR_NOT_INITIALIZED 3
#define CUDA_ERROR_INVALID_DEVICE 101
#define CUDA_ERROR_INVALID_CONTEXT 201
#define CUDA_ERROR_INVALID_HANDLE 400

typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long CUmemGenericAllocationHandle;
typedef struct {
  char bytes[16];
} CUuuid;
typedef struct {
  int type;
  int id;
} CUmemLocation;
typedef struct {
  int type;
  int requestedHandleTypes;
  CUmemLocation location;
  void *win32HandleMetaData;
  unsigned char allocFlags[8];
} CUmemAllocationProp;
typedef struct {
  CUmemLocation location;
  int flags;
} CUmemAccessDesc;

struct ctx {
  int device;
  int retained;
};
struct stream {
  struct ctx *ctx;
  int live;
};
typedef struct ctx *CUcontext;
typedef struct stream *CUstream;

#define GRANULARITY ((size_t)2 << 20)
#define MAX_DEVICES 8
#define MAX_ITEMS 4096

struct handle {
  int live, fd, device, mapped;
  size_t size;
};
struct mapping {
  int live, accessible;
  uintptr_t addr;
  size_t size;
  unsigned long long handle;
};
struct reservation {
  int live;
  uintptr_t addr;
  size_t size;
};
struct hostbuf {
  int live;
  uintptr_t addr;
  size_t size;
};
struct copy {
  int live, to_host;
  unsigned long long seq; /* queue order: a stream runs its copies in it */
  struct stream *stream;
  uintptr_t dev, host;
  size_t len;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int initialised, devices = -1;
static size_t device_bytes, used[MAX_DEVICES], pinned_limit, pinned_used;
static struct ctx contexts[MAX_DEVICES];
static struct handle handles[MAX_ITEMS];
static struct mapping mappings[MAX_ITEMS];
static struct reservation reservations[MAX_ITEMS];
static struct hostbuf hostbufs[MAX_ITEMS];
static struct copy copies[MAX_ITEMS];
static struct stream streams[MAX_ITEMS];
static long violations;
static unsigned long long copied_to_host, copied_to_device, pageable_copies, next_seq;
static __thread struct ctx *stack[64];
static __thread int depth;

static CUresult broken(CUresult r, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "fake libcuda: rule broken: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  violations++;
  return r;
}

static void setup(void) {
  if (devices >= 0) return;
  const char *d = getenv("FAKECUDA_DEVICES"), *m = getenv("FAKECUDA_DEVICE_MIB"), *h = getenv("FAKECUDA_PINNED_MIB");
  devices = d ? atoi(d) : 2;
  if (devices < 0 || devices > MAX_DEVICES) devices = 2;
  device_bytes = (size_t)(m ? atol(m) : 4096) << 20;
  pinned_limit = h ? (size_t)atol(h) << 20 : SIZE_MAX;
  for (int i = 0; i < MAX_DEVICES; i++) contexts[i].device = i;
}

static struct ctx *current(void) { return depth > 0 ? stack[depth - 1] : NULL; }

/* Under the lock: the context current on this thread, or a counted error. */
static CUresult need_context(const char *what) {
  if (!initialised) return broken(CUDA_ERROR_NOT_INITIALIZED, "%s before cuInit", what);
  struct ctx *c = current();
  if (!c) return broken(CUDA_ERROR_INVALID_CONTEXT, "%s with no current context", what);
  if (c->retained <= 0) return broken(CUDA_ERROR_INVALID_CONTEXT, "%s on a released context", what);
  return CUDA_SUCCESS;
}

static int overlaps(uintptr_t a, size_t n, uintptr_t b, size_t m) { return a < b + m && b < a + n; }

/* Runs the queued copies of stream `s` (or of every stream of context `c`), oldest first. */
static void run_copies(struct stream *s, struct ctx *c) {
  for (;;) {
    struct copy *k = NULL;
    for (int i = 0; i < MAX_ITEMS; i++) {
      struct copy *q = &copies[i];
      if (q->live && (!s || q->stream == s) && (!c || q->stream->ctx == c) && (!k || q->seq < k->seq)) k = q;
    }
    if (!k) return;
    if (k->to_host)
      memcpy((void *)k->host, (const void *)k->dev, k->len);
    else
      memcpy((void *)k->dev, (const void *)k->host, k->len);
    k->live = 0;
  }
}

CUresult cuInit(unsigned int flags) {
  pthread_mutex_lock(&lock);
  setup();
  initialised = 1;
  pthread_mutex_unlock(&lock);
  return flags == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuDeviceGetCount(int *count) {
  pthread_mutex_lock(&lock);
  CUresult r = initialised ? CUDA_SUCCESS : broken(CUDA_ERROR_NOT_INITIALIZED, "cuDeviceGetCount before cuInit");
  if (r == CUDA_SUCCESS) *count = devices;
  pthread_mutex_unlock(&lock);
  return r;
}

/* Under the lock: whether `dev` is a device, once the driver is initialised. */
static CUresult valid_device(const char *what, int dev) {
  if (!initialised) return broken(CUDA_ERROR_NOT_INITIALIZED, "%s before cuInit", what);
  return dev < 0 || dev >= devices ? CUDA_ERROR_INVALID_DEVICE : CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice *dev, int ordinal) {
  pthread_mutex_lock(&lock);
  CUresult r = valid_device("cuDeviceGet", ordinal);
  if (r == CUDA_SUCCESS) *dev = ordinal;
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev) {
  pthread_mutex_lock(&lock);
  CUresult r = valid_device("cuDeviceGetUuid", dev);
  pthread_mutex_unlock(&lock);
  if (r != CUDA_SUCCESS) return r;
  memset(uuid->bytes, 0, 16);
  memcpy(uuid->bytes, "fakecuda", 8);
  uuid->bytes[15] = (char)dev;
  return CUDA_SUCCESS;
}

CUresult cuDevicePrimaryCtxRetain(CUcontext *out, CUdevice dev) {
  pthread_mutex_lock(&lock);
  CUresult r = valid_device("cuDevicePrimaryCtxRetain", dev);
  if (r == CUDA_SUCCESS) {
    contexts[dev].retained++;
    *out = &contexts[dev];
  }
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
  pthread_mutex_lock(&lock);
  CUresult r = valid_device("cuDevicePrimaryCtxRelease", dev);
  if (r == CUDA_SUCCESS && contexts[dev].retained <= 0)
    r = broken(CUDA_ERROR_INVALID_CONTEXT, "cuDevicePrimaryCtxRelease of a context not retained");
  if (r == CUDA_SUCCESS) contexts[dev].retained--;
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuCtxPushCurrent_v2(CUcontext c) {
  if (!c || depth == 64) return broken(CUDA_ERROR_INVALID_VALUE, "cuCtxPushCurrent of NULL or too deep");
  stack[depth++] = c;
  return CUDA_SUCCESS;
}

CUresult cuCtxPopCurrent_v2(CUcontext *out) {
  if (depth == 0) return broken(CUDA_ERROR_INVALID_CONTEXT, "cuCtxPopCurrent with no context pushed");
  struct ctx *c = stack[--depth];
  if (out) *out = c;
  return CUDA_SUCCESS;
}

CUresult cuCtxGetCurrent(CUcontext *out) {
  *out = current();
  return CUDA_SUCCESS;
}

CUresult cuCtxSynchronize(void) {
  pthread_mutex_lock(&lock);
  CUresult r = need_context("cuCtxSynchronize");
  if (r == CUDA_SUCCESS) run_copies(NULL, current());
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuStreamCreate(CUstream *out, unsigned int flags) {
  (void)flags;
  pthread_mutex_lock(&lock);
  CUresult r = need_context("cuStreamCreate");
  if (r == CUDA_SUCCESS) {
    r = CUDA_ERROR_OUT_OF_MEMORY;
    for (int i = 0; i < MAX_ITEMS; i++)
      if (!streams[i].live) {
        streams[i] = (struct stream){current(), 1};
        *out = &streams[i];
        r = CUDA_SUCCESS;
        break;
      }
  }
  pthread_mutex_unlock(&lock);
  return r;
}

static CUresult live_stream(struct stream *s, const char *what) {
  if (!s || s < streams || s >= streams + MAX_ITEMS || !s->live)
    return broken(CUDA_ERROR_INVALID_HANDLE, "%s on a stream that is not live", what);
  return CUDA_SUCCESS;
}

CUresult cuStreamDestroy_v2(CUstream s) {
  pthread_mutex_lock(&lock);
  CUresult r = live_stream(s, "cuStreamDestroy");
  if (r == CUDA_SUCCESS) {
    run_copies(s, NULL); /* the driver finishes a destroyed stream's work */
    s->live = 0;
  }
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuStreamSynchronize(CUstream s) {
  pthread_mutex_lock(&lock);
  CUresult r = live_stream(s, "cuStreamSynchronize");
  if (r == CUDA_SUCCESS) run_copies(s, NULL);
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuMemGetAllocationGranularity(size_t *g, const CUmemAllocationProp *prop, int option) {
  (void)option;
  if (!initialised) return broken(CUDA_ERROR_NOT_INITIALIZED, "cuMemGetAllocationGranularity before cuInit");
  if (prop->location.id < 0 || prop->location.id >= devices) return CUDA_ERROR_INVALID_DEVICE;
  *g = GRANULARITY;
  return CUDA_SUCCESS;
}

CUresult cuMemAddressReserve(CUdeviceptr *out, size_t size, size_t align, CUdeviceptr addr, unsigned long long flags) {
  (void)align, (void)addr, (void)flags;
  pthread_mutex_lock(&lock);
  CUresult r = CUDA_SUCCESS;
  if (!initialised)
    r = broken(CUDA_ERROR_NOT_INITIALIZED, "cuMemAddressReserve before cuInit");
  else if (size == 0 || size % GRANULARITY)
    r = broken(CUDA_ERROR_INVALID_VALUE, "cuMemAddressReserve of %zu bytes (not a multiple of the granularity)", size);
  if (r == CUDA_SUCCESS) {
    /* Aligned to the granularity, as the driver's are (mmap alone aligns to pages). */
    char *raw = mmap(NULL, size + GRANULARITY, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    void *p = MAP_FAILED;
    if (raw != MAP_FAILED) {
      uintptr_t start = ((uintptr_t)raw + GRANULARITY - 1) & ~(uintptr_t)(GRANULARITY - 1);
      size_t head = start - (uintptr_t)raw;
      if (head) munmap(raw, head);
      if (GRANULARITY - head) munmap((void *)(start + size), GRANULARITY - head);
      p = (void *)start;
    }
    r = CUDA_ERROR_OUT_OF_MEMORY;
    for (int i = 0; p != MAP_FAILED && i < MAX_ITEMS; i++)
      if (!reservations[i].live) {
        reservations[i] = (struct reservation){1, (uintptr_t)p, size};
        *out = (CUdeviceptr)(uintptr_t)p;
        r = CUDA_SUCCESS;
        break;
      }
  }
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuMemAddressFree(CUdeviceptr ptr, size_t size) {
  pthread_mutex_lock(&lock);
  struct reservation *v = NULL;
  for (int i = 0; i < MAX_ITEMS; i++)
    if (reservations[i].live && reservations[i].addr == ptr && reservations[i].size == size) v = &reservations[i];
  CUresult r = CUDA_SUCCESS;
  if (!v) r = broken(CUDA_ERROR_INVALID_VALUE, "cuMemAddressFree of %#llx+%zu, not a reservation", ptr, size);
  for (int j = 0; r == CUDA_SUCCESS && j < MAX_ITEMS; j++)
    if (mappings[j].live && overlaps(mappings[j].addr, mappings[j].size, v->addr, v->size))
      r = broken(CUDA_ERROR_INVALID_VALUE, "cuMemAddressFree of a range with memory still mapped");
  if (r == CUDA_SUCCESS) {
    munmap((void *)v->addr, v->size);
    v->live = 0;
  }
  pthread_mutex_unlock(&lock);
  return r;
}

static void drop_handle_if_done(struct handle *h) {
  if (h->live == 2 && h->mapped == 0) { /* released, and no longer mapped */
    close(h->fd);
    used[h->device] -= h->size;
    h->live = 0;
  }
}

CUresult cuMemCreate(CUmemGenericAllocationHandle *out, size_t size, const CUmemAllocationProp *prop,
                     unsigned long long flags) {
  (void)flags;
  pthread_mutex_lock(&lock);
  CUresult r = CUDA_SUCCESS;
  int dev = prop->location.id;
  if (!initialised)
    r = broken(CUDA_ERROR_NOT_INITIALIZED, "cuMemCreate before cuInit");
  else if (dev < 0 || dev >= devices)
    r = CUDA_ERROR_INVALID_DEVICE;
  else if (size == 0 || size % GRANULARITY)
    r = broken(CUDA_ERROR_INVALID_VALUE, "cuMemCreate of %zu bytes (not a multiple of the granularity)", size);
  else if (used[dev] + size > device_bytes)
    r = CUDA_ERROR_OUT_OF_MEMORY;
  if (r == CUDA_SUCCESS) {
    r = CUDA_ERROR_OUT_OF_MEMORY;
    int fd = memfd_create("fakecuda", 0);
    if (fd >= 0 && ftruncate(fd, (off_t)size) == 0) {
      for (int i = 1; i < MAX_ITEMS; i++) /* handle 0 is never handed out */
        if (!handles[i].live) {
          handles[i] = (struct handle){1, fd, dev, 0, size};
          used[dev] += size;
          *out = (CUmemGenericAllocationHandle)i;
          r = CUDA_SUCCESS;
          break;
        }
    }
    if (r != CUDA_SUCCESS && fd >= 0) close(fd);
  }
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuMemRelease(CUmemGenericAllocationHandle handle) {
  pthread_mutex_lock(&lock);
  CUresult r = CUDA_SUCCESS;
  if (handle == 0 || handle >= MAX_ITEMS || handles[handle].live != 1)
    r = broken(CUDA_ERROR_INVALID_VALUE, "cuMemRelease of handle %llu, not live (released twice?)", handle);
  else {
    handles[handle].live = 2;
    drop_handle_if_done(&handles[handle]);
  }
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuMemMap(CUdeviceptr ptr, size_t size, size_t offset, CUmemGenericAllocationHandle handle,
                  unsigned long long flags) {
  (void)flags;
  pthread_mutex_lock(&lock);
  CUresult r = CUDA_SUCCESS;
  struct handle *h = handle > 0 && handle < MAX_ITEMS ? &handles[handle] : NULL;
  int inside = 0;
  for (int i = 0; i < MAX_ITEMS; i++)
    if (reservations[i].live && ptr >= reservations[i].addr &&
        ptr + size <= reservations[i].addr + reservations[i].size)
      inside = 1;
  if (!h || h->live != 1)
    r = broken(CUDA_ERROR_INVALID_HANDLE, "cuMemMap of handle %llu, not live", handle);
  else if (offset != 0 || size != h->size)
    r = broken(CUDA_ERROR_INVALID_VALUE, "cuMemMap of %zu bytes at offset %zu of a %zu-byte handle", size, offset, h->size);
  else if (ptr % GRANULARITY || !inside)
    r = broken(CUDA_ERROR_INVALID_VALUE, "cuMemMap at %#llx: unaligned or outside every reservation", ptr);
  for (int i = 0; r == CUDA_SUCCESS && i < MAX_ITEMS; i++)
    if (mappings[i].live && overlaps(mappings[i].addr, mappings[i].size, ptr, size))
      r = broken(CUDA_ERROR_INVALID_VALUE, "cuMemMap at %#llx over memory already mapped", ptr);
  if (r == CUDA_SUCCESS) {
    void *p = mmap((void *)(uintptr_t)ptr, size, PROT_NONE, MAP_SHARED | MAP_FIXED, h->fd, 0);
    r = CUDA_ERROR_OUT_OF_MEMORY;
    for (int i = 0; p != MAP_FAILED && i < MAX_ITEMS; i++)
      if (!mappings[i].live) {
        mappings[i] = (struct mapping){1, 0, (uintptr_t)ptr, size, handle};
        h->mapped++;
        r = CUDA_SUCCESS;
        break;
      }
  }
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuMemSetAccess(CUdeviceptr ptr, size_t size, const CUmemAccessDesc *desc, size_t count) {
  pthread_mutex_lock(&lock);
  CUresult r = CUDA_SUCCESS;
  size_t covered = 0;
  for (int i = 0; i < MAX_ITEMS; i++)
    if (mappings[i].live && mappings[i].addr >= ptr && mappings[i].addr + mappings[i].size <= ptr + size)
      covered += mappings[i].size;
  if (count != 1 || desc->location.id < 0 || desc->location.id >= devices)
    r = broken(CUDA_ERROR_INVALID_VALUE, "cuMemSetAccess with a bad descriptor");
  else if (covered != size)
    r = broken(CUDA_ERROR_INVALID_VALUE, "cuMemSetAccess on %#llx+%zu, not all of it mapped", ptr, size);
  if (r == CUDA_SUCCESS) {
    mprotect((void *)(uintptr_t)ptr, size, PROT_READ | PROT_WRITE);
    for (int i = 0; i < MAX_ITEMS; i++)
      if (mappings[i].live && mappings[i].addr >= ptr && mappings[i].addr + mappings[i].size <= ptr + size)
        mappings[i].accessible = 1;
  }
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuMemUnmap(CUdeviceptr ptr, size_t size) {
  pthread_mutex_lock(&lock);
  CUresult r = CUDA_SUCCESS;
  size_t covered = 0;
  for (int i = 0; i < MAX_ITEMS; i++)
    if (mappings[i].live && overlaps(mappings[i].addr, mappings[i].size, ptr, size)) {
      if (mappings[i].addr < ptr || mappings[i].addr + mappings[i].size > ptr + size)
        r = broken(CUDA_ERROR_INVALID_VALUE, "cuMemUnmap of part of a mapping");
      covered += mappings[i].size;
    }
  if (r == CUDA_SUCCESS && covered != size)
    r = broken(CUDA_ERROR_INVALID_VALUE, "cuMemUnmap of %#llx+%zu, not all of it mapped", ptr, size);
  for (int i = 0; r == CUDA_SUCCESS && i < MAX_ITEMS; i++)
    if (copies[i].live && overlaps(copies[i].dev, copies[i].len, ptr, size))
      r = broken(CUDA_ERROR_INVALID_VALUE, "cuMemUnmap of memory a queued copy still uses (no sync?)");
  if (r == CUDA_SUCCESS) {
    mmap((void *)(uintptr_t)ptr, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    for (int i = 0; i < MAX_ITEMS; i++)
      if (mappings[i].live && overlaps(mappings[i].addr, mappings[i].size, ptr, size)) {
        struct handle *h = &handles[mappings[i].handle];
        mappings[i].live = 0;
        h->mapped--;
        drop_handle_if_done(h);
      }
  }
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuMemHostAlloc(void **out, size_t size, unsigned int flags) {
  (void)flags;
  pthread_mutex_lock(&lock);
  CUresult r = need_context("cuMemHostAlloc");
  if (r == CUDA_SUCCESS && size > pinned_limit - pinned_used) r = CUDA_ERROR_OUT_OF_MEMORY;
  if (r == CUDA_SUCCESS) {
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    r = CUDA_ERROR_OUT_OF_MEMORY;
    for (int i = 0; p != MAP_FAILED && i < MAX_ITEMS; i++)
      if (!hostbufs[i].live) {
        hostbufs[i] = (struct hostbuf){1, (uintptr_t)p, size};
        pinned_used += size;
        *out = p;
        r = CUDA_SUCCESS;
        break;
      }
  }
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuMemFreeHost(void *p) {
  pthread_mutex_lock(&lock);
  struct hostbuf *b = NULL;
  for (int i = 0; i < MAX_ITEMS; i++)
    if (hostbufs[i].live && hostbufs[i].addr == (uintptr_t)p) b = &hostbufs[i];
  CUresult r = CUDA_SUCCESS;
  if (!b) r = broken(CUDA_ERROR_INVALID_VALUE, "cuMemFreeHost of %p, not from cuMemHostAlloc", p);
  for (int j = 0; r == CUDA_SUCCESS && j < MAX_ITEMS; j++)
    if (copies[j].live && overlaps(copies[j].host, copies[j].len, b->addr, b->size))
      r = broken(CUDA_ERROR_INVALID_VALUE, "cuMemFreeHost of a buffer a queued copy still uses");
  if (r == CUDA_SUCCESS) {
    munmap(p, b->size);
    pinned_used -= b->size;
    b->live = 0;
  }
  pthread_mutex_unlock(&lock);
  return r;
}

static CUresult queue_copy(int to_host, uintptr_t dev, uintptr_t host, size_t len, struct stream *s) {
  const char *what = to_host ? "cuMemcpyDtoHAsync" : "cuMemcpyHtoDAsync";
  pthread_mutex_lock(&lock);
  CUresult r = need_context(what);
  if (r == CUDA_SUCCESS) r = live_stream(s, what);
  if (r == CUDA_SUCCESS && s->ctx != current())
    r = broken(CUDA_ERROR_INVALID_HANDLE, "%s on a stream of another context", what);
  if (r == CUDA_SUCCESS && len == 0) { /* nothing to copy: the driver accepts it */
    pthread_mutex_unlock(&lock);
    return r;
  }
  size_t covered = 0;
  int device = -1;
  for (int i = 0; r == CUDA_SUCCESS && i < MAX_ITEMS; i++)
    if (mappings[i].live && mappings[i].accessible && overlaps(mappings[i].addr, mappings[i].size, dev, len)) {
      uintptr_t lo = mappings[i].addr > dev ? mappings[i].addr : dev;
      uintptr_t hi = mappings[i].addr + mappings[i].size < dev + len ? mappings[i].addr + mappings[i].size : dev + len;
      covered += hi - lo;
      device = handles[mappings[i].handle].device;
    }
  if (r == CUDA_SUCCESS && covered != len)
    r = broken(CUDA_ERROR_INVALID_VALUE, "%s of %#lx+%zu: device memory not all mapped", what, (unsigned long)dev, len);
  if (r == CUDA_SUCCESS && device != s->ctx->device)
    r = broken(CUDA_ERROR_INVALID_VALUE, "%s on device %d's stream of memory on device %d", what, s->ctx->device, device);
  int pinned = 0;
  for (int i = 0; r == CUDA_SUCCESS && i < MAX_ITEMS; i++)
    if (hostbufs[i].live && host >= hostbufs[i].addr && host + len <= hostbufs[i].addr + hostbufs[i].size) pinned = 1;
  if (r == CUDA_SUCCESS && !pinned) pageable_copies++;
  if (r == CUDA_SUCCESS) {
    r = CUDA_ERROR_OUT_OF_MEMORY;
    for (int i = 0; i < MAX_ITEMS; i++)
      if (!copies[i].live) {
        copies[i] = (struct copy){1, to_host, next_seq++, s, dev, host, len};
        if (to_host)
          copied_to_host += len;
        else
          copied_to_device += len;
        r = CUDA_SUCCESS;
        break;
      }
  }
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t n, CUstream s) {
  return queue_copy(1, (uintptr_t)src, (uintptr_t)dst, n, s);
}

CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t n, CUstream s) {
  return queue_copy(0, (uintptr_t)dst, (uintptr_t)src, n, s);
}

/* ---- for tests: what the fake driver holds, and the rules broken ---- */

struct fakecuda_counts {
  long violations, handles, mappings, reservations, host_buffers, queued_copies, retained_contexts, streams;
  unsigned long long copied_to_host, copied_to_device, pageable_copies;
};

void fakecuda_counts(struct fakecuda_counts *out) {
  pthread_mutex_lock(&lock);
  memset(out, 0, sizeof *out);
  out->violations = violations;
  for (int i = 0; i < MAX_ITEMS; i++) {
    out->handles += handles[i].live != 0;
    out->mappings += mappings[i].live;
    out->reservations += reservations[i].live;
    out->host_buffers += hostbufs[i].live;
    out->queued_copies += copies[i].live;
    out->streams += streams[i].live;
  }
  for (int i = 0; i < MAX_DEVICES; i++) out->retained_contexts += contexts[i].retained;
  out->copied_to_host = copied_to_host;
  out->copied_to_device = copied_to_device;
  out->pageable_copies = pageable_copies;
  pthread_mutex_unlock(&lock);
}

/* The device whose memory is mapped at `addr`, or -1 if none is. */
int fakecuda_device_of(unsigned long long addr) {
  pthread_mutex_lock(&lock);
  int d = -1;
  for (int i = 0; i < MAX_ITEMS; i++)
    if (mappings[i].live && addr >= mappings[i].addr && addr < mappings[i].addr + mappings[i].size)
      d = handles[mappings[i].handle].device;
  pthread_mutex_unlock(&lock);
  return d;
}
