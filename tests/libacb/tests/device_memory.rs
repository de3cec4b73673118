//! Swappable device memory through the C ABI (host backend), against a real assigner: a job's
//! allocations leave for host memory when another job takes its GPU, come back byte-exact at
//! the same addresses when it gets one again, and the assigner hears how much was swapped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::ptr;
use std::time::{Duration, Instant};

use acb::acb_status;
use acb::allocator::{
    acb_allocator_free, acb_allocator_malloc, acb_allocator_malloc_or_abort, acb_allocator_set_client,
};
use acb::client::{acb_client_free, acb_client_new};
use acb::config::{acb_config_free, acb_config_new, acb_config_set_memory_backend};
use acb::device_memory::{acb_client_dealloc, acb_client_set_read_only};
use acb::error::acb_error_message;
use common::{Assigner, Job, pattern};

#[test]
fn memory_leaves_with_the_gpu_and_comes_back_exact_at_the_same_addresses() {
    let a = Assigner::start("memory", "fake:1x80GiB");
    let job_a = Job::new(&a.addr(), "mem-a");
    let job_b = Job::new(&a.addr(), "mem-b");

    assert_eq!(job_a.alloc(4096), Err(acb_status::NotActive), "memory is allocated in a GPU phase");
    job_a.begin();
    let (big, weights) = (3 << 20, 1 << 20);
    let p = job_a.alloc(big).unwrap();
    let w = job_a.alloc(weights).unwrap();
    // SAFETY: resident allocations of these sizes.
    unsafe {
        ptr::copy_nonoverlapping(pattern(1, big).as_ptr(), p, big);
        ptr::copy_nonoverlapping(pattern(2, weights).as_ptr(), w, weights);
    }
    assert_eq!(acb_client_set_read_only(job_a.0, w.cast(), true), acb_status::Ok);
    // Past the lease's memory (the whole simulated GPU, 80 GiB): refused, in this process only.
    assert_eq!(job_a.alloc(81 << 30), Err(acb_status::OutOfMemory));
    job_a.end();
    job_a.wait_swapped_out();
    let s = job_a.stats();
    assert_eq!((s.allocations, s.swapped_bytes), (2, (big + weights) as u64));
    assert_eq!(s.swapped_out_total, (big + weights) as u64);

    // B takes the GPU while A's memory is in host memory.
    job_b.begin();
    let q = job_b.alloc(1 << 20).unwrap();
    job_b.end();

    // A again: its bytes are back where they were before begin returns.
    job_a.begin();
    // SAFETY: resident again, same sizes.
    unsafe {
        assert!(std::slice::from_raw_parts(p, big) == pattern(1, big).as_slice(), "writable allocation changed");
        assert!(std::slice::from_raw_parts(w, weights) == pattern(2, weights).as_slice(), "weights changed");
    }
    job_a.end();
    job_a.wait_swapped_out();
    // The weights' host copy was kept: the second swap-out copied only the writable bytes.
    assert_eq!(job_a.stats().swapped_out_total, (2 * big + weights) as u64);
    assert_eq!(job_a.stats().swapped_in_total, (big + weights) as u64);

    // The assigner heard what A swapped (its metrics and status count it).
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0usize;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(
            acb::client::acb_client_status_json(job_a.0, buf.as_mut_ptr().cast(), buf.len(), &mut n),
            acb_status::Ok
        );
        let status: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
        let clients = status["clients"].as_array().cloned().unwrap_or_default();
        let a_out = clients.iter().find(|c| c["job"] == "mem-a").and_then(|c| c["swap_bytes_out"].as_u64());
        if a_out == Some((2 * big + weights) as u64) {
            break;
        }
        assert!(Instant::now() < deadline, "the assigner did not hear of A's swaps: {status}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Frees: resident or swapped out; NULL does nothing; twice is refused.
    assert_eq!(acb_client_dealloc(job_a.0, p.cast()), acb_status::Ok);
    assert_eq!(acb_client_dealloc(job_a.0, p.cast()), acb_status::InvalidArgument);
    assert_eq!(acb_client_dealloc(job_a.0, ptr::null_mut()), acb_status::Ok);
    assert_eq!(acb_client_dealloc(job_b.0, q.cast()), acb_status::Ok);
    assert_eq!(job_a.stats().allocations, 1);
}

#[test]
fn the_cuda_backend_without_a_driver_is_a_clear_error() {
    let mut cfg = ptr::null_mut();
    assert_eq!(acb_config_new(&mut cfg), acb_status::Ok);
    assert_eq!(acb_config_set_memory_backend(cfg, "gpu".as_ptr().cast(), 3), acb_status::InvalidArgument);
    assert_eq!(acb_config_set_memory_backend(cfg, "cuda".as_ptr().cast(), 4), acb_status::Ok);
    let mut c = ptr::null_mut();
    let st = acb_client_new(cfg, &mut c);
    // The details of a failure are there until the thread's next call.
    let mut buf = [0u8; 512];
    let mut n = 0usize;
    assert_eq!(acb_error_message(buf.as_mut_ptr().cast(), buf.len(), &mut n), acb_status::Ok);
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    acb_config_free(cfg);
    if st == acb_status::Ok {
        eprintln!("a CUDA driver and GPU are present here: the CUDA backend was made");
        acb_client_free(c);
        return;
    }
    assert_eq!(st, acb_status::NoCuda);
    assert!(c.is_null(), "outputs are written only on success");
    assert!(msg.contains("no CUDA driver") || msg.contains("no GPU"), "{msg}");
}

/// PyTorch's pluggable-allocator entry points go to the client set for them, in its GPU phases.
#[test]
fn the_pluggable_allocator_entry_points_use_the_set_client() {
    let a = Assigner::start("allocator", "fake:1x80GiB");
    let job = Job::new(&a.addr(), "torch-like");
    assert!(acb_allocator_malloc(4096, 0, ptr::null_mut()).is_null(), "no client set yet");
    assert_eq!(acb_allocator_set_client(job.0), acb_status::Ok);
    assert!(acb_allocator_malloc(4096, 0, ptr::null_mut()).is_null(), "outside a GPU phase");
    job.begin();
    assert!(acb_allocator_malloc(-1, 0, ptr::null_mut()).is_null(), "a negative size");
    let p = acb_allocator_malloc(1 << 20, 0, ptr::null_mut());
    assert!(!p.is_null());
    // SAFETY: 1 MiB, resident in the phase.
    unsafe { ptr::write_bytes(p.cast::<u8>(), 0xab, 1 << 20) };
    assert_eq!(job.stats().allocations, 1);
    acb_allocator_free(p, 1 << 20, 0, ptr::null_mut());
    acb_allocator_free(ptr::null_mut(), 0, 0, ptr::null_mut());
    assert_eq!(job.stats().allocations, 0);
    job.end();
    drop(job); // acb_client_free unsets it
    assert!(acb_allocator_malloc(4096, 0, ptr::null_mut()).is_null());
}

/// The child's half of the test below: ask for memory with no client set (and die of it).
#[test]
fn child_mallocs_without_a_client() {
    if std::env::var_os("ACB_CHILD_MALLOC").is_none() {
        return;
    }
    let p = acb_allocator_malloc_or_abort(4096, 0, ptr::null_mut());
    println!("got {p:?}: no abort");
}

/// PyTorch uses what its allocator returns, NULL included: the variant it is given says why it
/// cannot allocate and aborts, rather than return NULL for a non-zero size.
#[test]
fn the_abort_variant_says_why_and_aborts() {
    use std::os::unix::process::ExitStatusExt;
    assert!(acb_allocator_malloc_or_abort(0, 0, ptr::null_mut()).is_null(), "0 bytes: NULL, no abort");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_mallocs_without_a_client", "--nocapture", "--test-threads=1"])
        .env("ACB_CHILD_MALLOC", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{:?}\n{stderr}", out.status);
    assert!(stderr.contains("libacb: no device memory for 4096 bytes: no client is set"), "{stderr}");
}
