/*
 * A FAKE libcuda.so for tests: not a GPU, and not CUDA. It implements, over host memory, the
 * CUDA driver API calls that libacb's CUDA backend makes and those a small CUDA program makes
 * (tests/c/driver_app.c), and checks the rules the real driver imposes on them, so that what
 * sits between a program and the driver (libacb's backend, the LD_PRELOAD interposer) is tested
 * where no GPU is:
 *
 *   - calls that need a context find one current on the calling thread (cuCtxPush/Pop/Set keep
 *     a per-thread stack); primary contexts (retained, released) and created ones
 *     (cuCtxCreate/Destroy: destroying one finishes its work, frees its memory, modules,
 *     streams and events, and pops it if current); a stream belongs to the current context;
 *   - VMM: cuMemCreate sizes are multiples of the granularity; cuMemMap maps a whole handle
 *     inside a reserved range, over nothing already mapped; cuMemSetAccess covers mapped
 *     memory; cuMemUnmap removes exact mappings, and not under queued work that uses them;
 *     cuMemAddressFree frees a whole reservation with nothing mapped in it; a handle is
 *     released once;
 *   - plain allocations: cuMemAlloc/cuMemFree (host memory, counted against the device's;
 *     cuMemFree waits for all queued work first, as the real one does); cuMemGetInfo;
 *   - device memory is used through the driver only: copies, memsets and kernels. Every range
 *     they touch must be device memory that is mapped AND accessible (VMM mapped + access set,
 *     or from cuMemAlloc) and on the device of the stream's context: checked when a copy or
 *     memset is queued (a broken rule, CUDA_ERROR_INVALID_VALUE) and again when any work RUNS
 *     (a broken rule: the work does not touch memory, and CUDA_ERROR_ILLEGAL_ADDRESS, or
 *     MISALIGNED_ADDRESS for a kernel's unaligned buffer, is returned once by the next call
 *     that synchronises with it; the real driver's error would stick to the context). Unmapped
 *     memory is PROT_NONE; mapped memory is host memory the tests may read to check it (that
 *     much is fake);
 *   - work is asynchronous for real. Copies, memsets, kernel launches, host functions, event
 *     records and stream waits are queued on their stream and run, in order, only when
 *     something synchronises: cuStreamSynchronize, cuCtxSynchronize, cuEventSynchronize,
 *     cuStreamDestroy, cuMemFree, a synchronous copy or memset (cuMemcpyHtoD etc.: they go on
 *     the legacy default stream and run at once), or a query (cuStreamQuery/cuEventQuery run
 *     what is due and answer CUDA_ERROR_NOT_READY for what is not). So unmapping memory or
 *     freeing a host buffer with work still queued is caught. Streams: the NULL stream (or
 *     CU_STREAM_LEGACY) is the context's legacy default stream, which waits for all earlier
 *     work of the context's blocking streams, as they wait for its; CU_STREAM_NON_BLOCKING
 *     streams do not; the per-thread default stream (the _ptsz/_ptds entry points with a NULL
 *     stream, or CU_STREAM_PER_THREAD) is one blocking stream per thread and context.
 *     cuStreamWaitEvent makes the waiting stream run the event's stream's work up to the
 *     record first. Host functions (cuLaunchHostFunc) run on the synchronising thread, without
 *     the fake's lock; one that calls the driver breaks a rule (CUDA_ERROR_NOT_PERMITTED);
 *   - modules and kernels that run a HOST function on the buffers: cuModuleLoadData(Ex)
 *     accepts the image "fakecuda-kernels" only (else CUDA_ERROR_INVALID_IMAGE), whose
 *     functions are add_u32(buf, n, v): buf[i] += v; mul_add_u32(buf, n, mul, add):
 *     buf[i] = buf[i]*mul + add; copy_u32(dst, src, n); fill_u32(buf, n, v): buf[i] = v (buf, dst,
 *     src: CUdeviceptr; n, v, mul, add: unsigned int; unknown names: CUDA_ERROR_NOT_FOUND).
 *     The grid is checked (no zero dimension, at most 1024 threads a block) but a kernel does
 *     all n elements whatever it is. Arguments come through kernelParams (each points to its
 *     argument, as CUDA's) or extra (CU_LAUNCH_PARAM_BUFFER_POINTER/SIZE/END), and are copied
 *     at the launch. FAKECUDA_LAUNCH_DELAY_US (default 0): each kernel takes that long on its
 *     stream (wall time from its start; the synchronising call sleeps what remains), so that
 *     tests can have kernels in flight;
 *   - events: create, destroy, record, synchronize, query (no timing: no cuEventElapsedTime);
 *   - cuGetProcAddress (and _v2) as the real driver's: a BASE name ("cuMemAlloc"), the CUDA
 *     version picking the versioned entry (cuMemAlloc_v2 from 3020...), and with flags &
 *     CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM the _ptsz/_ptds one where there is one.
 *     It hands out the fake's OWN entry points: the library is linked with -Bsymbolic, so an
 *     LD_PRELOAD library exporting the same names does not change what it returns (which is
 *     why an interposer must hook cuGetProcAddress). It knows every cu* function this file
 *     exports (tests check it);
 *   - copies with host memory not from cuMemHostAlloc (pageable, in the real driver) work, as
 *     they do there, and are counted; FAKECUDA_PINNED_MIB bounds what cuMemHostAlloc gives.
 *
 * Not there: graphs (cuGraphLaunch exists and answers CUDA_ERROR_INVALID_HANDLE for any graph
 * exec, NULL included, since no graph can be made), cuLibrary*, cuLaunchKernelEx, 2D/3D copies,
 * stream-ordered allocation, event timing, peer access (all the memory a piece of work uses is
 * on its stream's device), device attributes, real PTX/cubin images, the older (_v1) ABIs.
 *
 * A broken rule is printed ("fake libcuda: rule broken: ...") and counted, and the call fails
 * as the real driver's would. Tests read the counts through fakecuda_* functions; with
 * FAKECUDA_REPORT=1 the process prints "fake libcuda: N rule(s) broken, M launch(es) run" at
 * exit. Devices: FAKECUDA_DEVICES (default 2), each with FAKECUDA_DEVICE_MIB of memory
 * (default 4096). Build: gcc -shared -fPIC -Wl,-Bsymbolic -Wl,-soname,libcuda.so.1 (see
 * tests/libacb/tests/common/mod.rs, build_fake_cuda).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

typedef int CUresult;
#define CUDA_SUCCESS 0
#define CUDA_ERROR_INVALID_VALUE 1
#define CUDA_ERROR_OUT_OF_MEMORY 2
#define CUDA_ERROR_NOT_INITIALIZED 3
#define CUDA_ERROR_INVALID_DEVICE 101
#define CUDA_ERROR_INVALID_IMAGE 200
#define CUDA_ERROR_INVALID_CONTEXT 201
#define CUDA_ERROR_INVALID_HANDLE 400
#define CUDA_ERROR_NOT_FOUND 500
#define CUDA_ERROR_NOT_READY 600
#define CUDA_ERROR_ILLEGAL_ADDRESS 700
#define CUDA_ERROR_MISALIGNED_ADDRESS 716
#define CUDA_ERROR_NOT_PERMITTED 800

typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long CUmemGenericAllocationHandle;
typedef unsigned long long cuuint64_t;
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

enum { STREAM_BLOCKING, STREAM_NON_BLOCKING, STREAM_LEGACY, STREAM_PER_THREAD };
#define CU_STREAM_NON_BLOCKING 1
#define CU_STREAM_LEGACY_HANDLE ((struct stream *)0x1)
#define CU_STREAM_PER_THREAD_HANDLE ((struct stream *)0x2)
#define CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM 2

struct ctx;
struct stream {
  struct ctx *ctx;
  int live, kind;
  pthread_t thread;                /* a per-thread default stream's thread */
  unsigned long long need;         /* while the queue runs: its work older than this is needed */
  unsigned long long busy_until;   /* when its last queued kernel is done (ns, monotonic) */
};
struct ctx {
  int device;
  int retained;                    /* primary: how many retains; created: 1 while it lives */
  int created;
  CUresult error;                  /* for the next synchronising call */
  struct stream legacy;            /* the NULL stream */
  unsigned long long need_legacy;  /* while the queue runs: legacy work older than this needed */
  unsigned long long need_blocking;
};
typedef struct ctx *CUcontext;
typedef struct stream *CUstream;

#define GRANULARITY ((size_t)2 << 20)
#define MAX_DEVICES 8
#define MAX_ITEMS 4096
#define MAX_CONTEXTS 64
#define MAX_MODULES 256
#define MAX_PER_THREAD 256

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
struct alloc { /* cuMemAlloc */
  int live, device;
  struct ctx *ctx;
  uintptr_t addr;
  size_t size, mapped_size;
};

/* The fake's kernels: name, and argument kinds ('p' a CUdeviceptr, 'u' an unsigned int). */
enum { K_ADD, K_MUL_ADD, K_COPY, K_FILL, N_KERNELS };
static const struct {
  const char *name, *sig;
} kernels[N_KERNELS] = {{"add_u32", "puu"}, {"mul_add_u32", "puuu"}, {"copy_u32", "ppu"}, {"fill_u32", "puu"}};

struct module;
struct function {
  struct module *module;
  int kernel;
};
struct module {
  int live;
  struct ctx *ctx;
  struct function functions[N_KERNELS];
};
typedef struct module *CUmodule;
typedef struct function *CUfunction;

struct event {
  int live, pending; /* pending: recorded, and the record has not run */
  unsigned gen;
  struct ctx *ctx;
  struct stream *stream;
  unsigned long long seq; /* the record's */
};
typedef struct event *CUevent;
typedef void *CUgraphExec;
typedef void (*CUhostFn)(void *);

enum { OP_HTOD, OP_DTOH, OP_DTOD, OP_HTOH, OP_MEMSET, OP_KERNEL, OP_HOSTFN, OP_RECORD, OP_WAIT };
struct op { /* queued work */
  int live, kind, claimed, needed;
  pthread_t owner;        /* the thread running it, once claimed */
  unsigned long long seq; /* queue order: a stream runs its work in it */
  struct stream *stream;
  unsigned long long ready_at;
  uintptr_t dst, src;     /* copies; memsets and kernels: dst */
  size_t len;             /* bytes (copies, memsets) */
  unsigned value, width;  /* memsets: value, its width in bytes */
  int kernel;             /* kernels */
  unsigned long long args[4];
  CUhostFn fn;            /* host functions */
  void *data;
  struct event *event;    /* records */
  unsigned gen;
  struct stream *wait_stream; /* waits: that stream's work up to wait_seq first */
  unsigned long long wait_seq;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work_done = PTHREAD_COND_INITIALIZER;
static int initialised, devices = -1;
static size_t device_bytes, used[MAX_DEVICES], pinned_limit, pinned_used;
static unsigned long long launch_delay_ns;
static struct ctx contexts[MAX_DEVICES];      /* primary contexts */
static struct ctx created[MAX_CONTEXTS];      /* cuCtxCreate */
static int next_created;
static struct handle handles[MAX_ITEMS];
static struct mapping mappings[MAX_ITEMS];
static struct reservation reservations[MAX_ITEMS];
static struct hostbuf hostbufs[MAX_ITEMS];
static struct alloc allocs[MAX_ITEMS];
static struct op ops[MAX_ITEMS];
static struct stream streams[MAX_ITEMS];
static struct stream per_thread[MAX_PER_THREAD];
static struct module modules[MAX_MODULES];
static struct event events[MAX_ITEMS];
static long violations;
static unsigned long long copied_to_host, copied_to_device, pageable_copies, next_seq, launches;
static __thread struct ctx *stack[64];
static __thread int depth, in_host_fn;

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

static void init_ctx(struct ctx *c, int device) {
  *c = (struct ctx){.device = device};
  c->legacy = (struct stream){.ctx = c, .live = 1, .kind = STREAM_LEGACY};
}

static void setup(void) {
  if (devices >= 0) return;
  const char *d = getenv("FAKECUDA_DEVICES"), *m = getenv("FAKECUDA_DEVICE_MIB"), *h = getenv("FAKECUDA_PINNED_MIB");
  const char *delay = getenv("FAKECUDA_LAUNCH_DELAY_US");
  devices = d ? atoi(d) : 2;
  if (devices < 0 || devices > MAX_DEVICES) devices = 2;
  device_bytes = (size_t)(m ? atol(m) : 4096) << 20;
  pinned_limit = h ? (size_t)atol(h) << 20 : SIZE_MAX;
  launch_delay_ns = delay ? strtoull(delay, NULL, 10) * 1000 : 0;
  for (int i = 0; i < MAX_DEVICES; i++) init_ctx(&contexts[i], i);
}

static unsigned long long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (unsigned long long)t.tv_sec * 1000000000ull + (unsigned long long)t.tv_nsec;
}

static struct ctx *current(void) { return depth > 0 ? stack[depth - 1] : NULL; }

/* Whether `c` is a context this driver made (live or not). */
static int is_context(const struct ctx *c) {
  return (c >= contexts && c < contexts + MAX_DEVICES) || (c >= created && c < created + MAX_CONTEXTS);
}

/* Under the lock: the context current on this thread, or a counted error. */
static CUresult need_context(const char *what) {
  if (in_host_fn) return broken(CUDA_ERROR_NOT_PERMITTED, "%s from a host function (cuLaunchHostFunc)", what);
  if (!initialised) return broken(CUDA_ERROR_NOT_INITIALIZED, "%s before cuInit", what);
  struct ctx *c = current();
  if (!c) return broken(CUDA_ERROR_INVALID_CONTEXT, "%s with no current context", what);
  if (c->retained <= 0) return broken(CUDA_ERROR_INVALID_CONTEXT, "%s on a released context", what);
  return CUDA_SUCCESS;
}

static int overlaps(uintptr_t a, size_t n, uintptr_t b, size_t m) { return a < b + m && b < a + n; }

/* Whether `len` bytes at `addr` are device memory work may use (mapped and accessible, or
 * cuMemAlloc'd): 0 if so and all on `device`, 1 if not all of it is usable, 2 if some of it is
 * on another device (*other). */
static int device_range(uintptr_t addr, size_t len, int device, int *other) {
  if (len == 0) return 0;
  size_t covered = 0;
  int wrong = 0;
  for (int i = 0; i < MAX_ITEMS; i++) {
    uintptr_t a = 0;
    size_t n = 0;
    int d = -1;
    if (mappings[i].live && mappings[i].accessible)
      a = mappings[i].addr, n = mappings[i].size, d = handles[mappings[i].handle].device;
    else if (allocs[i].live)
      a = allocs[i].addr, n = allocs[i].size, d = allocs[i].device;
    else
      continue;
    if (!overlaps(a, n, addr, len)) continue;
    uintptr_t lo = a > addr ? a : addr, hi = a + n < addr + len ? a + n : addr + len;
    covered += hi - lo;
    if (d != device) wrong = 1, *other = d;
  }
  if (covered != len) return 1;
  return wrong ? 2 : 0;
}

/* Whether `addr` is in the device's address space (reserved, or cuMemAlloc'd). */
static int is_device_address(uintptr_t addr) {
  for (int i = 0; i < MAX_ITEMS; i++)
    if ((reservations[i].live && addr >= reservations[i].addr && addr < reservations[i].addr + reservations[i].size) ||
        (allocs[i].live && addr >= allocs[i].addr && addr < allocs[i].addr + allocs[i].size))
      return 1;
  return 0;
}

/* The device memory a piece of work touches: up to two ranges; returns how many. */
static int device_ranges(const struct op *o, uintptr_t a[2], size_t n[2]) {
  switch (o->kind) {
  case OP_HTOD: case OP_MEMSET: a[0] = o->dst, n[0] = o->len; return 1;
  case OP_DTOH: a[0] = o->src, n[0] = o->len; return 1;
  case OP_DTOD: a[0] = o->dst, n[0] = o->len, a[1] = o->src, n[1] = o->len; return 2;
  case OP_KERNEL:
    switch (o->kernel) {
    case K_COPY: a[0] = o->args[0], a[1] = o->args[1], n[0] = n[1] = (size_t)o->args[2] * 4; return 2;
    default: a[0] = o->args[0], n[0] = (size_t)o->args[1] * 4; return 1;
    }
  default: return 0;
  }
}

/* The host memory a piece of work touches, if any. */
static int host_range(const struct op *o, uintptr_t *a, size_t *n) {
  if (o->kind == OP_HTOD) return *a = o->src, *n = o->len, 1;
  if (o->kind == OP_DTOH) return *a = o->dst, *n = o->len, 1;
  return 0;
}

static int uses_device(const struct op *o, uintptr_t addr, size_t size) {
  uintptr_t a[2];
  size_t n[2];
  int k = device_ranges(o, a, n);
  for (int i = 0; i < k; i++)
    if (n[i] && overlaps(a[i], n[i], addr, size)) return 1;
  return 0;
}

static const char *op_name(const struct op *o) {
  static const char *names[] = {"a host-to-device copy", "a device-to-host copy", "a device-to-device copy",
                                "a host-to-host copy", "a memset", "a kernel", "a host function", "an event record",
                                "a stream wait"};
  return o->kind == OP_KERNEL ? kernels[o->kernel].name : names[o->kind];
}

/* Under the lock: a piece of work runs (the memory it touches checked again first). */
static void execute(struct op *o) {
  struct ctx *c = o->stream->ctx;
  uintptr_t a[2];
  size_t n[2];
  int k = device_ranges(o, a, n), other = -1;
  CUresult bad = CUDA_SUCCESS;
  for (int i = 0; i < k && bad == CUDA_SUCCESS; i++) {
    if (o->kind == OP_KERNEL && a[i] % 4)
      bad = broken(CUDA_ERROR_MISALIGNED_ADDRESS, "%s ran on %#lx: not aligned to 4 bytes", op_name(o), (unsigned long)a[i]);
    else if (device_range(a[i], n[i], c->device, &other) == 1)
      bad = broken(CUDA_ERROR_ILLEGAL_ADDRESS, "%s ran on %#lx+%zu: device memory not all mapped and accessible", op_name(o),
                   (unsigned long)a[i], n[i]);
    else if (device_range(a[i], n[i], c->device, &other) == 2)
      bad = broken(CUDA_ERROR_ILLEGAL_ADDRESS, "%s ran on device %d's stream on memory of device %d", op_name(o), c->device,
                   other);
  }
  if (bad != CUDA_SUCCESS) {
    if (c->error == CUDA_SUCCESS) c->error = bad;
    return;
  }
  switch (o->kind) {
  case OP_HTOD: case OP_DTOH: case OP_DTOD: case OP_HTOH: memmove((void *)o->dst, (const void *)o->src, o->len); break;
  case OP_MEMSET:
    for (size_t i = 0; i < o->len; i += o->width)
      if (o->width == 1)
        *(uint8_t *)(o->dst + i) = (uint8_t)o->value;
      else if (o->width == 2)
        *(uint16_t *)(o->dst + i) = (uint16_t)o->value;
      else
        *(uint32_t *)(o->dst + i) = o->value;
    break;
  case OP_KERNEL: {
    uint32_t *buf = (uint32_t *)(uintptr_t)o->args[0];
    const unsigned long long *p = o->args;
    switch (o->kernel) {
    case K_ADD: for (size_t i = 0; i < p[1]; i++) buf[i] += (uint32_t)p[2]; break;
    case K_MUL_ADD: for (size_t i = 0; i < p[1]; i++) buf[i] = buf[i] * (uint32_t)p[2] + (uint32_t)p[3]; break;
    case K_COPY: memmove(buf, (const void *)(uintptr_t)p[1], (size_t)p[2] * 4); break;
    case K_FILL: for (size_t i = 0; i < p[1]; i++) buf[i] = (uint32_t)p[2]; break;
    }
    launches++;
    break;
  }
  case OP_RECORD:
    if (o->event->live && o->event->gen == o->gen && o->event->seq == o->seq) o->event->pending = 0;
    break;
  default: break;
  }
}

static int cmp_seq_desc(const void *a, const void *b) {
  unsigned long long x = (*(struct op *const *)a)->seq, y = (*(struct op *const *)b)->seq;
  return x < y ? 1 : x > y ? -1 : 0;
}

static int is_blocking(const struct stream *s) { return s->kind == STREAM_BLOCKING || s->kind == STREAM_PER_THREAD; }

/* Under the lock: runs the queued work `seed` picks and all the work it waits for (earlier
 * work of its stream, the legacy stream's rules, stream waits), oldest first, releasing the
 * lock while a kernel takes its time (FAKECUDA_LAUNCH_DELAY_US) or a host function runs. With
 * `query`, runs nothing unless all of it is due, and says so (*not_ready). */
typedef int (*seed_fn)(const struct op *, const void *);
static CUresult run_work(seed_fn seed, const void *arg, int query, int *not_ready) {
  static __thread struct op *live[MAX_ITEMS];
  if (in_host_fn) return broken(CUDA_ERROR_NOT_PERMITTED, "a synchronising call from a host function (cuLaunchHostFunc)");
  for (;;) {
    int n = 0;
    for (int i = 0; i < MAX_ITEMS; i++)
      if (ops[i].live) {
        struct op *o = &ops[i];
        live[n++] = o;
        o->needed = 0;
        o->stream->need = 0;
        o->stream->ctx->need_legacy = o->stream->ctx->need_blocking = 0;
        if (o->kind == OP_WAIT) o->wait_stream->need = 0;
      }
    if (n == 0) return CUDA_SUCCESS;
    qsort(live, (size_t)n, sizeof live[0], cmp_seq_desc);
    int waiting = 0, due = 1, any = 0;
    unsigned long long now = now_ns();
    for (int i = 0; i < n; i++) { /* newest first: what each needed piece waits for is older */
      struct op *o = live[i];
      struct stream *s = o->stream;
      struct ctx *c = s->ctx;
      o->needed = seed(o, arg) || o->seq < s->need || (s->kind == STREAM_LEGACY && o->seq < c->need_legacy) ||
                  (is_blocking(s) && o->seq < c->need_blocking);
      if (!o->needed) continue;
      any = 1;
      if (o->seq > s->need) s->need = o->seq;
      if (s->kind == STREAM_LEGACY && o->seq > c->need_blocking) c->need_blocking = o->seq;
      if (is_blocking(s) && o->seq > c->need_legacy) c->need_legacy = o->seq;
      if (o->kind == OP_WAIT && o->wait_seq + 1 > o->wait_stream->need) o->wait_stream->need = o->wait_seq + 1;
      if (o->claimed && !pthread_equal(o->owner, pthread_self())) waiting = 1;
      if (o->ready_at > now) due = 0;
    }
    if (!any) return CUDA_SUCCESS;
    if (query && (waiting || !due)) {
      *not_ready = 1;
      return CUDA_SUCCESS;
    }
    if (waiting) { /* another thread is running some of it: once it is done, look again */
      pthread_cond_wait(&work_done, &lock);
      continue;
    }
    for (int i = 0; i < n; i++)
      if (live[i]->needed) live[i]->claimed = 1, live[i]->owner = pthread_self();
    for (int i = n - 1; i >= 0; i--) { /* oldest first (others may clear `needed` meanwhile) */
      struct op *o = live[i];
      if (!o->live || !o->claimed || !pthread_equal(o->owner, pthread_self())) continue;
      if (o->kind == OP_KERNEL && o->ready_at > now_ns()) {
        unsigned long long left = o->ready_at - now_ns();
        struct timespec t = {(time_t)(left / 1000000000ull), (long)(left % 1000000000ull)};
        pthread_mutex_unlock(&lock);
        nanosleep(&t, NULL);
        pthread_mutex_lock(&lock);
      }
      if (o->kind == OP_HOSTFN) {
        pthread_mutex_unlock(&lock);
        in_host_fn = 1;
        o->fn(o->data);
        in_host_fn = 0;
        pthread_mutex_lock(&lock);
      } else {
        execute(o);
      }
      o->live = o->claimed = o->needed = 0;
    }
    pthread_cond_broadcast(&work_done);
    return CUDA_SUCCESS;
  }
}

static int seed_all(const struct op *o, const void *arg) { return (void)o, (void)arg, 1; }
static int seed_stream(const struct op *o, const void *s) { return o->stream == s; }
static int seed_context(const struct op *o, const void *c) { return o->stream->ctx == c; }
static int seed_seq(const struct op *o, const void *seq) { return o->seq == *(const unsigned long long *)seq; }
static int seed_event(const struct op *o, const void *e) {
  const struct event *ev = e;
  return o->stream == ev->stream && o->seq <= ev->seq;
}

/* The error work of `c` met while running, once. */
static CUresult take_error(struct ctx *c) {
  CUresult r = c->error;
  c->error = CUDA_SUCCESS;
  return r;
}

/* Under the lock: the stream a call names (NULL: the legacy default stream, or the per-thread
 * one for the _ptsz/_ptds entry points), of the current context. */
static CUresult resolve_stream(struct stream *s, int ptds, const char *what, struct stream **out) {
  CUresult r = need_context(what);
  if (r != CUDA_SUCCESS) return r;
  struct ctx *c = current();
  if (s == NULL) s = ptds ? CU_STREAM_PER_THREAD_HANDLE : CU_STREAM_LEGACY_HANDLE;
  if (s == CU_STREAM_LEGACY_HANDLE) {
    *out = &c->legacy;
    return CUDA_SUCCESS;
  }
  if (s == CU_STREAM_PER_THREAD_HANDLE) {
    struct stream *free_slot = NULL;
    for (int i = 0; i < MAX_PER_THREAD; i++) {
      struct stream *p = &per_thread[i];
      if (p->live && p->ctx == c && pthread_equal(p->thread, pthread_self())) {
        *out = p;
        return CUDA_SUCCESS;
      }
      if (!p->live && !free_slot) free_slot = p;
    }
    if (!free_slot) return CUDA_ERROR_OUT_OF_MEMORY;
    *free_slot = (struct stream){.ctx = c, .live = 1, .kind = STREAM_PER_THREAD, .thread = pthread_self()};
    *out = free_slot;
    return CUDA_SUCCESS;
  }
  if (s < streams || s >= streams + MAX_ITEMS || !s->live)
    return broken(CUDA_ERROR_INVALID_HANDLE, "%s on a stream that is not live", what);
  if (s->ctx != c) return broken(CUDA_ERROR_INVALID_HANDLE, "%s on a stream of another context", what);
  *out = s;
  return CUDA_SUCCESS;
}

/* Under the lock: queues `o` on stream `s` (waiting for room if the queue is full, as the
 * driver does); *out is the queued work. */
static CUresult push_work(struct op o, struct stream *s, struct op **out) {
  for (int tries = 0; tries < 2; tries++) {
    for (int i = 0; i < MAX_ITEMS; i++)
      if (!ops[i].live) {
        unsigned long long start = now_ns();
        if (s->busy_until > start) start = s->busy_until;
        o.live = 1, o.claimed = o.needed = 0, o.stream = s, o.seq = ++next_seq;
        o.ready_at = o.kind == OP_KERNEL ? start + launch_delay_ns : start;
        s->busy_until = o.ready_at;
        ops[i] = o;
        if (out) *out = &ops[i];
        return CUDA_SUCCESS;
      }
    CUresult r = run_work(seed_all, NULL, 0, NULL);
    if (r != CUDA_SUCCESS) return r;
  }
  return CUDA_ERROR_OUT_OF_MEMORY;
}

/* Under the lock: checks a copy or memset's device memory as it is queued, counts its bytes,
 * and queues it on `s`. */
static CUresult queue_transfer(struct op o, struct stream *s, const char *what, struct op **out) {
  if (o.len == 0) return CUDA_SUCCESS; /* nothing to copy: the driver accepts it */
  uintptr_t a[2], h;
  size_t n[2], hn;
  int k = device_ranges(&o, a, n), other = -1;
  for (int i = 0; i < k; i++) {
    int bad = device_range(a[i], n[i], s->ctx->device, &other);
    if (bad == 1)
      return broken(CUDA_ERROR_INVALID_VALUE, "%s of %#lx+%zu: device memory not all mapped", what, (unsigned long)a[i], n[i]);
    if (bad == 2)
      return broken(CUDA_ERROR_INVALID_VALUE, "%s on device %d's stream of memory on device %d", what, s->ctx->device, other);
  }
  if (host_range(&o, &h, &hn)) {
    int pinned = 0;
    for (int i = 0; i < MAX_ITEMS; i++)
      if (hostbufs[i].live && h >= hostbufs[i].addr && h + hn <= hostbufs[i].addr + hostbufs[i].size) pinned = 1;
    if (!pinned) pageable_copies++;
  }
  CUresult r = push_work(o, s, out);
  if (r == CUDA_SUCCESS && o.kind == OP_DTOH) copied_to_host += o.len;
  if (r == CUDA_SUCCESS && o.kind == OP_HTOD) copied_to_device += o.len;
  return r;
}

/* For cuMemcpy(Async): which way a unified-address copy goes. */
static int copy_kind(uintptr_t dst, uintptr_t src) {
  int d = is_device_address(dst), s = is_device_address(src);
  return d && s ? OP_DTOD : d ? OP_HTOD : s ? OP_DTOH : OP_HTOH;
}

/* A copy or memset: queued on `stream` (async), or on the legacy (per-thread, with ptds)
 * default stream and run at once (sync). */
static CUresult transfer(struct op o, struct stream *stream, int async, int ptds, const char *what) {
  pthread_mutex_lock(&lock);
  struct stream *s = NULL;
  struct op *q = NULL;
  CUresult r = resolve_stream(async ? stream : NULL, ptds, what, &s);
  if (o.kind < 0) o.kind = copy_kind(o.dst, o.src); /* cuMemcpy(Async): unified addresses */
  if (r == CUDA_SUCCESS && o.kind == OP_MEMSET && o.dst % o.width)
    r = broken(CUDA_ERROR_INVALID_VALUE, "%s at %#lx: not aligned to %u bytes", what, (unsigned long)o.dst, o.width);
  if (r == CUDA_SUCCESS) r = queue_transfer(o, s, what, &q);
  if (r == CUDA_SUCCESS && !async && q) {
    unsigned long long seq = q->seq;
    r = run_work(seed_seq, &seq, 0, NULL);
    if (r == CUDA_SUCCESS) r = take_error(s->ctx);
  }
  pthread_mutex_unlock(&lock);
  return r;
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
  if (r == CUDA_SUCCESS) r = run_work(seed_context, current(), 0, NULL);
  if (r == CUDA_SUCCESS) r = take_error(current());
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuStreamCreate(CUstream *out, unsigned int flags) {
  pthread_mutex_lock(&lock);
  CUresult r = need_context("cuStreamCreate");
  if (r == CUDA_SUCCESS) {
    r = CUDA_ERROR_OUT_OF_MEMORY;
    for (int i = 0; i < MAX_ITEMS; i++)
      if (!streams[i].live) {
        streams[i] = (struct stream){.ctx = current(), .live = 1,
                                      .kind = flags & CU_STREAM_NON_BLOCKING ? STREAM_NON_BLOCKING : STREAM_BLOCKING};
        *out = &streams[i];
        r = CUDA_SUCCESS;
        break;
      }
  }
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuStreamDestroy_v2(CUstream s) {
  pthread_mutex_lock(&lock);
  CUresult r = CUDA_SUCCESS;
  if (in_host_fn)
    r = broken(CUDA_ERROR_NOT_PERMITTED, "cuStreamDestroy from a host function (cuLaunchHostFunc)");
  else if (!s || s < streams || s >= streams + MAX_ITEMS || !s->live)
    r = broken(CUDA_ERROR_INVALID_HANDLE, "%s on a stream that is not live", "cuStreamDestroy");
  if (r == CUDA_SUCCESS) r = run_work(seed_stream, s, 0, NULL); /* the driver finishes a destroyed stream's work */
  if (r == CUDA_SUCCESS) s->live = 0;
  pthread_mutex_unlock(&lock);
  return r;
}

static CUresult stream_synchronize(CUstream stream, int ptds) {
  pthread_mutex_lock(&lock);
  struct stream *s = NULL;
  CUresult r = resolve_stream(stream, ptds, "cuStreamSynchronize", &s);
  if (r == CUDA_SUCCESS) r = run_work(seed_stream, s, 0, NULL);
  if (r == CUDA_SUCCESS) r = take_error(s->ctx);
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuStreamSynchronize(CUstream s) { return stream_synchronize(s, 0); }
CUresult cuStreamSynchronize_ptsz(CUstream s) { return stream_synchronize(s, 1); }

static CUresult stream_query(CUstream stream, int ptds) {
  pthread_mutex_lock(&lock);
  struct stream *s = NULL;
  int not_ready = 0;
  CUresult r = resolve_stream(stream, ptds, "cuStreamQuery", &s);
  if (r == CUDA_SUCCESS) r = run_work(seed_stream, s, 1, &not_ready);
  if (r == CUDA_SUCCESS) r = not_ready ? CUDA_ERROR_NOT_READY : take_error(s->ctx);
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuStreamQuery(CUstream s) { return stream_query(s, 0); }
CUresult cuStreamQuery_ptsz(CUstream s) { return stream_query(s, 1); }

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
    if (ops[i].live && uses_device(&ops[i], ptr, size))
      r = broken(CUDA_ERROR_INVALID_VALUE, "cuMemUnmap of memory queued work (%s) still uses (no sync?)", op_name(&ops[i]));
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
  for (int j = 0; r == CUDA_SUCCESS && j < MAX_ITEMS; j++) {
    uintptr_t h;
    size_t hn;
    if (ops[j].live && host_range(&ops[j], &h, &hn) && overlaps(h, hn, b->addr, b->size))
      r = broken(CUDA_ERROR_INVALID_VALUE, "cuMemFreeHost of a buffer a queued copy still uses");
  }
  if (r == CUDA_SUCCESS) {
    munmap(p, b->size);
    pinned_used -= b->size;
    b->live = 0;
  }
  pthread_mutex_unlock(&lock);
  return r;
}


/* ---- more of the driver: versions, devices, contexts ---- */

CUresult cuDriverGetVersion(int *version) {
  if (!version) return CUDA_ERROR_INVALID_VALUE;
  *version = 12080;
  return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice dev) {
  pthread_mutex_lock(&lock);
  CUresult r = valid_device("cuDeviceGetName", dev);
  pthread_mutex_unlock(&lock);
  if (r == CUDA_SUCCESS && (!name || len <= 0)) r = CUDA_ERROR_INVALID_VALUE;
  if (r == CUDA_SUCCESS) snprintf(name, (size_t)len, "Fake CUDA Device %d", dev);
  return r;
}

CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev) {
  pthread_mutex_lock(&lock);
  CUresult r = valid_device("cuDeviceTotalMem", dev);
  if (r == CUDA_SUCCESS) *bytes = device_bytes;
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuCtxCreate_v2(CUcontext *out, unsigned int flags, CUdevice dev) {
  (void)flags;
  pthread_mutex_lock(&lock);
  CUresult r = valid_device("cuCtxCreate", dev);
  if (r == CUDA_SUCCESS && depth == 64) r = broken(CUDA_ERROR_INVALID_VALUE, "cuCtxCreate with 64 contexts pushed");
  if (r == CUDA_SUCCESS) {
    r = CUDA_ERROR_OUT_OF_MEMORY;
    for (int k = 0; k < MAX_CONTEXTS; k++) { /* round robin: a destroyed context's slot is reused late */
      struct ctx *c = &created[(next_created + k) % MAX_CONTEXTS];
      if (c->retained) continue;
      for (int i = 0; i < MAX_ITEMS; i++)
        if (ops[i].live && ops[i].stream->ctx == c) c = NULL; /* never, but never reuse one with work */
      if (!c) continue;
      init_ctx(c, dev);
      c->created = c->retained = 1;
      next_created = (int)(c - created + 1) % MAX_CONTEXTS;
      stack[depth++] = c; /* the new context is current */
      *out = c;
      r = CUDA_SUCCESS;
      break;
    }
  }
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuCtxDestroy_v2(CUcontext c) {
  pthread_mutex_lock(&lock);
  CUresult r = CUDA_SUCCESS;
  if (in_host_fn)
    r = broken(CUDA_ERROR_NOT_PERMITTED, "cuCtxDestroy from a host function (cuLaunchHostFunc)");
  else if (!initialised)
    r = broken(CUDA_ERROR_NOT_INITIALIZED, "cuCtxDestroy before cuInit");
  else if (!c || c < created || c >= created + MAX_CONTEXTS || !c->retained)
    r = broken(CUDA_ERROR_INVALID_CONTEXT, "cuCtxDestroy of %p, not a live context from cuCtxCreate", (void *)c);
  if (r == CUDA_SUCCESS) r = run_work(seed_context, c, 0, NULL); /* its work finishes */
  if (r == CUDA_SUCCESS && c->retained) { /* (another thread may have destroyed it meanwhile) */
    for (int i = 0; i < MAX_ITEMS; i++) {
      if (allocs[i].live && allocs[i].ctx == c) {
        munmap((void *)allocs[i].addr, allocs[i].mapped_size);
        used[allocs[i].device] -= allocs[i].size;
        allocs[i].live = 0;
      }
      if (streams[i].live && streams[i].ctx == c) streams[i].live = 0;
      if (events[i].live && events[i].ctx == c) events[i].live = 0, events[i].gen++;
    }
    for (int i = 0; i < MAX_PER_THREAD; i++)
      if (per_thread[i].ctx == c) per_thread[i].live = 0;
    for (int i = 0; i < MAX_MODULES; i++)
      if (modules[i].ctx == c) modules[i].live = 0;
    c->retained = 0;
    if (current() == c) depth--; /* popped, if current on this thread */
  }
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuCtxSetCurrent(CUcontext c) {
  pthread_mutex_lock(&lock);
  CUresult r = CUDA_SUCCESS;
  if (c && (!is_context(c) || c->retained <= 0))
    r = broken(CUDA_ERROR_INVALID_CONTEXT, "cuCtxSetCurrent of %p, not a live context", (void *)c);
  else if (!c)
    depth = depth > 0 ? depth - 1 : 0; /* unbinds the current context */
  else if (depth == 0)
    stack[depth++] = c;
  else
    stack[depth - 1] = c;
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuCtxGetDevice(CUdevice *dev) {
  pthread_mutex_lock(&lock);
  CUresult r = need_context("cuCtxGetDevice");
  if (r == CUDA_SUCCESS) *dev = current()->device;
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total) {
  pthread_mutex_lock(&lock);
  CUresult r = need_context("cuMemGetInfo");
  if (r == CUDA_SUCCESS) {
    *total = device_bytes;
    *free_bytes = device_bytes - used[current()->device];
  }
  pthread_mutex_unlock(&lock);
  return r;
}

/* ---- plain device memory ---- */

CUresult cuMemAlloc_v2(CUdeviceptr *out, size_t size) {
  pthread_mutex_lock(&lock);
  CUresult r = need_context("cuMemAlloc");
  struct ctx *c = current();
  if (r == CUDA_SUCCESS && size == 0) r = CUDA_ERROR_INVALID_VALUE;
  if (r == CUDA_SUCCESS && used[c->device] + size > device_bytes) r = CUDA_ERROR_OUT_OF_MEMORY;
  if (r == CUDA_SUCCESS) {
    size_t mapped = (size + 4095) & ~(size_t)4095;
    void *p = mmap(NULL, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    r = CUDA_ERROR_OUT_OF_MEMORY;
    for (int i = 0; p != MAP_FAILED && i < MAX_ITEMS; i++)
      if (!allocs[i].live) {
        allocs[i] = (struct alloc){1, c->device, c, (uintptr_t)p, size, mapped};
        used[c->device] += size;
        *out = (CUdeviceptr)(uintptr_t)p;
        r = CUDA_SUCCESS;
        break;
      }
    if (r != CUDA_SUCCESS && p != MAP_FAILED) munmap(p, mapped);
  }
  pthread_mutex_unlock(&lock);
  return r;
}

static struct alloc *find_alloc(CUdeviceptr p) {
  for (int i = 0; i < MAX_ITEMS; i++)
    if (allocs[i].live && allocs[i].addr == p) return &allocs[i];
  return NULL;
}

CUresult cuMemFree_v2(CUdeviceptr p) {
  pthread_mutex_lock(&lock);
  CUresult r = need_context("cuMemFree");
  if (r == CUDA_SUCCESS && !find_alloc(p))
    r = broken(CUDA_ERROR_INVALID_VALUE, "cuMemFree of %#llx, not from cuMemAlloc (freed twice?)", p);
  if (r == CUDA_SUCCESS) r = run_work(seed_all, NULL, 0, NULL); /* the driver waits for the work first */
  struct alloc *a = find_alloc(p);
  if (r == CUDA_SUCCESS && !a) r = broken(CUDA_ERROR_INVALID_VALUE, "cuMemFree of %#llx, freed by another thread meanwhile", p);
  if (r == CUDA_SUCCESS) {
    munmap((void *)a->addr, a->mapped_size);
    used[a->device] -= a->size;
    a->live = 0;
  }
  pthread_mutex_unlock(&lock);
  return r;
}

/* ---- copies and memsets ---- */

#define OP(...) ((struct op){__VA_ARGS__})

CUresult cuMemcpyDtoHAsync_v2(void *dst, CUdeviceptr src, size_t n, CUstream s) {
  return transfer(OP(.kind = OP_DTOH, .dst = (uintptr_t)dst, .src = src, .len = n), s, 1, 0, "cuMemcpyDtoHAsync");
}
CUresult cuMemcpyDtoHAsync_v2_ptsz(void *dst, CUdeviceptr src, size_t n, CUstream s) {
  return transfer(OP(.kind = OP_DTOH, .dst = (uintptr_t)dst, .src = src, .len = n), s, 1, 1, "cuMemcpyDtoHAsync");
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t n, CUstream s) {
  return transfer(OP(.kind = OP_HTOD, .dst = dst, .src = (uintptr_t)src, .len = n), s, 1, 0, "cuMemcpyHtoDAsync");
}
CUresult cuMemcpyHtoDAsync_v2_ptsz(CUdeviceptr dst, const void *src, size_t n, CUstream s) {
  return transfer(OP(.kind = OP_HTOD, .dst = dst, .src = (uintptr_t)src, .len = n), s, 1, 1, "cuMemcpyHtoDAsync");
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
  return transfer(OP(.kind = OP_DTOD, .dst = dst, .src = src, .len = n), s, 1, 0, "cuMemcpyDtoDAsync");
}
CUresult cuMemcpyDtoDAsync_v2_ptsz(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
  return transfer(OP(.kind = OP_DTOD, .dst = dst, .src = src, .len = n), s, 1, 1, "cuMemcpyDtoDAsync");
}
CUresult cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
  return transfer(OP(.kind = -1, .dst = dst, .src = src, .len = n), s, 1, 0, "cuMemcpyAsync");
}
CUresult cuMemcpyAsync_ptsz(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
  return transfer(OP(.kind = -1, .dst = dst, .src = src, .len = n), s, 1, 1, "cuMemcpyAsync");
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t n) {
  return transfer(OP(.kind = OP_HTOD, .dst = dst, .src = (uintptr_t)src, .len = n), NULL, 0, 0, "cuMemcpyHtoD");
}
CUresult cuMemcpyHtoD_v2_ptds(CUdeviceptr dst, const void *src, size_t n) {
  return transfer(OP(.kind = OP_HTOD, .dst = dst, .src = (uintptr_t)src, .len = n), NULL, 0, 1, "cuMemcpyHtoD");
}
CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t n) {
  return transfer(OP(.kind = OP_DTOH, .dst = (uintptr_t)dst, .src = src, .len = n), NULL, 0, 0, "cuMemcpyDtoH");
}
CUresult cuMemcpyDtoH_v2_ptds(void *dst, CUdeviceptr src, size_t n) {
  return transfer(OP(.kind = OP_DTOH, .dst = (uintptr_t)dst, .src = src, .len = n), NULL, 0, 1, "cuMemcpyDtoH");
}
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
  return transfer(OP(.kind = OP_DTOD, .dst = dst, .src = src, .len = n), NULL, 0, 0, "cuMemcpyDtoD");
}
CUresult cuMemcpyDtoD_v2_ptds(CUdeviceptr dst, CUdeviceptr src, size_t n) {
  return transfer(OP(.kind = OP_DTOD, .dst = dst, .src = src, .len = n), NULL, 0, 1, "cuMemcpyDtoD");
}
CUresult cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t n) {
  return transfer(OP(.kind = -1, .dst = dst, .src = src, .len = n), NULL, 0, 0, "cuMemcpy");
}
CUresult cuMemcpy_ptds(CUdeviceptr dst, CUdeviceptr src, size_t n) {
  return transfer(OP(.kind = -1, .dst = dst, .src = src, .len = n), NULL, 0, 1, "cuMemcpy");
}

#define MEMSET(w, v, n) OP(.kind = OP_MEMSET, .dst = dst, .len = (size_t)(n) * (w), .value = (v), .width = (w))
CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) { return transfer(MEMSET(1, v, n), NULL, 0, 0, "cuMemsetD8"); }
CUresult cuMemsetD8_v2_ptds(CUdeviceptr dst, unsigned char v, size_t n) { return transfer(MEMSET(1, v, n), NULL, 0, 1, "cuMemsetD8"); }
CUresult cuMemsetD16_v2(CUdeviceptr dst, unsigned short v, size_t n) { return transfer(MEMSET(2, v, n), NULL, 0, 0, "cuMemsetD16"); }
CUresult cuMemsetD16_v2_ptds(CUdeviceptr dst, unsigned short v, size_t n) { return transfer(MEMSET(2, v, n), NULL, 0, 1, "cuMemsetD16"); }
CUresult cuMemsetD32_v2(CUdeviceptr dst, unsigned int v, size_t n) { return transfer(MEMSET(4, v, n), NULL, 0, 0, "cuMemsetD32"); }
CUresult cuMemsetD32_v2_ptds(CUdeviceptr dst, unsigned int v, size_t n) { return transfer(MEMSET(4, v, n), NULL, 0, 1, "cuMemsetD32"); }
CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, CUstream s) {
  return transfer(MEMSET(1, v, n), s, 1, 0, "cuMemsetD8Async");
}
CUresult cuMemsetD8Async_ptsz(CUdeviceptr dst, unsigned char v, size_t n, CUstream s) {
  return transfer(MEMSET(1, v, n), s, 1, 1, "cuMemsetD8Async");
}
CUresult cuMemsetD16Async(CUdeviceptr dst, unsigned short v, size_t n, CUstream s) {
  return transfer(MEMSET(2, v, n), s, 1, 0, "cuMemsetD16Async");
}
CUresult cuMemsetD16Async_ptsz(CUdeviceptr dst, unsigned short v, size_t n, CUstream s) {
  return transfer(MEMSET(2, v, n), s, 1, 1, "cuMemsetD16Async");
}
CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned int v, size_t n, CUstream s) {
  return transfer(MEMSET(4, v, n), s, 1, 0, "cuMemsetD32Async");
}
CUresult cuMemsetD32Async_ptsz(CUdeviceptr dst, unsigned int v, size_t n, CUstream s) {
  return transfer(MEMSET(4, v, n), s, 1, 1, "cuMemsetD32Async");
}

/* ---- modules and kernels ---- */

static CUresult load_module(CUmodule *out, const void *image, const char *what) {
  pthread_mutex_lock(&lock);
  CUresult r = need_context(what);
  if (r == CUDA_SUCCESS && (!out || !image)) r = CUDA_ERROR_INVALID_VALUE;
  if (r == CUDA_SUCCESS && strncmp(image, "fakecuda-kernels", 17) != 0) r = CUDA_ERROR_INVALID_IMAGE;
  if (r == CUDA_SUCCESS) {
    r = CUDA_ERROR_OUT_OF_MEMORY;
    for (int i = 0; i < MAX_MODULES; i++)
      if (!modules[i].live) {
        struct module *m = &modules[i];
        m->live = 1, m->ctx = current();
        for (int k = 0; k < N_KERNELS; k++) m->functions[k] = (struct function){m, k};
        *out = m;
        r = CUDA_SUCCESS;
        break;
      }
  }
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuModuleLoadData(CUmodule *out, const void *image) { return load_module(out, image, "cuModuleLoadData"); }

CUresult cuModuleLoadDataEx(CUmodule *out, const void *image, unsigned int n, int *options, void **values) {
  (void)n, (void)options, (void)values;
  return load_module(out, image, "cuModuleLoadDataEx");
}

static int is_module(const struct module *m) { return m >= modules && m < modules + MAX_MODULES; }

CUresult cuModuleUnload(CUmodule m) {
  pthread_mutex_lock(&lock);
  CUresult r = CUDA_SUCCESS;
  if (!is_module(m) || !m->live) r = broken(CUDA_ERROR_INVALID_HANDLE, "cuModuleUnload of a module not loaded");
  if (r == CUDA_SUCCESS) m->live = 0;
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuModuleGetFunction(CUfunction *out, CUmodule m, const char *name) {
  pthread_mutex_lock(&lock);
  CUresult r = CUDA_SUCCESS;
  if (!is_module(m) || !m->live) r = broken(CUDA_ERROR_INVALID_HANDLE, "cuModuleGetFunction in a module not loaded");
  if (r == CUDA_SUCCESS && (!out || !name)) r = CUDA_ERROR_INVALID_VALUE;
  if (r == CUDA_SUCCESS) {
    r = CUDA_ERROR_NOT_FOUND;
    for (int k = 0; k < N_KERNELS; k++)
      if (strcmp(name, kernels[k].name) == 0) {
        *out = &m->functions[k];
        r = CUDA_SUCCESS;
      }
  }
  pthread_mutex_unlock(&lock);
  return r;
}

/* Under the lock: a kernel's arguments, from kernelParams or extra, into o->args. */
static CUresult kernel_arguments(struct op *o, void **params, void **extra, const char *what) {
  const char *sig = kernels[o->kernel].sig;
  if (params && extra) return broken(CUDA_ERROR_INVALID_VALUE, "%s with both kernelParams and extra", what);
  if (params) {
    for (int i = 0; sig[i]; i++) {
      if (!params[i]) return broken(CUDA_ERROR_INVALID_VALUE, "%s: kernelParams[%d] is NULL", what, i);
      o->args[i] = sig[i] == 'p' ? *(const CUdeviceptr *)params[i] : *(const unsigned *)params[i];
    }
    return CUDA_SUCCESS;
  }
  const char *buf = NULL;
  const size_t *size = NULL;
  for (int j = 0; extra && extra[j] != NULL; j += 2) {
    if (extra[j] == (void *)1)
      buf = extra[j + 1];
    else if (extra[j] == (void *)2)
      size = extra[j + 1];
    else
      return broken(CUDA_ERROR_INVALID_VALUE, "%s: unknown extra option %p", what, extra[j]);
  }
  if (!buf || !size) return broken(CUDA_ERROR_INVALID_VALUE, "%s of %s without its arguments", what, kernels[o->kernel].name);
  size_t off = 0;
  for (int i = 0; sig[i]; i++) {
    size_t n = sig[i] == 'p' ? 8 : 4;
    off = (off + n - 1) & ~(n - 1);
    if (off + n > *size) return broken(CUDA_ERROR_INVALID_VALUE, "%s: argument buffer of %zu bytes too small", what, *size);
    if (n == 8) {
      CUdeviceptr p;
      memcpy(&p, buf + off, 8);
      o->args[i] = p;
    } else {
      unsigned u;
      memcpy(&u, buf + off, 4);
      o->args[i] = u;
    }
    off += n;
  }
  return CUDA_SUCCESS;
}

static CUresult launch(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                       unsigned shared, CUstream stream, void **params, void **extra, int ptds, const char *what) {
  pthread_mutex_lock(&lock);
  struct stream *s = NULL;
  CUresult r = resolve_stream(stream, ptds, what, &s);
  int is_function = (const char *)f >= (const char *)modules && (const char *)f < (const char *)(modules + MAX_MODULES);
  if (r == CUDA_SUCCESS && (!is_function || !f->module->live))
    r = broken(CUDA_ERROR_INVALID_HANDLE, "%s of a function not from a loaded module", what);
  if (r == CUDA_SUCCESS && f->module->ctx != s->ctx)
    r = broken(CUDA_ERROR_INVALID_HANDLE, "%s of a function of another context's module", what);
  if (r == CUDA_SUCCESS && (!gx || !gy || !gz || !bx || !by || !bz || (unsigned long long)bx * by * bz > 1024 || shared > 49152))
    r = broken(CUDA_ERROR_INVALID_VALUE, "%s with grid %ux%ux%u, block %ux%ux%u, %u bytes shared", what, gx, gy, gz, bx, by, bz, shared);
  struct op o = {.kind = OP_KERNEL};
  if (r == CUDA_SUCCESS) {
    o.kernel = f->kernel;
    r = kernel_arguments(&o, params, extra, what);
  }
  if (r == CUDA_SUCCESS) r = push_work(o, s, NULL);
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuLaunchKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, CUstream s, void **params, void **extra) {
  return launch(f, gx, gy, gz, bx, by, bz, shared, s, params, extra, 0, "cuLaunchKernel");
}
CUresult cuLaunchKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                             unsigned shared, CUstream s, void **params, void **extra) {
  return launch(f, gx, gy, gz, bx, by, bz, shared, s, params, extra, 1, "cuLaunchKernel");
}
CUresult cuLaunchCooperativeKernel(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                   unsigned bz, unsigned shared, CUstream s, void **params) {
  return launch(f, gx, gy, gz, bx, by, bz, shared, s, params, NULL, 0, "cuLaunchCooperativeKernel");
}
CUresult cuLaunchCooperativeKernel_ptsz(CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                                        unsigned bz, unsigned shared, CUstream s, void **params) {
  return launch(f, gx, gy, gz, bx, by, bz, shared, s, params, NULL, 1, "cuLaunchCooperativeKernel");
}

static CUresult host_func(CUstream stream, CUhostFn fn, void *data, int ptds) {
  pthread_mutex_lock(&lock);
  struct stream *s = NULL;
  CUresult r = resolve_stream(stream, ptds, "cuLaunchHostFunc", &s);
  if (r == CUDA_SUCCESS && !fn) r = CUDA_ERROR_INVALID_VALUE;
  if (r == CUDA_SUCCESS) r = push_work(OP(.kind = OP_HOSTFN, .fn = fn, .data = data), s, NULL);
  pthread_mutex_unlock(&lock);
  return r;
}
CUresult cuLaunchHostFunc(CUstream s, CUhostFn fn, void *data) { return host_func(s, fn, data, 0); }
CUresult cuLaunchHostFunc_ptsz(CUstream s, CUhostFn fn, void *data) { return host_func(s, fn, data, 1); }

/* No graph can be made here: every graph exec is invalid, NULL included. */
static CUresult graph_launch(CUgraphExec exec, CUstream stream, int ptds) {
  pthread_mutex_lock(&lock);
  struct stream *s = NULL;
  CUresult r = resolve_stream(stream, ptds, "cuGraphLaunch", &s);
  (void)exec;
  pthread_mutex_unlock(&lock);
  return r == CUDA_SUCCESS ? CUDA_ERROR_INVALID_HANDLE : r;
}
CUresult cuGraphLaunch(CUgraphExec exec, CUstream s) { return graph_launch(exec, s, 0); }
CUresult cuGraphLaunch_ptsz(CUgraphExec exec, CUstream s) { return graph_launch(exec, s, 1); }

/* ---- events ---- */

static CUresult live_event(struct event *e, const char *what) {
  if (!e || e < events || e >= events + MAX_ITEMS || !e->live)
    return broken(CUDA_ERROR_INVALID_HANDLE, "%s of an event that is not live", what);
  return CUDA_SUCCESS;
}

CUresult cuEventCreate(CUevent *out, unsigned int flags) {
  (void)flags;
  pthread_mutex_lock(&lock);
  CUresult r = need_context("cuEventCreate");
  if (r == CUDA_SUCCESS) {
    r = CUDA_ERROR_OUT_OF_MEMORY;
    for (int i = 0; i < MAX_ITEMS; i++)
      if (!events[i].live) {
        events[i] = (struct event){.live = 1, .gen = events[i].gen + 1, .ctx = current()};
        *out = &events[i];
        r = CUDA_SUCCESS;
        break;
      }
  }
  pthread_mutex_unlock(&lock);
  return r;
}

CUresult cuEventDestroy_v2(CUevent e) {
  pthread_mutex_lock(&lock);
  CUresult r = live_event(e, "cuEventDestroy");
  if (r == CUDA_SUCCESS) e->live = 0, e->gen++; /* a record still queued runs, and is forgotten */
  pthread_mutex_unlock(&lock);
  return r;
}

static CUresult event_record(CUevent e, CUstream stream, int ptds) {
  pthread_mutex_lock(&lock);
  struct stream *s = NULL;
  struct op *q = NULL;
  CUresult r = resolve_stream(stream, ptds, "cuEventRecord", &s);
  if (r == CUDA_SUCCESS) r = live_event(e, "cuEventRecord");
  if (r == CUDA_SUCCESS && e->ctx != s->ctx)
    r = broken(CUDA_ERROR_INVALID_HANDLE, "cuEventRecord of an event of another context");
  if (r == CUDA_SUCCESS) r = push_work(OP(.kind = OP_RECORD, .event = e, .gen = e->gen), s, &q);
  if (r == CUDA_SUCCESS) e->stream = s, e->seq = q->seq, e->pending = 1;
  pthread_mutex_unlock(&lock);
  return r;
}
CUresult cuEventRecord(CUevent e, CUstream s) { return event_record(e, s, 0); }
CUresult cuEventRecord_ptsz(CUevent e, CUstream s) { return event_record(e, s, 1); }

static CUresult event_wait(CUevent e, int query) {
  pthread_mutex_lock(&lock);
  CUresult r = live_event(e, query ? "cuEventQuery" : "cuEventSynchronize");
  int not_ready = 0;
  if (r == CUDA_SUCCESS && e->pending) {
    struct event snapshot = *e;
    r = run_work(seed_event, &snapshot, query, &not_ready);
    if (r == CUDA_SUCCESS) r = not_ready ? CUDA_ERROR_NOT_READY : take_error(snapshot.stream->ctx);
  }
  pthread_mutex_unlock(&lock);
  return r;
}
CUresult cuEventSynchronize(CUevent e) { return event_wait(e, 0); }
CUresult cuEventQuery(CUevent e) { return event_wait(e, 1); }

static CUresult stream_wait_event(CUstream stream, CUevent e, unsigned flags, int ptds) {
  pthread_mutex_lock(&lock);
  struct stream *s = NULL;
  CUresult r = resolve_stream(stream, ptds, "cuStreamWaitEvent", &s);
  if (r == CUDA_SUCCESS) r = live_event(e, "cuStreamWaitEvent");
  if (r == CUDA_SUCCESS && flags > 1) r = CUDA_ERROR_INVALID_VALUE;
  if (r == CUDA_SUCCESS && e->pending) /* else nothing to wait for */
    r = push_work(OP(.kind = OP_WAIT, .wait_stream = e->stream, .wait_seq = e->seq), s, NULL);
  pthread_mutex_unlock(&lock);
  return r;
}
CUresult cuStreamWaitEvent(CUstream s, CUevent e, unsigned flags) { return stream_wait_event(s, e, flags, 0); }
CUresult cuStreamWaitEvent_ptsz(CUstream s, CUevent e, unsigned flags) { return stream_wait_event(s, e, flags, 1); }

/* ---- cuGetProcAddress: the driver's own entry points, by base name and version ---- */

CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags);
CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags, int *symbolStatus);

/* Each entry: a base name, the CUDA version its ABI came with (the newest one not above the
 * version asked for is handed out), the function, and its per-thread-default-stream form.
 * The addresses are this library's own (it is linked with -Bsymbolic). */
#define FN(f) ((void *)(uintptr_t)&(f))
static const struct {
  const char *name;
  int version;
  void *fn, *ptds;
} entries[] = {
    {"cuInit", 2000, FN(cuInit), NULL},
    {"cuDriverGetVersion", 2020, FN(cuDriverGetVersion), NULL},
    {"cuDeviceGet", 2000, FN(cuDeviceGet), NULL},
    {"cuDeviceGetCount", 2000, FN(cuDeviceGetCount), NULL},
    {"cuDeviceGetName", 2000, FN(cuDeviceGetName), NULL},
    {"cuDeviceTotalMem", 3020, FN(cuDeviceTotalMem_v2), NULL},
    {"cuDeviceGetUuid", 11040, FN(cuDeviceGetUuid_v2), NULL},
    {"cuDevicePrimaryCtxRetain", 7000, FN(cuDevicePrimaryCtxRetain), NULL},
    {"cuDevicePrimaryCtxRelease", 11000, FN(cuDevicePrimaryCtxRelease_v2), NULL},
    {"cuCtxCreate", 3020, FN(cuCtxCreate_v2), NULL},
    {"cuCtxDestroy", 4000, FN(cuCtxDestroy_v2), NULL},
    {"cuCtxPushCurrent", 4000, FN(cuCtxPushCurrent_v2), NULL},
    {"cuCtxPopCurrent", 4000, FN(cuCtxPopCurrent_v2), NULL},
    {"cuCtxSetCurrent", 4000, FN(cuCtxSetCurrent), NULL},
    {"cuCtxGetCurrent", 4000, FN(cuCtxGetCurrent), NULL},
    {"cuCtxGetDevice", 2000, FN(cuCtxGetDevice), NULL},
    {"cuCtxSynchronize", 2000, FN(cuCtxSynchronize), NULL},
    {"cuStreamCreate", 2000, FN(cuStreamCreate), NULL},
    {"cuStreamDestroy", 4000, FN(cuStreamDestroy_v2), NULL},
    {"cuStreamSynchronize", 2000, FN(cuStreamSynchronize), FN(cuStreamSynchronize_ptsz)},
    {"cuStreamQuery", 2000, FN(cuStreamQuery), FN(cuStreamQuery_ptsz)},
    {"cuStreamWaitEvent", 3020, FN(cuStreamWaitEvent), FN(cuStreamWaitEvent_ptsz)},
    {"cuMemGetInfo", 3020, FN(cuMemGetInfo_v2), NULL},
    {"cuMemAlloc", 3020, FN(cuMemAlloc_v2), NULL},
    {"cuMemFree", 3020, FN(cuMemFree_v2), NULL},
    {"cuMemHostAlloc", 2020, FN(cuMemHostAlloc), NULL},
    {"cuMemFreeHost", 2000, FN(cuMemFreeHost), NULL},
    {"cuMemGetAllocationGranularity", 10020, FN(cuMemGetAllocationGranularity), NULL},
    {"cuMemAddressReserve", 10020, FN(cuMemAddressReserve), NULL},
    {"cuMemAddressFree", 10020, FN(cuMemAddressFree), NULL},
    {"cuMemCreate", 10020, FN(cuMemCreate), NULL},
    {"cuMemRelease", 10020, FN(cuMemRelease), NULL},
    {"cuMemMap", 10020, FN(cuMemMap), NULL},
    {"cuMemUnmap", 10020, FN(cuMemUnmap), NULL},
    {"cuMemSetAccess", 10020, FN(cuMemSetAccess), NULL},
    {"cuMemcpy", 4000, FN(cuMemcpy), FN(cuMemcpy_ptds)},
    {"cuMemcpyAsync", 4000, FN(cuMemcpyAsync), FN(cuMemcpyAsync_ptsz)},
    {"cuMemcpyHtoD", 3020, FN(cuMemcpyHtoD_v2), FN(cuMemcpyHtoD_v2_ptds)},
    {"cuMemcpyDtoH", 3020, FN(cuMemcpyDtoH_v2), FN(cuMemcpyDtoH_v2_ptds)},
    {"cuMemcpyDtoD", 3020, FN(cuMemcpyDtoD_v2), FN(cuMemcpyDtoD_v2_ptds)},
    {"cuMemcpyHtoDAsync", 3020, FN(cuMemcpyHtoDAsync_v2), FN(cuMemcpyHtoDAsync_v2_ptsz)},
    {"cuMemcpyDtoHAsync", 3020, FN(cuMemcpyDtoHAsync_v2), FN(cuMemcpyDtoHAsync_v2_ptsz)},
    {"cuMemcpyDtoDAsync", 3020, FN(cuMemcpyDtoDAsync_v2), FN(cuMemcpyDtoDAsync_v2_ptsz)},
    {"cuMemsetD8", 3020, FN(cuMemsetD8_v2), FN(cuMemsetD8_v2_ptds)},
    {"cuMemsetD16", 3020, FN(cuMemsetD16_v2), FN(cuMemsetD16_v2_ptds)},
    {"cuMemsetD32", 3020, FN(cuMemsetD32_v2), FN(cuMemsetD32_v2_ptds)},
    {"cuMemsetD8Async", 3020, FN(cuMemsetD8Async), FN(cuMemsetD8Async_ptsz)},
    {"cuMemsetD16Async", 3020, FN(cuMemsetD16Async), FN(cuMemsetD16Async_ptsz)},
    {"cuMemsetD32Async", 3020, FN(cuMemsetD32Async), FN(cuMemsetD32Async_ptsz)},
    {"cuModuleLoadData", 2000, FN(cuModuleLoadData), NULL},
    {"cuModuleLoadDataEx", 2010, FN(cuModuleLoadDataEx), NULL},
    {"cuModuleUnload", 2000, FN(cuModuleUnload), NULL},
    {"cuModuleGetFunction", 2000, FN(cuModuleGetFunction), NULL},
    {"cuLaunchKernel", 4000, FN(cuLaunchKernel), FN(cuLaunchKernel_ptsz)},
    {"cuLaunchCooperativeKernel", 9000, FN(cuLaunchCooperativeKernel), FN(cuLaunchCooperativeKernel_ptsz)},
    {"cuLaunchHostFunc", 10000, FN(cuLaunchHostFunc), FN(cuLaunchHostFunc_ptsz)},
    {"cuGraphLaunch", 10000, FN(cuGraphLaunch), FN(cuGraphLaunch_ptsz)},
    {"cuEventCreate", 2000, FN(cuEventCreate), NULL},
    {"cuEventDestroy", 4000, FN(cuEventDestroy_v2), NULL},
    {"cuEventRecord", 2000, FN(cuEventRecord), FN(cuEventRecord_ptsz)},
    {"cuEventSynchronize", 2000, FN(cuEventSynchronize), NULL},
    {"cuEventQuery", 2000, FN(cuEventQuery), NULL},
    {"cuGetProcAddress", 11030, FN(cuGetProcAddress), NULL},
    {"cuGetProcAddress", 12000, FN(cuGetProcAddress_v2), NULL},
};

#define CU_GET_PROC_ADDRESS_SUCCESS 0
#define CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND 1
#define CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT 2

CUresult cuGetProcAddress_v2(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags, int *symbolStatus) {
  if (!symbol || !pfn) return CUDA_ERROR_INVALID_VALUE;
  int best = -1, known = 0;
  for (int i = 0; i < (int)(sizeof entries / sizeof entries[0]); i++)
    if (strcmp(entries[i].name, symbol) == 0) {
      known = 1;
      if (entries[i].version <= cudaVersion && (best < 0 || entries[i].version > entries[best].version)) best = i;
    }
  *pfn = NULL;
  if (best < 0) {
    if (symbolStatus)
      *symbolStatus = known ? CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT : CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND;
    return CUDA_ERROR_NOT_FOUND;
  }
  *pfn = (flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM) && entries[best].ptds ? entries[best].ptds : entries[best].fn;
  if (symbolStatus) *symbolStatus = CU_GET_PROC_ADDRESS_SUCCESS;
  return CUDA_SUCCESS;
}

CUresult cuGetProcAddress(const char *symbol, void **pfn, int cudaVersion, cuuint64_t flags) {
  return cuGetProcAddress_v2(symbol, pfn, cudaVersion, flags, NULL);
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
    out->queued_copies += ops[i].live; /* all queued work */
    out->streams += streams[i].live;
  }
  for (int i = 0; i < MAX_DEVICES; i++) out->retained_contexts += contexts[i].retained;
  out->copied_to_host = copied_to_host;
  out->copied_to_device = copied_to_device;
  out->pageable_copies = pageable_copies;
  pthread_mutex_unlock(&lock);
}

/* The device whose memory is mapped (or cuMemAlloc'd) at `addr`, or -1 if none is. */
int fakecuda_device_of(unsigned long long addr) {
  pthread_mutex_lock(&lock);
  int d = -1;
  for (int i = 0; i < MAX_ITEMS; i++) {
    if (mappings[i].live && addr >= mappings[i].addr && addr < mappings[i].addr + mappings[i].size)
      d = handles[mappings[i].handle].device;
    if (allocs[i].live && addr >= allocs[i].addr && addr < allocs[i].addr + allocs[i].size) d = allocs[i].device;
  }
  pthread_mutex_unlock(&lock);
  return d;
}


/* Kernels run (not counting those that broke a rule). */
unsigned long long fakecuda_launches(void) {
  pthread_mutex_lock(&lock);
  unsigned long long n = launches;
  pthread_mutex_unlock(&lock);
  return n;
}

/* Rules broken so far. */
long fakecuda_violations(void) {
  pthread_mutex_lock(&lock);
  long n = violations;
  pthread_mutex_unlock(&lock);
  return n;
}

/* What else the fake holds, by name: "allocations" (live cuMemAlloc ones), "allocated_bytes",
 * "modules", "events", "contexts" (live ones from cuCtxCreate), "queued" (work not run yet),
 * "launches", "violations"; -1 for another name. */
long long fakecuda_count(const char *what) {
  long long n = 0;
  pthread_mutex_lock(&lock);
  if (strcmp(what, "launches") == 0)
    n = (long long)launches;
  else if (strcmp(what, "violations") == 0)
    n = violations;
  else if (strcmp(what, "contexts") == 0)
    for (int i = 0; i < MAX_CONTEXTS; i++) n += created[i].retained;
  else if (strcmp(what, "modules") == 0)
    for (int i = 0; i < MAX_MODULES; i++) n += modules[i].live;
  else if (strcmp(what, "allocations") == 0)
    for (int i = 0; i < MAX_ITEMS; i++) n += allocs[i].live;
  else if (strcmp(what, "allocated_bytes") == 0)
    for (int i = 0; i < MAX_ITEMS; i++) n += allocs[i].live ? (long long)allocs[i].size : 0;
  else if (strcmp(what, "events") == 0)
    for (int i = 0; i < MAX_ITEMS; i++) n += events[i].live;
  else if (strcmp(what, "queued") == 0)
    for (int i = 0; i < MAX_ITEMS; i++) n += ops[i].live;
  else
    n = -1;
  pthread_mutex_unlock(&lock);
  return n;
}

/* FAKECUDA_REPORT=1: one line at exit, for tests that run programs over the fake. */
__attribute__((destructor)) static void report(void) {
  const char *r = getenv("FAKECUDA_REPORT");
  if (r && strcmp(r, "1") == 0)
    fprintf(stderr, "fake libcuda: %ld rule(s) broken, %llu launch(es) run\n", violations, launches);
}
