//! `acb-assigner slurm up|down` attacked like a careless or hostile user and by Slurm's own
//! failure modes, on the loopback Slurm lab (`common::slurm`): a job cancelled while its steps
//! hold GPUs, a script that fails, misuse of `up`/`down`, another local user, and the parts of
//! acb dying under a running job. Each test has its own lab.
//!
//! Root and slurm-wlm + munge are needed; without them the tests skip, saying why. Alone:
//! `cargo test -p acb-assigner --test slurm_hostile`. It found four faults, all fixed: `--dir`
//! on an existing directory removed it with the user's files; `up` in a pipeline went down at
//! once; a dead controller took acb down silently; a killed executor counted as a clean stop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::slurm::{JobTmp, SlurmLab, SlurmOpts};

/// Waits (at most `bound`) until no acb process of the lab is left and job `id`'s directory is
/// gone; how long that took. Panics, with the logs, past the bound.
fn wait_nothing_left(lab: &SlurmLab, tmp: &JobTmp, id: u32, bound: Duration) -> Duration {
    let t0 = Instant::now();
    let dir = tmp.acb_dir(id);
    while (!lab.acb_procs().is_empty() || dir.exists()) && t0.elapsed() < bound {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(lab.acb_procs(), Vec::new(), "acb processes outlived job {id} by {bound:?}\n{}", lab.logs(20));
    assert!(!dir.exists(), "{} outlived job {id} by {bound:?}", dir.display());
    t0.elapsed()
}

/// Waits (at most `bound`) for `path` to exist.
fn wait_file(lab: &SlurmLab, path: &Path, bound: Duration) {
    let deadline = Instant::now() + bound;
    while !path.exists() {
        assert!(Instant::now() < deadline, "no {} within {bound:?}\n{}", path.display(), lab.logs(20));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A script's preamble: `up`, then one step on each node that holds a GPU until killed, and a
/// file `held` once both hold one.
const HOLD_BOTH: &str = r#"#!/bin/bash
set -euo pipefail
eval "$(acb-assigner slurm up)"
srun --overlap -n1 -w node1 acb-assigner alloc --job h1 --gpus 1 > h1.out 2>&1 &
srun --overlap -n1 -w node2 acb-assigner alloc --job h2 --gpus 1 > h2.out 2>&1 &
for _ in $(seq 300); do grep -q granted h1.out && grep -q granted h2.out && break; sleep 0.05; done
touch held
"#;

#[test]
fn scancel_of_the_whole_job_while_steps_hold_gpus_leaves_nothing_of_acb() {
    let Some(lab) = SlurmLab::start("slurm_hostile_scancel", SlurmOpts::default()) else { return };
    let tmp = JobTmp::new();
    let script = lab.script("hold.sbatch", &format!("{HOLD_BOTH}sleep 300\n"));
    let id = lab.sbatch(&script, &["-N2", "--gres=gpu:1", "-o", "hold.out", &tmp.export("")]);
    wait_file(&lab, &lab.jobs_dir().join("held"), Duration::from_secs(40));
    assert!(tmp.acb_dir(id).join("node2.sock").exists());
    assert!(!lab.acb_procs().is_empty());
    let t0 = Instant::now();
    assert!(lab.cmd("scancel").arg(id.to_string()).status().unwrap().success());
    let took = wait_nothing_left(&lab, &tmp, id, Duration::from_secs(20));
    println!("after scancel, acb was gone in {:?}", t0.elapsed().max(took));
    assert_eq!(lab.wait_job(id, Duration::from_secs(40)), "CANCELLED");
}

#[test]
fn a_failing_script_leaves_nothing_of_acb() {
    let Some(lab) = SlurmLab::start("slurm_hostile_exit", SlurmOpts::default()) else { return };
    let tmp = JobTmp::new();
    let script = lab.script("fail.sbatch", &format!("{HOLD_BOTH}exit 3\n"));
    let id = lab.sbatch(&script, &["-N2", "--gres=gpu:1", "-o", "fail.out", &tmp.export("")]);
    assert_eq!(lab.wait_job(id, Duration::from_secs(60)), "FAILED", "{}", lab.job_output("fail.out"));
    wait_nothing_left(&lab, &tmp, id, Duration::from_secs(20));
}

#[test]
fn misuse_of_up_and_down_is_refused_clearly_and_leaves_nothing() {
    let Some(lab) = SlurmLab::start("slurm_hostile_misuse", SlurmOpts::default()) else { return };
    let tmp = JobTmp::new();
    let t = tmp.0.display();
    // Every failing `up` must print exactly `false` on stdout.
    let script = lab.script(
        "misuse.sbatch",
        &format!(
            r#"#!/bin/bash
try() {{ local name=$1; shift; out=$("$@" 2>err); rc=$?; echo "CASE $name rc=$rc out=$(echo $out) err=$(head -c 300 err | tr '\n' ' ')"; }}
try down-before-up acb-assigner slurm down
eval "$(acb-assigner slurm up)"
try up-twice acb-assigner slurm up
try relative acb-assigner slurm up --dir rel
try too-long acb-assigner slurm up --dir {t}/$(printf 'x%.0s' $(seq 100))
mkdir -m 700 {t}/real; ln -s {t}/real {t}/link
try symlink acb-assigner slurm up --dir {t}/link
mkdir -m 777 {t}/ww
try world-writable acb-assigner slurm up --dir {t}/ww
mkdir -m 700 {t}/other; chown 65534 {t}/other
try other-users acb-assigner slurm up --dir {t}/other
touch {t}/file
try a-file acb-assigner slurm up --dir {t}/file
try no-job env -u SLURM_JOB_ID acb-assigner slurm up
try bad-job env SLURM_JOB_ID=../x acb-assigner slurm up
try bad-nodelist env SLURM_JOB_NODELIST='node[1-' acb-assigner slurm up --dir {t}/nl
try down acb-assigner slurm down
try down-twice acb-assigner slurm down
"#
        ),
    );
    let id = lab.sbatch(&script, &["-N2", "--gres=gpu:1", "-o", "misuse.out", &tmp.export("")]);
    assert_eq!(lab.wait_job(id, Duration::from_secs(60)), "COMPLETED");
    let out = lab.job_output("misuse.out");
    let case = |name: &str| -> String {
        out.lines()
            .find(|l| l.starts_with(&format!("CASE {name} ")))
            .unwrap_or_else(|| panic!("no case {name}:\n{out}"))
            .to_owned()
    };
    for (name, rc, err) in [
        ("up-twice", "1", "already up"),
        ("relative", "2", "give an absolute path"),
        ("too-long", "2", "too long for the sockets"),
        ("symlink", "1", "not a directory of this user's"),
        ("world-writable", "1", "not a directory of this user's"),
        ("other-users", "1", "not a directory of this user's"),
        ("a-file", "1", "not a directory of this user's"),
        ("no-job", "2", "SLURM_JOB_ID is unset"),
        ("bad-job", "2", "is not a job id"),
        ("bad-nodelist", "1", "a [ without its ]"),
    ] {
        let c = case(name);
        assert!(c.contains(&format!("rc={rc} out=false err=")) && c.contains(err), "{c}\n{out}");
    }
    assert!(case("down-before-up").starts_with("CASE down-before-up rc=0 out= err=acb-assigner slurm: acb is not up"));
    assert!(case("down").contains("rc=0 out= err=acb-assigner slurm: down"), "{out}");
    assert!(case("down-twice").contains("rc=0 out= err=acb-assigner slurm: acb is not up"), "{out}");
    // Nothing was made or followed through the refused directories.
    assert_eq!(std::fs::read_dir(tmp.0.join("real")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(tmp.0.join("ww")).unwrap().count(), 0);
    assert!(!tmp.0.join("nl").exists() && !tmp.0.join("rel").exists());
    wait_nothing_left(&lab, &tmp, id, Duration::from_secs(20));
}

#[test]
fn another_user_cannot_reach_a_jobs_acb_and_runs_its_own() {
    let Some(lab) = SlurmLab::start("slurm_hostile_other_user", SlurmOpts::default()) else { return };
    let tmp = JobTmp::new();
    let jobs = lab.jobs_dir();
    let root_script = lab.script(
        "root.sbatch",
        r#"#!/bin/bash
set -euo pipefail
eval "$(acb-assigner slurm up)"
grep -o 'tcp:[0-9.:]*' "$ACB_SLURM_DIR/ready" > controller.addr
while [ ! -e done ]; do sleep 0.1; done
"#,
    );
    let root_id = lab.sbatch(&root_script, &["-N2", "--gres=gpu:1", "-o", "root.out", &tmp.export("")]);
    wait_file(&lab, &jobs.join("controller.addr"), Duration::from_secs(40));
    let d = tmp.acb_dir(root_id);
    let other_script = lab.script(
        "other.sbatch",
        &format!(
            r#"#!/bin/bash
tcp=$(cat controller.addr)
echo "LS $(ls {d} 2>&1 | head -1)"
echo "TOKEN $(cat {d}/cluster.token 2>&1)"
echo "UNIX $(timeout 10 acb-assigner status --assigner unix:{d}/node1.sock 2>&1 | head -1)"
echo "TCP-STATUS $(timeout 10 acb-assigner status --assigner $tcp 2>&1 | head -1)"
echo "TCP-ALLOC $(timeout 10 acb-assigner alloc --assigner $tcp --job evil --gpus 1 --hold 1s 2>&1 | head -1)"
eval "$(acb-assigner slurm up)"
echo "MINE $(stat -c '%U %a' $ACB_SLURM_DIR) $(stat -c '%a' $ACB_SLURM_DIR/cluster.token)"
echo "ALLOC $(srun --overlap -n1 -w node2 acb-assigner alloc --job mine --gpus 1 --hold 100ms 2>&1 | grep granted)"
acb-assigner slurm down
"#,
            d = d.display()
        ),
    );
    let other_id = lab.sbatch(
        &other_script,
        &["--uid=65534", "--gid=65534", "-N2", "--gres=gpu:1", "-o", "other.out", &tmp.export("")],
    );
    let state = lab.wait_job(other_id, Duration::from_secs(60));
    std::fs::write(jobs.join("done"), "").unwrap();
    let out = lab.job_output("other.out");
    assert_eq!(state, "COMPLETED", "{out}");
    let line = |k: &str| out.lines().find(|l| l.starts_with(&format!("{k} "))).unwrap_or_else(|| panic!("{k}?\n{out}"));
    assert!(line("LS").contains("Permission denied"), "{out}");
    assert!(line("TOKEN").contains("Permission denied"), "{out}");
    assert!(line("UNIX").contains("Permission denied"), "{out}");
    assert!(line("TCP-STATUS").contains("send the cluster token"), "{out}");
    assert!(line("TCP-ALLOC").contains("send the cluster token"), "{out}");
    assert_eq!(line("MINE"), "MINE nobody 700 600", "{out}");
    assert!(line("ALLOC").contains("granted lease"), "{out}");
    assert_eq!(lab.wait_job(root_id, Duration::from_secs(30)), "COMPLETED");
    wait_nothing_left(&lab, &tmp, root_id, Duration::from_secs(20));
    assert!(!tmp.acb_dir(other_id).exists());
}

/// Found by this file, fixed: `up` watches its parent process (getppid), which is the batch shell only for the exact
/// `eval "$(acb-assigner slurm up)"`. Any other shape (`| tee up.log`, `timeout 120 ...`,
/// `$(...; echo)`) makes the parent a short-lived subshell: `up` prints its exports and exits 0,
/// and acb goes down 200 ms later, so every step fails with "cannot reach the assigner at
/// unix:DIR/node1.sock: No such file or directory".
#[test]
fn up_in_a_pipeline_stays_up_for_the_script() {
    let Some(lab) = SlurmLab::start("slurm_hostile_pipeline", SlurmOpts::default()) else { return };
    let tmp = JobTmp::new();
    let script = lab.script(
        "tee.sbatch",
        r#"#!/bin/bash
set -euo pipefail
eval "$(acb-assigner slurm up | tee up.log)"
sleep 2
srun --overlap -n1 -w node1 acb-assigner alloc --job a --gpus 1 --hold 100ms
acb-assigner slurm down
echo RESULT ok
"#,
    );
    let id = lab.sbatch(&script, &["-N2", "--gres=gpu:1", "-o", "tee.out", &tmp.export("")]);
    let state = lab.wait_job(id, Duration::from_secs(60));
    let out = lab.job_output("tee.out");
    assert!(state == "COMPLETED" && out.contains("RESULT ok"), "{state}:\n{out}");
    wait_nothing_left(&lab, &tmp, id, Duration::from_secs(20));
}

/// Found by this file, fixed: when the controller dies under a running job, the supervisor tears everything down
/// (good, in 0.6 s) but removes DIR with acb.log and controller.log, and tells no one: the
/// script's next steps get "cannot reach the assigner at unix:DIR/node1.sock: No such file or
/// directory" and `slurm down` says "acb is not up here" and exits 0.
#[test]
fn a_killed_controller_is_reported_to_the_script() {
    let Some(lab) = SlurmLab::start("slurm_hostile_controller", SlurmOpts::default()) else { return };
    let tmp = JobTmp::new();
    let script = lab.script(
        "ctl.sbatch",
        &format!(
            "{HOLD_BOTH}set +e\nwhile [ ! -e killed ]; do sleep 0.1; done\nsleep 2\nacb-assigner slurm down 2> down.err\necho \
             \"DOWN rc=$?\"\n"
        ),
    );
    let id = lab.sbatch(&script, &["-N2", "--gres=gpu:1", "-o", "ctl.out", &tmp.export("")]);
    wait_file(&lab, &lab.jobs_dir().join("held"), Duration::from_secs(40));
    let ctl = lab
        .acb_procs()
        .into_iter()
        .find(|(_, c)| c.contains("serve --role controller"))
        .unwrap_or_else(|| panic!("no controller\n{}", lab.logs(20)));
    // SAFETY: kill(2) on the lab job's controller, found above.
    unsafe { libc::kill(ctl.0, libc::SIGKILL) };
    let t0 = Instant::now();
    // Every process of acb goes; the directory stays, with the logs and why, for `down` to say.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lab.acb_procs().is_empty() {
        assert!(Instant::now() < deadline, "acb still runs: {:?}", lab.acb_procs());
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("after the controller's SIGKILL, acb's processes were gone in {:?}", t0.elapsed());
    std::fs::write(lab.jobs_dir().join("killed"), "").unwrap();
    lab.wait_job(id, Duration::from_secs(30));
    let out = lab.job_output("ctl.out");
    let err = lab.job_output("down.err");
    assert!(out.contains("DOWN rc=1") && err.contains("controller"), "{out}\n{err}");
    // `down` said it, then removed what was left.
    wait_nothing_left(&lab, &tmp, id, Duration::from_secs(20));
}

/// Found by this file, fixed: `slurm executor` counts its executor's death by a signal as a clean stop
/// (`Some(s) if s.success() || s.code().is_none() => Ok(())` at the end of cli/slurm.rs
/// executor()), so an executor killed (SIGKILL, OOM killer, SIGSEGV) goes unreported: nothing in
/// executors.log or acb.log, the step's task exits 0, and that node's steps get "No such file or
/// directory" for DIR/<node>.sock while the controller shows the node DOWN.
#[test]
fn a_killed_executor_is_reported() {
    let Some(lab) = SlurmLab::start("slurm_hostile_executor", SlurmOpts::default()) else { return };
    let tmp = JobTmp::new();
    let script = lab.script(
        "exe.sbatch",
        &format!("{HOLD_BOTH}set +e\nwhile [ ! -e killed ]; do sleep 0.1; done\nsleep 2\ncp $ACB_SLURM_DIR/executors.log exe.log\n"),
    );
    let id = lab.sbatch(&script, &["-N2", "--gres=gpu:1", "-o", "exe.out", &tmp.export("")]);
    wait_file(&lab, &lab.jobs_dir().join("held"), Duration::from_secs(40));
    let exe = lab
        .acb_procs()
        .into_iter()
        .find(|(_, c)| c.contains("serve --role executor") && c.contains("--node-name node2"))
        .unwrap_or_else(|| panic!("no executor on node2\n{}", lab.logs(20)));
    // SAFETY: kill(2) on the lab job's executor of node2, found above.
    unsafe { libc::kill(exe.0, libc::SIGKILL) };
    std::fs::write(lab.jobs_dir().join("killed"), "").unwrap();
    assert_eq!(lab.wait_job(id, Duration::from_secs(60)), "COMPLETED");
    wait_nothing_left(&lab, &tmp, id, Duration::from_secs(20));
    let h2 = lab.job_output("h2.out");
    assert!(h2.contains("ended"), "the step holding node2's GPU was told: {h2}");
    let log = lab.job_output("exe.log");
    assert!(log.contains("the executor on node2 ended"), "executors.log:\n{log}");
}

/// FAULT (data loss): `make_dir` accepts an existing directory of the user's (mode without
/// group/other write, e.g. 0755), and acb then removes it recursively, the user's files with it:
/// the supervisor's teardown (`remove_dir_all(&dir)` in cli/slurm.rs supervise()) and a failed
/// `up` (the two `remove_dir_all(&dir)` in bring_up()). `slurm up --dir $HOME` (or `--dir
/// $PWD`, `--dir /scratch/me/run1`) deletes that directory when the job ends.
#[test]
fn up_in_an_existing_directory_keeps_the_users_files() {
    let Some(lab) = SlurmLab::start("slurm_hostile_existing_dir", SlurmOpts::default()) else { return };
    let tmp = JobTmp::new();
    let (ok, bad) = (tmp.0.join("mine"), tmp.0.join("mine2"));
    for d in [&ok, &bad] {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(d.join("results.csv"), "precious\n").unwrap();
    }
    let script = lab.script(
        "existing.sbatch",
        &format!(
            "#!/bin/bash\neval \"$(acb-assigner slurm up --dir {})\"\nacb-assigner slurm down\nSLURM_JOB_NODELIST='node[1-' \
             acb-assigner slurm up --dir {}\ntrue\n",
            ok.display(),
            bad.display()
        ),
    );
    let id = lab.sbatch(&script, &["-N2", "--gres=gpu:1", "-o", "existing.out", &tmp.export("")]);
    assert_eq!(lab.wait_job(id, Duration::from_secs(60)), "COMPLETED");
    let out = lab.job_output("existing.out");
    assert!(out.contains("acb-assigner slurm: down") && out.contains("a [ without its ]"), "{out}");
    for d in [&ok, &bad] {
        assert!(d.join("results.csv").exists(), "{} was deleted with the user's file in it:\n{out}", d.display());
    }
}
