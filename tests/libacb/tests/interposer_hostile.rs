//! Hostile, outside-in tests of the CUDA interposer (`libacb_preload.so`) in automatic mode:
//! `tests/c/driver_hostile.c` is a driver-API program that `dlopen`s the FAKE libcuda
//! RTLD_LOCAL and `dlsym`s every function, run under the interposer and libacb against an
//! in-process assigner, with many threads, several contexts, fork, early exits, bad settings,
//! a missing or dying assigner, huge allocations and sanitizers. Every run is bounded in time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use acb_core::record::EventKind;
use common::{Assigner, build_fake_cuda, lib_dir, link_dir, scratch};

struct Bed {
    dir: PathBuf,
    fake_dir: PathBuf,
    app: PathBuf,
}

fn gcc(args: &[&str], src: &Path, out: &Path) {
    let o = Command::new("gcc")
        .args(["-std=c11", "-O1", "-g", "-Wall", "-Wextra", "-Werror"])
        .args(args)
        .arg("-o")
        .arg(out)
        .arg(src)
        .args(["-ldl", "-lpthread"])
        .output()
        .expect("gcc is needed");
    assert!(o.status.success(), "building {} failed:\n{}", out.display(), String::from_utf8_lossy(&o.stderr));
}

fn source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/driver_hostile.c")
}

impl Bed {
    fn new(tag: &str) -> Bed {
        let dir = scratch(&format!("{tag}-hostile"));
        let fake_dir = dir.join("fake");
        std::fs::create_dir_all(&fake_dir).unwrap();
        build_fake_cuda(&fake_dir);
        let app = dir.join("driver_hostile");
        gcc(&[], &source(), &app);
        Bed { dir, fake_dir, app }
    }

    fn preload() -> String {
        let preload = lib_dir().join("libacb_preload.so");
        assert!(preload.exists(), "{} not built", preload.display());
        let libacb = link_dir().join(format!("libacb.so.{}", acb::ACB_ABI_VERSION));
        format!("{} {}", preload.display(), libacb.display())
    }

    /// The program under automatic mode (eager releases, `idle_ms` of idle time).
    fn command(&self, addr: &str, job: &str, idle_ms: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.app);
        cmd.args(args)
            .env("LD_LIBRARY_PATH", &self.fake_dir)
            .env("FAKECUDA_REPORT", "1")
            .env("LD_PRELOAD", Self::preload())
            .env("ACB_MODE", "auto")
            .env("ACB_ASSIGNER", addr)
            .env("ACB_JOB_ID", job)
            .env("ACB_IDLE_MS", idle_ms)
            .env("ACB_EAGER_RELEASE", "1")
            .env("IDLE_WAIT_MS", "150")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits for `child` at most `limit`; kills it (by its pid) and fails if it runs longer.
fn bounded(mut child: Child, limit: Duration, what: &str) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what}: still running after {limit:?} (hung):\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run(cmd: &mut Command, what: &str) -> Output {
    bounded(cmd.spawn().unwrap(), Duration::from_secs(20), what)
}

/// Succeeded, printed "hostile: ok", broke no driver rule; returns (stdout, stderr).
fn ok(out: &Output, what: &str) -> (String, String) {
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "{what} failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("hostile: ok"), "{what}:\n{stdout}\n{stderr}");
    assert!(!stderr.contains("rule broken"), "{what} broke a driver rule:\n{stderr}");
    (stdout, stderr)
}

fn brokered(out: &Output, what: &str) {
    let (stdout, stderr) = ok(out, what);
    assert!(!stderr.contains("unbrokered"), "{what} fell back to running unbrokered:\n{stdout}\n{stderr}");
}

/// (grants, releases) of `job`'s leases in the assigner's record.
fn grants(a: &Assigner, job: &str) -> (usize, usize) {
    let mut mine = std::collections::BTreeSet::new();
    let (mut granted, mut released) = (0, 0);
    for e in a.events() {
        match &e.kind {
            EventKind::Granted { job: j, lease, .. } if j == job => {
                granted += 1;
                mine.insert(*lease);
            }
            EventKind::Released { lease, .. } if mine.contains(lease) => released += 1,
            _ => {}
        }
    }
    (granted, released)
}

#[test]
fn many_threads_launching_while_the_idle_thread_releases_keep_their_results() {
    let bed = Bed::new("threads");
    let a = Assigner::start("hostile-threads", "fake:1x80GiB");
    for (idle, delay) in [("1", "500"), ("3", "2000"), ("5", "0")] {
        let job = format!("threads-{idle}");
        let out = run(
            bed.command(&a.addr(), &job, idle, &["threads", "8", "25"]).env("FAKECUDA_LAUNCH_DELAY_US", delay),
            &job,
        );
        brokered(&out, &job);
        let (g, _) = grants(&a, &job);
        assert!(idle == "5" || g >= 2, "{job}: {g} grants: the idle thread never released between launches");
    }
}

#[test]
fn a_thread_waiting_in_synchronize_on_long_kernels_is_not_released_under() {
    let bed = Bed::new("syncwait");
    let a = Assigner::start("hostile-syncwait", "fake:1x80GiB");
    let out = run(bed.command(&a.addr(), "sync", "2", &["syncwait"]).env("FAKECUDA_LAUNCH_DELAY_US", "300000"), "sync");
    brokered(&out, "syncwait");
}

#[test]
fn freeing_libacb_memory_with_kernels_queued_waits_for_them() {
    let bed = Bed::new("free");
    let a = Assigner::start("hostile-free", "fake:1x80GiB");
    let out = run(
        bed.command(&a.addr(), "free", "5", &["free-queued"]).env("FAKECUDA_LAUNCH_DELAY_US", "50000"),
        "free-queued",
    );
    brokered(&out, "free-queued");
}

/// FAULT: the idle thread synchronises only the contexts current on threads that BEGAN a
/// phase. Work queued from another context (here a second cuCtxCreate context, made while the
/// phase was active) is still queued when the memory is unmapped: the fake refuses the unmap
/// ("cuMemUnmap of memory queued work still uses"), the next swap-in then fails and automatic
/// mode gives up (on a real GPU the kernel would fault on unmapped memory).
#[test]
fn work_queued_from_a_second_context_is_finished_before_a_release() {
    let bed = Bed::new("ctx2");
    let a = Assigner::start("hostile-ctx2", "fake:1x80GiB");
    let out = run(bed.command(&a.addr(), "ctx2", "5", &["second-ctx"]).env("FAKECUDA_LAUNCH_DELAY_US", "2000"), "ctx2");
    brokered(&out, "second-ctx");
}

/// FAULT: a context destroyed by the program stays in the idle thread's list; the next release
/// pushes it and calls cuCtxSynchronize on it (the fake: "cuCtxSynchronize on a released
/// context"; the real driver: use of a destroyed context, undefined).
#[test]
fn a_destroyed_context_is_not_used_at_the_next_release() {
    let bed = Bed::new("destroy");
    let a = Assigner::start("hostile-destroy", "fake:1x80GiB");
    let out = run(&mut bed.command(&a.addr(), "destroy", "5", &["destroy-ctx"]), "destroy-ctx");
    brokered(&out, "destroy-ctx");
}

/// FAULT: programs built for the per-thread default stream (nvcc --default-stream per-thread,
/// CUDA_API_PER_THREAD_DEFAULT_STREAM) call cuMemsetD8/16/32_v2_ptds and
/// cuMemsetD8/16/32Async_ptsz, which the interposer does not gate: after a release the memset
/// reaches the driver with the memory swapped out.
#[test]
fn per_thread_default_stream_memsets_are_gated() {
    let bed = Bed::new("ptds");
    let a = Assigner::start("hostile-ptds", "fake:1x80GiB");
    let out = run(&mut bed.command(&a.addr(), "ptds", "5", &["ptds"]), "ptds");
    brokered(&out, "ptds");
}

#[test]
fn fork_after_automatic_mode_started_does_not_hang_or_break_the_parent() {
    let bed = Bed::new("fork");
    let a = Assigner::start("hostile-fork", "fake:1x80GiB");
    for child in ["exit", "cuda"] {
        let job = format!("fork-{child}");
        let out = run(&mut bed.command(&a.addr(), &job, "5", &["fork", child]), &job);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{job}: the parent failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("hostile: child exited 0"), "{job}: the child hung or crashed:\n{stdout}");
        assert!(stdout.contains("hostile: ok"), "{job}:\n{stdout}");
    }
}

fn wait_granted(a: &Assigner, job: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while grants(a, job).0 < 1 {
        assert!(Instant::now() < deadline, "{job} was never granted");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_released(a: &Assigner, job: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (g, r) = grants(a, job);
        if g >= 1 && r >= g {
            return;
        }
        assert!(Instant::now() < deadline, "{job}: {g} grants, {r} releases: the lease outlived its process");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_program_that_exits_or_is_killed_mid_phase_gives_its_lease_back() {
    let bed = Bed::new("hold");
    let a = Assigner::start("hostile-hold", "fake:1x80GiB");
    // Long idle time: the phase is still held when the program goes.
    let out = run(&mut bed.command(&a.addr(), "exits", "60000", &["hold", "exit"]), "exits");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_released(&a, "exits");
    let child = bed.command(&a.addr(), "killed", "60000", &["hold"]).spawn().unwrap();
    wait_granted(&a, "killed");
    // SAFETY: kill(2) on the pid of the child this test spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = bounded(child, Duration::from_secs(5), "killed");
    wait_released(&a, "killed");
    // And the GPU is usable by the next job.
    let out = run(&mut bed.command(&a.addr(), "next", "5", &["phases", "2"]), "next");
    brokered(&out, "next");
}

#[test]
fn no_assigner_or_bad_settings_run_unbrokered_with_a_clear_message() {
    let bed = Bed::new("settings");
    let a = Assigner::start("hostile-settings", "fake:1x80GiB");
    let missing = format!("unix:{}", bed.dir.join("nobody.sock").display());
    let cases: &[(&str, &str, &str, &str)] = &[
        ("ACB_ASSIGNER", &missing, "cannot reach the assigner", "missing"),
        ("ACB_IDLE_MS", "abc", "ACB_IDLE_MS", "idle"),
        ("ACB_IDLE_MS", "-5", "ACB_IDLE_MS", "idle-neg"),
        ("ACB_GPUS", "zz", "ACB_GPUS", "gpus"),
        ("ACB_GPUS", "0", "ACB_GPUS", "gpus0"),
        ("ACB_GPUS", "99", "refused", "gpus99"),
        ("ACB_MEMORY", "lots", "ACB_MEMORY", "mem"),
        ("ACB_MEMORY", "999TiB", "refused", "memhuge"),
    ];
    for (var, value, says, job) in cases {
        let started = Instant::now();
        let out = run(bed.command(&a.addr(), job, "5", &["phases", "2"]).env(var, value), job);
        let (_, stderr) = ok(&out, &format!("{var}={value}"));
        assert!(stderr.contains("unbrokered") && stderr.contains(says), "{var}={value}: no clear message:\n{stderr}");
        assert!(started.elapsed() < Duration::from_secs(15), "{var}={value}: took {:?}", started.elapsed());
    }
    // ACB_IDLE_MS=0: releases as soon as possible, still correct.
    let out = run(&mut bed.command(&a.addr(), "idle0", "0", &["phases", "3"]), "idle0");
    brokered(&out, "ACB_IDLE_MS=0");
}

/// FAULT: the assigner goes away while the program is in a CPU phase (its memory swapped out
/// by the eager release). The next launch cannot get a GPU; libacb says "the program runs
/// unbrokered from now on" but the memory is never brought back: the next copy meets unmapped
/// memory and the program dies with a driver error (it should get its memory back and go on
/// unbrokered, or fail with a clear message).
#[test]
fn an_assigner_that_dies_mid_run_does_not_hang_the_program() {
    let bed = Bed::new("dies");
    let a = Assigner::start("hostile-dies", "fake:1x80GiB");
    let child = bed.command(&a.addr(), "dies", "5", &["phases", "6"]).env("IDLE_WAIT_MS", "400").spawn().unwrap();
    wait_granted(&a, "dies");
    drop(a);
    let out = bounded(child, Duration::from_secs(20), "assigner died");
    let (stdout, stderr) = ok(&out, "assigner died");
    assert!(stdout.contains("hostile: phase 5"), "{stdout}\n{stderr}");
}

#[test]
fn huge_allocations_fail_cleanly_and_the_program_goes_on() {
    let bed = Bed::new("huge");
    let a = Assigner::start("hostile-huge", "fake:1x80GiB");
    let out = run(bed.command(&a.addr(), "huge", "5", &["huge"]).env("FAKECUDA_DEVICE_MIB", "1024"), "huge");
    brokered(&out, "huge");
}

#[test]
fn the_interposer_preloaded_alone_finds_libacb_or_says_it_runs_unbrokered() {
    let bed = Bed::new("alone");
    let a = Assigner::start("hostile-alone", "fake:1x80GiB");
    // Beside libacb (cargo's output folder): found and brokered.
    let preload = lib_dir().join("libacb_preload.so");
    let out = run(bed.command(&a.addr(), "beside", "5", &["phases", "2"]).env("LD_PRELOAD", &preload), "beside");
    brokered(&out, "preload alone, beside libacb");
    assert!(grants(&a, "beside").0 >= 1);
    // Somewhere libacb is not: a clear message, and the program runs.
    let lonely = bed.dir.join("lonely");
    std::fs::create_dir_all(&lonely).unwrap();
    std::fs::copy(&preload, lonely.join("libacb_preload.so")).unwrap();
    let out = run(
        bed.command(&a.addr(), "lonely", "5", &["phases", "2"]).env("LD_PRELOAD", lonely.join("libacb_preload.so")),
        "lonely",
    );
    let (_, stderr) = ok(&out, "preload alone, no libacb");
    assert!(stderr.contains("libacb was not found"), "{stderr}");
}

#[test]
fn an_earlier_preloaded_shim_still_sees_the_launches() {
    let bed = Bed::new("shim");
    let a = Assigner::start("hostile-shim", "fake:1x80GiB");
    let shim = bed.dir.join("shim.so");
    gcc(&["-DSHIM", "-shared", "-fPIC"], &source(), &shim);
    let out = run(
        bed.command(&a.addr(), "shim", "5", &["shim"])
            .env("LD_PRELOAD", format!("{} {}", shim.display(), Bed::preload())),
        "shim",
    );
    let (stdout, _) = ok(&out, "shim");
    assert!(stdout.contains("hostile: shim launches 1"), "{stdout}");
}

#[test]
fn a_sanitized_program_runs_under_the_interposer() {
    let bed = Bed::new("asan");
    let a = Assigner::start("hostile-asan", "fake:1x80GiB");
    let app = bed.dir.join("driver_hostile_asan");
    gcc(&["-fsanitize=address,undefined", "-fno-sanitize-recover=all"], &source(), &app);
    let mut cmd = bed.command(&a.addr(), "asan", "5", &["threads", "4", "10"]);
    cmd.env("ASAN_OPTIONS", "verify_asan_link_order=0:detect_leaks=0");
    let mut cmd2 = Command::new(&app);
    cmd2.args(["threads", "4", "10"]);
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            cmd2.env(k, v);
        }
    }
    cmd2.stdout(Stdio::piped()).stderr(Stdio::piped());
    let out = run(&mut cmd2, "asan");
    brokered(&out, "sanitized program");
}
