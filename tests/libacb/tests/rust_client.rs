//! A Rust program as an acb client with no C in between: `acb_client::Client` against a real
//! assigner. Two jobs share one simulated GPU; each keeps swappable memory, which leaves when
//! the other takes the GPU and comes back, byte-exact at the same address.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use acb_client::{Client, Config, Error, MemoryBackend, ReleaseMode, Request};
use common::Assigner;

fn client(assigner: &Assigner, job: &str) -> Client {
    let config = Config {
        assigner: assigner.addr().parse().unwrap(),
        job: job.into(),
        connect_timeout: Duration::from_secs(2),
        connect_retries: 3,
        release: ReleaseMode::Lazy,
        idle_timeout: None,
        auth_token: None,
        memory_backend: MemoryBackend::Host,
        pin_gpus: false,
        required_gpus: Vec::new(),
        assigner_uid: None,
        group: None,
    };
    Client::new(config).unwrap()
}

#[test]
fn two_rust_jobs_share_one_gpu_and_keep_their_memory() {
    let assigner = Assigner::start("rust-client", "fake:1x1GiB");
    let (a, b) = (client(&assigner, "rust-a"), client(&assigner, "rust-b"));
    let size = 3 << 20;

    let lease = a.begin(&Request::default()).unwrap();
    assert_eq!(lease.devices.len(), 1);
    let p = a.alloc(size).unwrap();
    // SAFETY: `size` bytes, resident while a's phase lasts.
    unsafe { std::ptr::write_bytes(p.as_ptr(), 0x5a, size) };
    a.end().unwrap();

    // b takes the only GPU: a, idle and holding it lazily, is asked to yield, and its memory
    // leaves the (simulated) device.
    let timed = Request { timeout: Some(Duration::from_secs(10)), ..Request::default() };
    b.begin(&timed).unwrap();
    assert_eq!(a.memory_stats().resident_bytes, 0, "{:?}", a.memory_stats());
    assert!(a.memory_stats().swapped_out_total >= size as u64);
    // Outside a phase there is no device memory to allocate.
    assert!(matches!(a.alloc(1), Err(Error::NotActive(_))));
    b.end().unwrap();

    // a's next phase waits for the GPU (b keeps it lazily until asked) and gets its bytes back.
    a.begin(&timed).unwrap();
    // SAFETY: resident again, same address, same size.
    let back = unsafe { std::slice::from_raw_parts(p.as_ptr(), size) };
    assert!(back.iter().all(|&x| x == 0x5a), "a's memory came back changed");
    a.free(p.as_ptr()).unwrap();
    assert!(matches!(a.free(p.as_ptr()), Err(Error::InvalidArgument(_))), "a second free is refused");
    assert!(matches!(a.begin(&timed), Err(Error::AlreadyActive(_))));
    a.end().unwrap();
    assert!(matches!(a.end(), Err(Error::NotActive(_))));
    assert!(matches!(a.begin(&Request { gpus: 0, ..Request::default() }), Err(Error::InvalidArgument(_))));

    let status: serde_json::Value = serde_json::from_str(&a.status_json().unwrap()).unwrap();
    let jobs: Vec<&str> = status["clients"].as_array().unwrap().iter().filter_map(|c| c["job"].as_str()).collect();
    assert!(jobs.contains(&"rust-a") && jobs.contains(&"rust-b"), "{status}");
}

#[test]
fn no_assigner_is_unavailable_after_the_retries() {
    let dir = common::scratch("rust-none");
    let config = Config {
        assigner: format!("unix:{}", dir.join("nobody.sock").display()).parse().unwrap(),
        job: "lonely".into(),
        connect_timeout: Duration::from_millis(200),
        connect_retries: 1,
        release: ReleaseMode::Eager,
        idle_timeout: None,
        auth_token: None,
        memory_backend: MemoryBackend::Host,
        pin_gpus: false,
        required_gpus: Vec::new(),
        assigner_uid: None,
        group: None,
    };
    let c = Client::new(config).unwrap();
    match c.begin(&Request::default()) {
        Err(Error::Unavailable(why)) => assert!(why.contains("after 2 attempts"), "{why}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}
