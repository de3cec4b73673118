//! libacb's CUDA backend, run where there is no GPU: against a FAKE libcuda.so (a test double
//! in tests/fake_cuda/libcuda.c, over host memory) that checks the rules the real driver
//! imposes: a current context for the calls that need one, streams of the current context,
//! whole-handle mappings inside reserved ranges, copies that really are asynchronous (so that
//! unmapping or freeing with a copy queued is caught), host buffers from cuMemHostAlloc. It
//! proves the backend keeps those rules and moves a job's memory between (fake) devices byte-exact
//! at the same addresses; it proves nothing about a real GPU's speed or its driver's quirks.
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

/// Builds the fake libcuda.so into `dir`.
fn build_fake(dir: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake_cuda/libcuda.c");
    let out = std::process::Command::new("gcc")
        .args(["-O1", "-Wall", "-Werror", "-std=c11", "-shared", "-fPIC", "-o"])
        .arg(dir.join("libcuda.so"))
        .arg(&src)
        .arg("-lpthread")
        .output()
        .expect("gcc is needed to build the fake libcuda");
    assert!(out.status.success(), "building the fake libcuda failed:\n{}", String::from_utf8_lossy(&out.stderr));
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
