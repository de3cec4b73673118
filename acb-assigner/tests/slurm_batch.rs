//! acb inside Slurm jobs, batch-script mode (`eval "$(acb-assigner slurm up)"`), on a real
//! Slurm: munged, slurmctld and two slurmd nodes with fake GPUs on this machine
//! (`common::slurm`). Each test submits a batch script with `sbatch` and reads what happened
//! from the controller's event record, which `slurm up --record` saves when acb goes down.
//!
//! Root and slurm-wlm + munge are needed; without them the tests skip, saying why (with
//! `ACB_REQUIRE_SLURM=1`, as in CI, they fail instead). Alone:
//! `cargo test -p acb-assigner --test slurm_batch`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::slurm::{JobTmp, SlurmLab, SlurmOpts};
use serde_json::Value;

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/slurm").join(name)
}

/// The record `slurm up --record` wrote, one event per line.
fn record(lab: &SlurmLab, path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("no event record at {}: {e}\n{}", path.display(), lab.logs(30)));
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> impl Iterator<Item = &'a Value> + use<'a> {
    let kind = kind.to_owned();
    events.iter().filter(move |e| e["event"] == kind.as_str())
}

/// The `RESULT k=v ...` line of a job's output.
fn result(lab: &SlurmLab, out: &str) -> BTreeMap<String, String> {
    let text = lab.job_output(out);
    let line = text.lines().find(|l| l.starts_with("RESULT")).unwrap_or_else(|| panic!("no RESULT in {out}:\n{text}"));
    line.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect()
}

/// Once job `id` has ended: no acb process of the lab's is left (within a bound: the
/// supervisor notices the script's end within a fraction of a second), nor its directory.
fn assert_nothing_left(lab: &SlurmLab, tmp: &JobTmp, id: u32) {
    let acb = || lab.acb_procs();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !acb().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(acb(), Vec::new(), "acb processes outlived job {id}\n{}", lab.logs(20));
    let dir = tmp.acb_dir(id);
    assert!(!dir.exists(), "{} outlived job {id}", dir.display());
}

/// For each GPU, its leases in grant order must not overlap (the simple scheduler: one holder
/// at a time); returns how many leases each job was granted.
fn check_exclusive(events: &[Value]) -> BTreeMap<String, usize> {
    let mut holder: BTreeMap<u64, u64> = BTreeMap::new(); // gpu -> lease
    let mut gpus_of: BTreeMap<u64, Vec<u64>> = BTreeMap::new(); // lease -> gpus
    let mut per_job: BTreeMap<String, usize> = BTreeMap::new();
    for e in events {
        match e["event"].as_str().unwrap() {
            "granted" => {
                let lease = e["lease"].as_u64().unwrap();
                let gpus: Vec<u64> = e["gpus"].as_array().unwrap().iter().map(|g| g.as_u64().unwrap()).collect();
                for g in &gpus {
                    assert!(
                        !holder.contains_key(g),
                        "gpu {g} granted to lease {lease} while lease {} holds it",
                        holder[g]
                    );
                    holder.insert(*g, lease);
                }
                gpus_of.insert(lease, gpus);
                *per_job.entry(e["job"].as_str().unwrap().to_owned()).or_default() += 1;
            }
            "released" => {
                for g in gpus_of.get(&e["lease"].as_u64().unwrap()).into_iter().flatten() {
                    holder.remove(g);
                }
            }
            _ => {}
        }
    }
    assert!(holder.is_empty(), "leases never released: {holder:?}");
    per_job
}

#[test]
fn the_white_papers_case_brokered_on_one_gpu_beats_static_on_two_and_nothing_outlives_the_jobs() {
    let Some(lab) = SlurmLab::start("slurm_batch_alphafold", SlurmOpts::default()) else { return };
    let tmp = JobTmp::new();
    let jobs = lab.jobs_dir();
    let script = example("alphafold.sbatch");
    // Side by side, as examples/slurm/run.sh submits them: the static job takes one node's two
    // GPUs, the brokered one a single GPU of the other node.
    let rec = |m: &str| jobs.join(format!("{m}.rec"));
    let static_id = lab.sbatch(
        &script,
        &[
            "--gres=gpu:2",
            "-o",
            "static.out",
            &tmp.export(&format!("MODE=static,JOBS=2,ACB_RECORD={}", rec("static").display())),
        ],
    );
    let brokered_id = lab.sbatch(
        &script,
        &[
            "--gres=gpu:1",
            "-o",
            "brokered.out",
            &tmp.export(&format!("MODE=brokered,JOBS=8,ACB_RECORD={}", rec("brokered").display())),
        ],
    );
    for (id, out) in [(static_id, "static.out"), (brokered_id, "brokered.out")] {
        let state = lab.wait_job(id, Duration::from_secs(180));
        assert_eq!(state, "COMPLETED", "job {id}:\n{}\n{}", lab.job_output(out), lab.logs(20));
    }
    let (s, b) = (result(&lab, "static.out"), result(&lab, "brokered.out"));
    for (r, gpus, proteins) in [(&s, "2", "8"), (&b, "1", "32")] {
        assert_eq!((r["failed"].as_str(), r["gpus"].as_str(), r["proteins"].as_str()), ("0", gpus, proteins), "{r:?}");
    }
    let rate = |r: &BTreeMap<String, String>| r["proteins_per_hour"].parse::<f64>().unwrap();
    let ratio = rate(&b) / rate(&s);
    println!(
        "proteins/h: static 2 steps on 2 GPUs {:.0}, brokered 8 steps on 1 GPU {:.0}: ratio {ratio:.2}x",
        rate(&s),
        rate(&b)
    );
    // The phases are sleeps (CPU 1.2 s, GPU 0.3 s a protein): brokered is bound by its one GPU
    // at 1/0.3 s, static by whole lives at 2/1.5 s, 2.5x apart; the issue asks that brokered
    // beats static, which only a broken broker misses.
    assert!(ratio > 1.0, "brokered {b:?} did not beat static {s:?}");

    // Brokered: the 8 steps (one job name each, slurm:<job>.<step>) took turns on one GPU, each
    // holding it only in its GPU phases: far more grants than steps, never two holders at once.
    let events = record(&lab, &rec("brokered"));
    let per_job = check_exclusive(&events);
    assert_eq!(per_job.len(), 8, "8 steps got the GPU: {per_job:?}");
    assert!(per_job.keys().all(|j| j.starts_with(&format!("slurm:{brokered_id}."))), "{per_job:?}");
    let grants: usize = per_job.values().sum();
    assert!(grants > 8, "the GPU changed hands between phases: {grants} grants for 8 steps");
    let gpus: BTreeSet<u64> = of_kind(&events, "granted")
        .flat_map(|e| e["gpus"].as_array().unwrap().clone())
        .map(|g| g.as_u64().unwrap())
        .collect();
    assert_eq!(gpus.len(), 1, "one GPU: {gpus:?}");
    assert_eq!(of_kind(&events, "client-gone").count(), 8, "every step ended and left");
    // Static: two steps, one GPU each for its whole life.
    let events = record(&lab, &rec("static"));
    let per_job = check_exclusive(&events);
    assert_eq!(per_job.values().copied().collect::<Vec<_>>(), [1, 1], "one lease per static step: {per_job:?}");
    println!("brokered: {grants} grants for 8 steps on 1 GPU; static: 2 grants");
    assert_nothing_left(&lab, &tmp, static_id);
    assert_nothing_left(&lab, &tmp, brokered_id);
}

#[test]
fn cancelling_a_step_hands_its_gpu_to_the_waiting_step() {
    let Some(lab) = SlurmLab::start("slurm_batch_scancel", SlurmOpts::default()) else { return };
    let tmp = JobTmp::new();
    let rec = lab.jobs_dir().join("scancel.rec");
    let script = lab.script(
        "scancel.sbatch",
        r#"#!/bin/bash
set -euo pipefail
eval "$(acb-assigner slurm up --record "$REC")"
# A step that holds the job's one GPU until it is cancelled, and one that waits for it.
srun --overlap -n1 --job-name=holder acb-assigner alloc --job holder --gpus 1 > holder.out 2>&1 &
for _ in $(seq 200); do grep -q granted holder.out && break; sleep 0.05; done
srun --overlap -n1 --job-name=waiter acb-assigner alloc --job waiter --gpus 1 --hold 300ms > waiter.out 2>&1 &
waiter=$!
for _ in $(seq 200); do acb-assigner status --assigner "$ACB_SLURM_CONTROLLER" | grep -q 'QUEUE (1 waiting)' && break; sleep 0.05; done
step=$(squeue -h -s -j "$SLURM_JOB_ID" -o '%i %j' | awk '$2 == "holder" { print $1 }')
echo "cancelling step $step"
scancel "$step"
wait "$waiter"
acb-assigner slurm down
echo RESULT done
"#,
    );
    let id =
        lab.sbatch(&script, &["--gres=gpu:1", "-o", "scancel.out", &tmp.export(&format!("REC={}", rec.display()))]);
    let state = lab.wait_job(id, Duration::from_secs(120));
    let out = lab.job_output("scancel.out");
    assert_eq!(state, "COMPLETED", "{out}\n{}", lab.logs(20));
    assert!(out.contains(&format!("cancelling step {id}.")), "{out}");
    let waiter = lab.job_output("waiter.out");
    assert!(waiter.contains("granted lease"), "the waiter got the GPU: {waiter}");

    let events = record(&lab, &rec);
    check_exclusive(&events);
    let seq = |kind: &str, job: &str| {
        of_kind(&events, kind).find(|e| e["job"] == job).unwrap_or_else(|| panic!("no {kind} of {job}: {events:?}"))
    };
    let holder_lease = seq("granted", "holder")["lease"].as_u64().unwrap();
    let released =
        of_kind(&events, "released").find(|e| e["lease"] == holder_lease).expect("the holder's lease came back");
    assert_eq!(released["by_disconnect"], true, "taken back when the cancelled step's connection went: {released}");
    let waited = seq("requested", "waiter");
    let granted = seq("granted", "waiter");
    let (r, g) = (released["seq"].as_u64().unwrap(), granted["seq"].as_u64().unwrap());
    assert!(waited["seq"].as_u64().unwrap() < r && r < g, "the waiter waited, then got the GPU: {events:?}");
    // "At once": the grant is the very next thing the controller did after the release.
    let between: Vec<&Value> = events
        .iter()
        .filter(|e| (r + 1..g).contains(&e["seq"].as_u64().unwrap()))
        .filter(|e| e["event"] != "client-gone")
        .collect();
    assert!(between.is_empty(), "nothing came between the release and the grant: {between:?}");
    println!(
        "the cancelled step's GPU went to the waiter {} µs after its release",
        granted["at_us"].as_u64().unwrap() - released["at_us"].as_u64().unwrap()
    );
    assert_nothing_left(&lab, &tmp, id);
}

#[test]
fn a_two_node_step_is_one_gang_granted_together() {
    let Some(lab) = SlurmLab::start("slurm_batch_gang", SlurmOpts::default()) else { return };
    let tmp = JobTmp::new();
    let rec = lab.jobs_dir().join("gang.rec");
    let id =
        lab.sbatch(&example("gang.sbatch"), &["-o", "gang.out", &tmp.export(&format!("ACB_RECORD={}", rec.display()))]);
    let state = lab.wait_job(id, Duration::from_secs(120));
    let out = lab.job_output("gang.out");
    assert_eq!(state, "COMPLETED", "{out}\n{}", lab.logs(20));
    assert!(out.contains("RESULT gang of 2 tasks"), "{out}");

    let events = record(&lab, &rec);
    check_exclusive(&events);
    let node_of: BTreeMap<u64, String> = of_kind(&events, "node-up")
        .flat_map(|e| {
            let node = e["node"].as_str().unwrap().to_owned();
            e["gpus"].as_array().unwrap().iter().map(move |g| (g.as_u64().unwrap(), node.clone()))
        })
        .collect();
    let requests: Vec<&Value> = of_kind(&events, "requested").collect();
    assert_eq!(requests.len(), 2, "{events:?}");
    for r in &requests {
        assert_eq!(r["group"], format!("slurm:{id}.1"), "the step's tasks are one group: {r}");
    }
    let grants: Vec<&Value> = of_kind(&events, "granted").collect();
    assert_eq!(grants.len(), 2, "{events:?}");
    let last_request = requests.iter().map(|r| r["seq"].as_u64().unwrap()).max().unwrap();
    assert!(
        grants.iter().all(|g| g["seq"].as_u64().unwrap() > last_request),
        "no member before both asked: {events:?}"
    );
    let nodes: BTreeSet<&str> = grants.iter().map(|g| node_of[&g["gpus"][0].as_u64().unwrap()].as_str()).collect();
    assert_eq!(nodes.len(), 2, "one GPU on each node: {grants:?}");
    assert_nothing_left(&lab, &tmp, id);
}
