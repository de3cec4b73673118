//! libacb's CUDA backend, run where there is no GPU: against a FAKE libcuda.so (a test double
//! in tests/fake_cuda/libcuda.c, over host memory) that checks the rules the real driver
//! imposes: a current context for the calls that need one, streams of the current context,
//! whole-handle mappings inside reserved ranges, copies that really are asynchronous (so that
//! unmapping or freeing with a copy queued is caught), host buffers from cuMemHostAlloc. It
//! proves the backend keeps those rules and moves a job's memory between (fake) devices byte-exact
//! at the same addresses; it proves nothing about a real GPU's speed or its driver's quirks.
//! The fake also runs a CUDA program's side of the driver API (contexts, cuMemAlloc, modules and
//! kernels over host memory, streams, events, cuGetProcAddress): tests/c/driver_app.c runs over
//! it, and its rules hold for kernels as for copies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::ffi::{CStr, c_void};
use std::path::Path;
use std::ptr;

use acb::acb_status;
use acb::device_memory::{acb_client_dealloc, acb_client_set_read_only};
use common::{Assigner, Job, pattern, scratch};

/// What the fake driver holds, and how many of its rules were broken (`fakecuda_counts`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    violations: i64,
    handles: i64,
    mappings: i64,
    reservations: i64,
    host_buffers: i64,
    queued_copies: i64,
    retained_contexts: i64,
    streams: i64,
    copied_to_host: u64,
    copied_to_device: u64,
    pageable_copies: u64,
}

/// The fake driver, as loaded in this process (the same library libacb loaded).
struct Fake(*mut c_void);

impl Fake {
    fn open() -> Fake {
        // SAFETY: a NUL-terminated name; LD_LIBRARY_PATH points at the fake.
        let h = unsafe { libc::dlopen(c"libcuda.so".as_ptr(), libc::RTLD_NOW) };
        assert!(!h.is_null(), "the fake libcuda.so did not load");
        Fake(h)
    }

    fn sym<F: Copy>(&self, name: &CStr) -> F {
        // SAFETY: a symbol of the fake, with the C type the caller names.
        unsafe {
            let p = libc::dlsym(self.0, name.as_ptr());
            assert!(!p.is_null(), "{name:?} is not in the fake libcuda");
            std::mem::transmute_copy(&p)
        }
    }

    fn counts(&self) -> Counts {
        let f: extern "C" fn(*mut Counts) = self.sym(c"fakecuda_counts");
        let mut c = Counts::default();
        f(&mut c);
        c
    }

    fn device_of(&self, p: *mut u8) -> i32 {
        let f: extern "C" fn(u64) -> i32 = self.sym(c"fakecuda_device_of");
        f(p as u64)
    }

    /// Makes `device`'s primary context current on this thread, as a framework would.
    fn push_framework_context(&self, device: i32) -> *mut c_void {
        let init: extern "C" fn(u32) -> i32 = self.sym(c"cuInit");
        let retain: extern "C" fn(*mut *mut c_void, i32) -> i32 = self.sym(c"cuDevicePrimaryCtxRetain");
        let push: extern "C" fn(*mut c_void) -> i32 = self.sym(c"cuCtxPushCurrent_v2");
        let mut ctx = ptr::null_mut();
        assert_eq!((init(0), retain(&mut ctx, device), push(ctx)), (0, 0, 0));
        ctx
    }

    fn current_context(&self) -> *mut c_void {
        let f: extern "C" fn(*mut *mut c_void) -> i32 = self.sym(c"cuCtxGetCurrent");
        let mut ctx = ptr::null_mut();
        assert_eq!(f(&mut ctx), 0);
        ctx
    }
}

/// Every handle, mapping, reservation, pinned buffer, queued copy and stream was given back.
fn assert_left_nothing(c: &Counts) {
    assert_eq!(
        (c.handles, c.mappings, c.reservations, c.host_buffers, c.queued_copies, c.streams),
        (0, 0, 0, 0, 0, 0),
        "libacb left driver resources behind: {c:?}"
    );
}

/// Writes allocation i's pattern into it. (The fake's device memory is host memory: only a
/// fake lets this process write it directly.)
fn fill_patterns(ptrs: &[*mut u8], sizes: &[usize]) {
    for (i, (&p, &s)) in ptrs.iter().zip(sizes).enumerate() {
        // SAFETY: mapped (resident), s bytes.
        unsafe { ptr::copy_nonoverlapping(pattern(i as u8, s).as_ptr(), p, s) };
    }
}

/// Each allocation holds its pattern, at its address.
fn assert_patterns(ptrs: &[*mut u8], sizes: &[usize]) {
    for (i, (&p, &s)) in ptrs.iter().zip(sizes).enumerate() {
        // SAFETY: mapped (resident), s bytes.
        assert!(unsafe { std::slice::from_raw_parts(p, s) } == pattern(i as u8, s).as_slice(), "allocation {i}");
    }
}

/// Builds the fake libcuda.so into `dir` (with `common::build_fake_cuda`, the one place it is built).
fn build_fake(dir: &Path) {
    common::build_fake_cuda(dir);
}

/// Runs the child test `name` in a process whose libcuda.so is the fake one (the loader reads
/// LD_LIBRARY_PATH once, at start), with the fake's settings `env`: (stdout, stderr).
fn run_child(name: &str, env: &[(&str, &str)]) -> (String, String) {
    let dir = scratch(name);
    build_fake(&dir);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("ACB_CHILD_FAKE_CUDA", "1")
        .env("LD_LIBRARY_PATH", &dir)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("under the fake libcuda: done"), "the child did not run:\n{stdout}\n{stderr}");
    assert!(!stderr.contains("rule broken"), "{stderr}");
    (stdout.into_owned(), stderr.into_owned())
}

#[test]
fn the_cuda_backend_keeps_the_driver_rules_and_moves_memory_between_devices() {
    run_child("child_under_the_fake_driver", &[("FAKECUDA_DEVICES", "2"), ("FAKECUDA_DEVICE_MIB", "1024")]);
}

#[test]
fn short_of_pinned_memory_swaps_go_through_pageable_memory() {
    // libacb is silent unless asked: ACB_LOG=warn prints its warnings on stderr.
    let (_, stderr) = run_child("child_short_of_pinned_memory", &[("FAKECUDA_PINNED_MIB", "8"), ("ACB_LOG", "warn")]);
    assert_eq!(stderr.matches("swapping through pageable host memory").count(), 1, "said once:\n{stderr}");
    let (_, stderr) = run_child("child_short_of_pinned_memory", &[("FAKECUDA_PINNED_MIB", "8"), ("ACB_LOG", "")]);
    assert!(!stderr.contains("pageable"), "libacb logs only when asked:\n{stderr}");
}

/// The child's half of the test above (does nothing unless run by it).
#[test]
fn child_under_the_fake_driver() {
    if std::env::var_os("ACB_CHILD_FAKE_CUDA").is_none() {
        return;
    }
    let fake = Fake::open();
    // A framework's context is current on this thread: libacb's calls must leave it so.
    let framework = fake.push_framework_context(1);
    let a = Assigner::start("fakecuda-child", "fake:2x80GiB");
    let job = Job::with_backend(&a.addr(), "cuda-job", "cuda");
    let other = Job::new(&a.addr(), "other");
    let third = Job::new(&a.addr(), "third");

    let first = job.begin();
    // A slab block, a slab-sized range, ranges of one 64 MiB chunk, and one of two.
    let sizes = [1usize, 4096, 1 << 20, 3 << 20, 100 << 20];
    let ptrs: Vec<*mut u8> = sizes.iter().map(|&s| job.alloc(s).unwrap()).collect();
    for (i, (&p, &s)) in ptrs.iter().zip(&sizes).enumerate() {
        assert_eq!(fake.device_of(p), first as i32, "allocation {i} of {s} bytes is on the granted device");
    }
    fill_patterns(&ptrs, &sizes);
    assert_eq!(acb_client_set_read_only(job.0, ptrs[3].cast(), true), acb_status::Ok);
    // Past what the (fake) device has, though within the lease: out of memory, nothing leaked.
    let before = fake.counts();
    assert_eq!(job.alloc(2 << 30), Err(acb_status::OutOfMemory));
    assert_eq!(fake.counts(), before, "a failed allocation left something behind");

    // Another job takes the other GPU; this job's phase ends and its memory leaves.
    let second = other.begin();
    assert_ne!(second, first);
    job.end();
    job.wait_swapped_out();
    assert!(ptrs.iter().all(|&p| fake.device_of(p) == -1), "swapped-out memory is unmapped");
    let once = job.stats().swapped_out_total;
    // A third takes this job's GPU, the other frees its own: this job moves there.
    assert_eq!(third.begin(), first);
    other.end();
    assert_eq!(job.begin(), second, "the job moved to the other GPU");
    for (i, &p) in ptrs.iter().enumerate() {
        assert_eq!(fake.device_of(p), second as i32, "allocation {i} followed the job");
    }
    assert_patterns(&ptrs, &sizes);
    job.end();
    third.end();
    for _ in 0..3 {
        job.wait_swapped_out();
        job.begin();
        job.end();
    }
    job.wait_swapped_out();
    job.begin();
    assert_patterns(&ptrs, &sizes);
    // What libacb says it copied is what the driver copied.
    let (stats, counts) = (job.stats(), fake.counts());
    assert_eq!((stats.swapped_out_total, stats.swapped_in_total), (counts.copied_to_host, counts.copied_to_device));
    // Five swap-outs and five swap-ins: the read-only range was copied out the first time only.
    let read_only = 3u64 << 20;
    assert_eq!(stats.swapped_out_total, once + 4 * (once - read_only), "{stats:?}");
    assert_eq!(stats.swapped_in_total, 5 * once, "{stats:?}");

    for &p in &ptrs {
        assert_eq!(acb_client_dealloc(job.0, p.cast()), acb_status::Ok);
    }
    job.end();
    drop((job, other, third));
    let end = fake.counts();
    assert_eq!(end.violations, 0, "{end:?}");
    assert_eq!(end.pageable_copies, 0, "every swap went through pinned buffers: {end:?}");
    assert_left_nothing(&end);
    assert_eq!(end.retained_contexts, 1, "only the framework's context stays retained: {end:?}");
    assert_eq!(fake.current_context(), framework, "the framework's context is still current");
    println!("under the fake libcuda: done ({end:?})");
}

/// The child's half of the test above (does nothing unless run by it). The fake driver pins
/// at most 8 MiB: the bigger range is saved in pageable memory.
#[test]
fn child_short_of_pinned_memory() {
    if std::env::var_os("ACB_CHILD_FAKE_CUDA").is_none() {
        return;
    }
    let fake = Fake::open();
    let a = Assigner::start("fakecuda-pinned", "fake:1x80GiB");
    let job = Job::with_backend(&a.addr(), "cuda-job", "cuda");
    job.begin();
    let sizes = [3usize << 20, 40 << 20];
    let ptrs: Vec<*mut u8> = sizes.iter().map(|&s| job.alloc(s).unwrap()).collect();
    fill_patterns(&ptrs, &sizes);
    for _ in 0..3 {
        job.end();
        job.wait_swapped_out();
        job.begin();
    }
    assert_patterns(&ptrs, &sizes);
    let c = fake.counts();
    assert!(c.pageable_copies > 0, "the 40 MiB range went through pageable memory: {c:?}");
    for &p in &ptrs {
        assert_eq!(acb_client_dealloc(job.0, p.cast()), acb_status::Ok);
    }
    job.end();
    drop(job);
    let end = fake.counts();
    assert_eq!(end.violations, 0, "{end:?}");
    assert_left_nothing(&end);
    assert_eq!(end.retained_contexts, 0, "{end:?}");
    println!("under the fake libcuda: done ({end:?})");
}

// ---- The fake driver as a CUDA program sees it: tests/c/driver_app.c over it ----

/// Runs driver_app (`args` before its four operands) over the fake driver: (stdout, stderr,
/// the buffer it wrote).
fn run_driver_app(app: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (String, String, Vec<u8>) {
    let out_file = dir.join(format!("out-{}", args.join("")));
    let out = std::process::Command::new(app)
        .args(args)
        .args(["3", "1000", "1"])
        .arg(&out_file)
        .env("FAKECUDA_REPORT", "1")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "driver_app {args:?} failed:\n{stdout}\n{stderr}");
    (stdout.into_owned(), stderr.into_owned(), std::fs::read(&out_file).unwrap())
}

#[test]
fn driver_app_runs_on_the_fake_driver() {
    let dir = scratch("driver-app");
    common::build_fake_cuda(&dir);
    let app = common::build_driver_app(&dir, &dir);
    let (stdout, stderr, bytes) = run_driver_app(&app, &dir, &[], &[]);
    assert!(stdout.starts_with("driver_app: done phases=3 checksum=0x"), "{stdout}");
    assert_eq!(bytes.len(), 4000);
    // 3 phases of 4 kernels, and no rule broken.
    assert!(stderr.contains("fake libcuda: 0 rule(s) broken, 12 launch(es) run"), "{stderr}");
    for args in [&["--procaddress"][..], &["--ctx-create"], &["--procaddress", "--ctx-create"]] {
        let (out, err, b) = run_driver_app(&app, &dir, args, &[("FAKECUDA_LAUNCH_DELAY_US", "100")]);
        assert_eq!((out.as_str(), b == bytes), (stdout.as_str(), true), "driver_app {args:?}:\n{err}");
        assert!(err.contains("fake libcuda: 0 rule(s) broken, 12 launch(es) run"), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// An LD_PRELOAD library exporting two driver functions, which says when it is called.
const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
typedef int (*launch_fn)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *, void **, void **);
typedef int (*alloc_fn)(unsigned long long *, size_t);
int cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned shared,
                   void *s, void **params, void **extra) {
  launch_fn real;
  void *p = dlsym(RTLD_NEXT, "cuLaunchKernel");
  memcpy(&real, &p, sizeof p);
  fprintf(stderr, "shim: cuLaunchKernel\n");
  return real(f, gx, gy, gz, bx, by, bz, shared, s, params, extra);
}
int cuMemAlloc_v2(unsigned long long *out, size_t n) {
  alloc_fn real;
  void *p = dlsym(RTLD_NEXT, "cuMemAlloc_v2");
  memcpy(&real, &p, sizeof p);
  fprintf(stderr, "shim: cuMemAlloc_v2\n");
  return real(out, n);
}
"#;

/// The fake, like the real driver, hands out its own entry points from cuGetProcAddress: a
/// library preloaded in front of it sees the calls a program makes by name, and none of those
/// it makes through cuGetProcAddress (which an interposer must therefore hook).
#[test]
fn get_proc_address_hands_out_the_drivers_own_functions_under_ld_preload() {
    let dir = scratch("driver-app-preload");
    common::build_fake_cuda(&dir);
    let app = common::build_driver_app(&dir, &dir);
    let src = dir.join("shim.c");
    std::fs::write(&src, SHIM).unwrap();
    let status = std::process::Command::new("gcc")
        .args(["-std=c11", "-Wall", "-Werror", "-shared", "-fPIC", "-o"])
        .arg(dir.join("shim.so"))
        .arg(&src)
        .arg("-ldl")
        .status()
        .unwrap();
    assert!(status.success());
    let preload = dir.join("shim.so");
    let preload = [("LD_PRELOAD", preload.to_str().unwrap())];
    let (plain, err, bytes) = run_driver_app(&app, &dir, &[], &preload);
    assert_eq!(
        (err.matches("shim: cuLaunchKernel").count(), err.matches("shim: cuMemAlloc_v2").count()),
        (12, 2),
        "{err}"
    );
    let (out, err, b) = run_driver_app(&app, &dir, &["--procaddress"], &preload);
    assert!(!err.contains("shim:"), "cuGetProcAddress handed out the preloaded functions:\n{err}");
    assert_eq!((out, b), (plain, bytes));
    let _ = std::fs::remove_dir_all(dir);
}

impl Fake {
    /// A fake libcuda of its own in this process, from `path` (its state is not shared with
    /// any other copy).
    fn load(path: &Path) -> Fake {
        let name = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        assert!(!h.is_null(), "{} did not load", path.display());
        Fake(h)
    }

    fn addr(&self, name: &CStr) -> *mut c_void {
        self.sym(name)
    }
}

type LaunchFn = extern "C" fn(
    *mut c_void,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    *mut c_void,
    *mut *mut c_void,
    *mut *mut c_void,
) -> i32;

/// A kernel running on memory that is reserved but not mapped (or freed) breaks a rule: the next
/// synchronising call says CUDA_ERROR_ILLEGAL_ADDRESS, once, and the kernel touched nothing; on
/// memory mapped and accessible it runs. Unmapping memory under a queued kernel breaks a rule.
#[test]
fn a_kernel_on_unmapped_memory_is_an_illegal_address_not_a_crash() {
    let dir = scratch("fake-illegal-address");
    let fake = Fake::load(&common::build_fake_cuda(&dir));
    let sync: extern "C" fn() -> i32 = fake.sym(c"cuCtxSynchronize");
    let reserve: extern "C" fn(*mut u64, usize, usize, u64, u64) -> i32 = fake.sym(c"cuMemAddressReserve");
    let create: extern "C" fn(*mut u64, usize, *const [u8; 32], u64) -> i32 = fake.sym(c"cuMemCreate");
    let map: extern "C" fn(u64, usize, usize, u64, u64) -> i32 = fake.sym(c"cuMemMap");
    let unmap: extern "C" fn(u64, usize) -> i32 = fake.sym(c"cuMemUnmap");
    let set_access: extern "C" fn(u64, usize, *const [i32; 3], usize) -> i32 = fake.sym(c"cuMemSetAccess");
    let load: extern "C" fn(*mut *mut c_void, *const u8) -> i32 = fake.sym(c"cuModuleLoadData");
    let function: extern "C" fn(*mut *mut c_void, *mut c_void, *const libc::c_char) -> i32 =
        fake.sym(c"cuModuleGetFunction");
    let launch: LaunchFn = fake.sym(c"cuLaunchKernel");
    let alloc: extern "C" fn(*mut u64, usize) -> i32 = fake.sym(c"cuMemAlloc_v2");
    let free: extern "C" fn(u64) -> i32 = fake.sym(c"cuMemFree_v2");
    let launches: extern "C" fn() -> u64 = fake.sym(c"fakecuda_launches");
    fake.push_framework_context(0);

    let (mut module, mut add) = (ptr::null_mut(), ptr::null_mut());
    assert_eq!(load(&mut module, c"not-an-image".as_ptr().cast()), 200);
    assert_eq!(load(&mut module, c"fakecuda-kernels".as_ptr().cast()), 0);
    assert_eq!(function(&mut add, module, c"no_such_kernel".as_ptr()), 500);
    assert_eq!(function(&mut add, module, c"add_u32".as_ptr()), 0);
    let add_u32 = |buf: u64, n: u32, v: u32| {
        let (mut buf, mut n, mut v) = (buf, n, v);
        let mut params = [(&raw mut buf).cast::<c_void>(), (&raw mut n).cast(), (&raw mut v).cast()];
        launch(add, 1, 1, 1, 32, 1, 1, 0, ptr::null_mut(), params.as_mut_ptr(), ptr::null_mut())
    };

    // Reserved, not mapped: the launch is queued; running it is the broken rule.
    let granularity = 2usize << 20;
    let mut va = 0u64;
    assert_eq!(reserve(&mut va, granularity, 0, 0, 0), 0);
    assert_eq!(add_u32(va, 16, 1), 0, "a launch is asynchronous: nothing is checked yet");
    assert_eq!(fake.counts().queued_copies, 1);
    assert_eq!(sync(), 700, "CUDA_ERROR_ILLEGAL_ADDRESS");
    assert_eq!(sync(), 0, "reported once");
    assert_eq!((fake.counts().violations, launches()), (1, 0));

    // Mapped, but no access set yet: the same.
    let mut prop = [0u8; 32];
    prop[0] = 1; // CU_MEM_ALLOCATION_TYPE_PINNED; location (type 1, device 0) at offset 8
    prop[8] = 1;
    let mut handle = 0u64;
    assert_eq!(create(&mut handle, granularity, &prop, 0), 0);
    assert_eq!(map(va, granularity, 0, handle, 0), 0);
    assert_eq!(add_u32(va, 16, 1), 0);
    assert_eq!(sync(), 700);
    assert_eq!(fake.counts().violations, 2);
    // Accessible: it runs (the fake's device memory is host memory, readable here).
    let desc = [1i32, 0, 3]; // a device location, device 0, read-write
    assert_eq!(set_access(va, granularity, &desc, 1), 0);
    assert_eq!(add_u32(va, 16, 5), 0);
    assert_eq!(sync(), 0);
    assert_eq!(launches(), 1);
    // SAFETY: mapped and accessible, 16 u32.
    let words = unsafe { std::slice::from_raw_parts(va as *const u32, 17) };
    assert_eq!((words[0], words[15], words[16]), (5, 5, 0), "the failed kernels touched nothing");
    // Unmapping under a queued kernel is a broken rule (and refused), then the kernel runs.
    assert_eq!(add_u32(va, 16, 1), 0);
    assert_eq!(unmap(va, granularity), 1);
    assert_eq!(fake.counts().violations, 3);
    assert_eq!((sync(), launches()), (0, 2));
    assert_eq!(unmap(va, granularity), 0);

    // cuMemAlloc'd memory: usable until freed, an illegal address after.
    let mut p = 0u64;
    assert_eq!(alloc(&mut p, 64), 0);
    assert_eq!((add_u32(p, 16, 2), sync()), (0, 0));
    assert_eq!(free(p), 0);
    assert_eq!(add_u32(p, 16, 2), 0);
    assert_eq!(sync(), 700);
    assert_eq!((fake.counts().violations, launches()), (4, 3));
    let _ = std::fs::remove_dir_all(dir);
}

/// cuGetProcAddress knows every cu* function the fake exports, by base name, and hands out the
/// exported function itself (the per-thread-default-stream form with that flag); an unknown
/// name, or a version older than the fake's ABI, is CUDA_ERROR_NOT_FOUND.
#[test]
fn get_proc_address_covers_every_exported_function() {
    let dir = scratch("fake-procaddress");
    let lib = common::build_fake_cuda(&dir);
    let fake = Fake::load(&lib);
    let gpa: extern "C" fn(*const libc::c_char, *mut *mut c_void, i32, u64, *mut i32) -> i32 =
        fake.sym(c"cuGetProcAddress_v2");
    let nm = std::process::Command::new("nm").args(["-D", "--defined-only"]).arg(&lib).output().unwrap();
    assert!(nm.status.success(), "nm (binutils) is needed");
    let names: Vec<String> = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|n| n.starts_with("cu"))
        .map(str::to_owned)
        .collect();
    assert!(names.len() > 60, "{names:?}");
    for name in &names {
        let per_thread = name.ends_with("_ptsz") || name.ends_with("_ptds");
        let base = name.trim_end_matches("_ptsz").trim_end_matches("_ptds").trim_end_matches("_v2");
        let version = if name == "cuGetProcAddress" { 11030 } else { 12080 };
        let (mut p, mut status) = (ptr::null_mut(), -1);
        let base_c = std::ffi::CString::new(base).unwrap();
        let r = gpa(base_c.as_ptr(), &mut p, version, if per_thread { 2 } else { 0 }, &mut status);
        let exported = fake.addr(&std::ffi::CString::new(name.as_str()).unwrap());
        assert_eq!((r, status, p), (0, 0, exported), "cuGetProcAddress({base}) for {name}");
    }
    let (mut p, mut status) = (ptr::null_mut::<c_void>(), -1);
    assert_eq!(gpa(c"cuNoSuchFunction".as_ptr(), &mut p, 12080, 0, &mut status), 500);
    assert_eq!((p, status), (ptr::null_mut(), 1));
    assert_eq!(gpa(c"cuMemAlloc".as_ptr(), &mut p, 3000, 0, &mut status), 500);
    assert_eq!((p, status), (ptr::null_mut(), 2));
    let _ = std::fs::remove_dir_all(dir);
}
