//! Automatic mode at the CUDA driver: `libacb_preload.so` between an unmodified CUDA program and
//! the driver. The program is `tests/c/driver_app.c`, written against the driver API with no
//! acb in it; the driver is the FAKE libcuda (a test double over host memory whose kernels run
//! host functions on the buffers, asynchronously, and refuse memory that is not mapped: a
//! launch that reached the driver while the program's memory was swapped out would fail with
//! ILLEGAL_ADDRESS, and the program exits 1). The assigner is real, in this process, with
//! simulated GPUs. Releases are eager here (`ACB_EAGER_RELEASE=1`), so every release really
//! moves the memory out, and every phase after it must bring it back first.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use acb_core::record::EventKind;
use common::{Assigner, build_driver_app, build_fake_cuda, lib_dir, link_dir, scratch};

struct Bed {
    dir: PathBuf,
    fake_dir: PathBuf,
    app: PathBuf,
}

impl Bed {
    fn new(tag: &str) -> Bed {
        let dir = scratch(&format!("{tag}-bed"));
        let fake_dir = dir.join("fake");
        std::fs::create_dir_all(&fake_dir).unwrap();
        build_fake_cuda(&fake_dir);
        let app = build_driver_app(&fake_dir, &dir);
        Bed { dir, fake_dir, app }
    }

    /// driver_app with `args`, under automatic mode when `assigner` is given (the interposer
    /// and libacb preloaded, as `agarun --mode auto` does), else alone.
    fn command(&self, assigner: Option<(&str, &str)>, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.app);
        cmd.args(args).env("LD_LIBRARY_PATH", &self.fake_dir).env("FAKECUDA_REPORT", "1");
        if let Some((addr, job)) = assigner {
            let preload = lib_dir().join("libacb_preload.so");
            assert!(preload.exists(), "{} not built", preload.display());
            let libacb = link_dir().join(format!("libacb.so.{}", acb::ACB_ABI_VERSION));
            cmd.env("LD_PRELOAD", format!("{} {}", preload.display(), libacb.display()))
                .env("ACB_MODE", "auto")
                .env("ACB_ASSIGNER", addr)
                .env("ACB_JOB_ID", job)
                .env("ACB_IDLE_MS", "20")
                .env("ACB_EAGER_RELEASE", "1");
        }
        cmd
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn check(out: &Output, what: &str) -> String {
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("driver_app: done"), "{what}:\n{stdout}\n{stderr}");
    assert!(!stderr.contains("rule broken"), "{what} broke a driver rule:\n{stderr}");
    assert!(!stderr.contains("unbrokered"), "{what} ran unbrokered:\n{stderr}");
    stdout.lines().find(|l| l.contains("checksum=")).unwrap_or_default().to_string()
}

/// (grants, releases) of `job` in the assigner's record, and the most leases held at once.
fn grants(a: &Assigner, job: &str) -> (usize, usize, usize) {
    let events = a.events();
    let mut held = std::collections::BTreeSet::new();
    let mut most = 0;
    let mut mine = std::collections::BTreeSet::new();
    let (mut granted, mut released) = (0, 0);
    for e in &events {
        match &e.kind {
            EventKind::Granted { job: j, lease, .. } => {
                held.insert(*lease);
                most = most.max(held.len());
                if j == job {
                    granted += 1;
                    mine.insert(*lease);
                }
            }
            EventKind::Released { lease, .. } => {
                held.remove(lease);
                if mine.contains(lease) {
                    released += 1;
                }
            }
            _ => {}
        }
    }
    (granted, released, most)
}

#[test]
fn a_driver_api_program_runs_unmodified_in_automatic_mode() {
    let bed = Bed::new("interposer-alone");
    let a = Assigner::start("interposer-alone", "fake:1x80GiB");
    for (flags, job) in [(&[][..], "by-name"), (&["--procaddress"][..], "by-procaddress")] {
        let alone = bed.out(&format!("{job}-alone"));
        let brokered = bed.out(&format!("{job}-brokered"));
        let args = |out: &Path| -> Vec<String> {
            let mut v: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
            v.extend(["4", "4096", "100"].map(String::from));
            v.push(out.display().to_string());
            v
        };
        let alone_args = args(&alone);
        let plain = check(
            &bed.command(None, &alone_args.iter().map(String::as_str).collect::<Vec<_>>()).output().unwrap(),
            "alone",
        );
        let brokered_args = args(&brokered);
        let out = bed
            .command(Some((&a.addr(), job)), &brokered_args.iter().map(String::as_str).collect::<Vec<_>>())
            .output()
            .unwrap();
        let auto = check(&out, job);
        assert_eq!(plain, auto, "{job}: the results differ from running alone");
        assert_eq!(std::fs::read(&alone).unwrap(), std::fs::read(&brokered).unwrap(), "{job}: the buffers differ");
        // Each CPU phase (100 ms) outlasts the idle time (20 ms): the GPU went back and came
        // again, so the program's memory moved out and back at the same addresses between its
        // launches. A launch that was not gated would have met unmapped memory.
        let (granted, released, most) = grants(&a, job);
        assert!(granted >= 3, "{job}: {granted} grants: phases were not released and granted again");
        assert!(released >= granted - 1, "{job}: {released} releases for {granted} grants");
        assert_eq!(most, 1);
    }
}

#[test]
fn two_programs_share_one_gpu_by_phase() {
    let bed = Bed::new("interposer-two");
    let a = Assigner::start("interposer-two", "fake:1x80GiB");
    let alone = bed.out("alone");
    let plain = check(&bed.command(None, &["5", "8192", "60", alone.to_str().unwrap()]).output().unwrap(), "alone");
    let outs = [bed.out("first"), bed.out("second")];
    let children: Vec<_> = outs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let flags: &[&str] = if i == 0 { &[] } else { &["--procaddress"] };
            let mut args: Vec<&str> = flags.to_vec();
            args.extend(["5", "8192", "60", o.to_str().unwrap()]);
            bed.command(Some((&a.addr(), ["job-a", "job-b"][i])), &args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert_eq!(check(&out, ["job-a", "job-b"][i]), plain);
        assert_eq!(std::fs::read(&outs[i]).unwrap(), std::fs::read(&alone).unwrap(), "program {i}: results differ");
    }
    let (ga, _, most) = grants(&a, "job-a");
    let (gb, _, _) = grants(&a, "job-b");
    assert_eq!(most, 1, "two holders of the one GPU at once");
    assert!(ga >= 2 && gb >= 2, "grants: {ga} and {gb}: the programs did not take turns by phase");
}

#[test]
fn a_launch_after_a_release_blocks_until_the_memory_is_back() {
    let bed = Bed::new("interposer-block");
    let a = Assigner::start("interposer-block", "fake:1x80GiB");
    let out = bed.out("result");
    // Two phases with a 600 ms CPU phase between them.
    let started = Instant::now();
    let child = bed
        .command(Some((&a.addr(), "blocked")), &["2", "4096", "600", out.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the program has released the GPU (its CPU phase), another job takes it for 1.5 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    while grants(&a, "blocked").1 < 1 {
        assert!(Instant::now() < deadline, "the program never released its GPU");
        std::thread::sleep(Duration::from_millis(5));
    }
    let holder = common::Job::new(&a.addr(), "holder");
    holder.begin();
    let held = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    holder.end();
    let held_for = held.elapsed();
    drop(holder);
    let out = child.wait_with_output().unwrap();
    check(&out, "blocked");
    // The program's second phase could start only after the holder's release: it blocked in
    // its first launch of that phase (its CPU phase was 600 ms; it ran about 1.5 s longer).
    assert!(started.elapsed() >= held_for, "the program finished while another job held the GPU");
    let events = a.events();
    let jobs: Vec<&str> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Granted { job, .. } => Some(job.as_str()),
            _ => None,
        })
        .collect();
    // (Its final copy-back, after its last CPU phase, takes one more grant.)
    assert_eq!(jobs[..3], ["blocked", "holder", "blocked"], "grants in order: {jobs:?}");
    assert_eq!(jobs.iter().filter(|j| **j == "holder").count(), 1, "{jobs:?}");
}

#[test]
fn without_automatic_mode_the_interposer_changes_nothing() {
    let bed = Bed::new("interposer-off");
    let alone = bed.out("alone");
    let plain = check(&bed.command(None, &["2", "1024", "1", alone.to_str().unwrap()]).output().unwrap(), "alone");
    let through = bed.out("through");
    let preload = lib_dir().join("libacb_preload.so");
    let out = bed
        .command(None, &["--procaddress", "2", "1024", "1", through.to_str().unwrap()])
        .env("LD_PRELOAD", &preload)
        .output()
        .unwrap();
    assert_eq!(check(&out, "preloaded, not in automatic mode"), plain);
    assert_eq!(std::fs::read(&alone).unwrap(), std::fs::read(&through).unwrap());
}
