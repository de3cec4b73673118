//! Slurm's node-level mode (`deploy/slurm`: Prolog, Epilog, TaskProlog) on a real Slurm cluster
//! on loopback (`tests/common/slurm.rs`: munged, slurmctld, slurmd nodes with fake GPUs), and
//! the harness's own test. Needs root and slurm-wlm and munge; skips otherwise, except with
//! `ACB_REQUIRE_SLURM=1` (CI). Each test has a cluster of its own; they may run at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::slurm::{SlurmLab, SlurmOpts};

/// The variables the harness test records in each place.
const VARS: [&str; 6] = [
    "SLURMD_NODENAME",
    "CUDA_VISIBLE_DEVICES",
    "SLURM_STEP_GPUS",
    "SLURM_JOB_GPUS",
    "SLURM_LAUNCH_NODE_IPADDR",
    "SLURM_GPUS_ON_NODE",
];

/// Lines of `show.sh`: (context, variables; `None` for unset).
fn parse_shown(text: &str) -> Vec<(String, HashMap<String, Option<String>>)> {
    text.lines()
        .filter(|l| l.contains("SLURMD_NODENAME="))
        .map(|l| {
            let mut words = l.split_whitespace();
            let ctx = words.next().unwrap().to_string();
            let vars = words
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), (v != "<unset>").then(|| v.to_string())))
                .collect();
            (ctx, vars)
        })
        .collect()
}

fn count(list: &Option<String>) -> usize {
    list.as_deref().map_or(0, |l| l.split(',').filter(|s| !s.is_empty()).count())
}

/// The harness works: a 2-node job with 2 GPUs per node runs, every step sees its node's GPUs;
/// and what Slurm 22.05 sets where (batch script, steps, Prolog, TaskProlog), printed as a
/// table and checked for what the node-level mode and `--gpus slurm` rely on.
#[test]
fn harness_runs_a_two_node_gpu_job() {
    let t0 = Instant::now();
    // The Prolog, Epilog and TaskProlog record what they see in `{dir}/jobs/out`.
    let opts = SlurmOpts {
        extra_conf: vec![
            "PrologFlags=Alloc".into(),
            "Prolog={dir}/jobs/prolog.sh".into(),
            "Epilog={dir}/jobs/epilog.sh".into(),
            "TaskProlog={dir}/jobs/task_prolog.sh".into(),
        ],
        ..Default::default()
    };
    let Some(lab) = SlurmLab::start("harness_runs_a_two_node_gpu_job", opts) else { return };
    let started = t0.elapsed();
    let mut body = String::from("#!/bin/bash\nline=\"$1\"\n");
    for v in VARS {
        body += &format!("line+=\" {v}=${{{v}-<unset>}}\"\n");
    }
    body += "echo \"$line\"\n";
    let show = lab.script("show.sh", &body);
    let out = lab.jobs_dir().join("out");
    std::fs::create_dir(&out).unwrap();
    for what in ["prolog", "epilog"] {
        lab.script(
            &format!("{what}.sh"),
            &format!("#!/bin/bash\n{} {what} >\"{}/{what}-$SLURMD_NODENAME\"\n", show.display(), out.display()),
        );
    }
    lab.script(
        "task_prolog.sh",
        &format!(
            "#!/bin/bash\n{} \"task_prolog(${{SLURM_STEP_ID:-batch}})\" >\"{}/task_prolog-$SLURMD_NODENAME-$$\"\n",
            show.display(),
            out.display()
        ),
    );
    assert_eq!(lab.nodes(), ["node1", "node2"]);

    let show = show.display();
    let job = lab.script(
        "harness.sh",
        &format!(
            "#!/bin/bash\n{show} batch\nsrun --ntasks-per-node=1 {show} step\n\
             srun --overlap --ntasks-per-node=1 {show} overlap\nsrun --gres=gpu:1 --ntasks-per-node=1 {show} gres1\n"
        ),
    );
    let id = lab.sbatch(&job, &["-N2", "--ntasks-per-node=1", "--gres=gpu:2", "-o", "harness-%j.out"]);
    let state = lab.wait_job(id, Duration::from_secs(30));
    let text = lab.job_output(format!("harness-{id}.out"));
    assert_eq!(state, "COMPLETED", "{text}");
    let mut shown = parse_shown(&text);
    for f in std::fs::read_dir(&out).unwrap() {
        shown.extend(parse_shown(&std::fs::read_to_string(f.unwrap().path()).unwrap()));
    }

    // The table: for each place, each variable as the first node saw it.
    eprintln!("Slurm {}: what each place sees (node1; job -N2 --gres=gpu:2):", slurm_version(&lab));
    let mut places: Vec<&String> = shown.iter().map(|(c, _)| c).collect();
    places.sort();
    places.dedup();
    for place in places {
        let (_, vars) = shown
            .iter()
            .find(|(c, v)| c == place && v["SLURMD_NODENAME"].as_deref() == Some("node1"))
            .unwrap_or_else(|| shown.iter().find(|(c, _)| c == place).unwrap());
        let cols: Vec<String> =
            VARS.iter().map(|v| format!("{v}={}", vars[*v].as_deref().unwrap_or("(unset)"))).collect();
        eprintln!("  {place:<22} {}", cols.join(" "));
    }

    let of = |ctx: &str| shown.iter().filter(|(c, _)| c == ctx).map(|(_, v)| v).collect::<Vec<_>>();
    let nodes = |lines: &[&HashMap<String, Option<String>>]| {
        let mut n: Vec<String> = lines.iter().map(|v| v["SLURMD_NODENAME"].clone().unwrap()).collect();
        n.sort();
        n
    };
    // Both nodes ran each step; a step sees its node's 2 GPUs; a step of --gres=gpu:1 sees 1.
    for ctx in ["step", "overlap"] {
        let lines = of(ctx);
        assert_eq!(nodes(&lines), ["node1", "node2"], "{ctx}: {text}");
        for v in &lines {
            assert_eq!(count(&v["CUDA_VISIBLE_DEVICES"]), 2, "{ctx}: {v:?}");
            assert_eq!(count(&v["SLURM_STEP_GPUS"]), 2, "{ctx}: {v:?}");
            assert_eq!(count(&v["SLURM_JOB_GPUS"]), 2, "{ctx}: {v:?}");
            assert_eq!(v["SLURM_LAUNCH_NODE_IPADDR"].as_deref(), Some("127.0.0.1"), "{ctx}: {v:?}");
        }
    }
    let gres1 = of("gres1");
    assert_eq!(nodes(&gres1), ["node1", "node2"], "{text}");
    for v in &gres1 {
        assert_eq!(count(&v["CUDA_VISIBLE_DEVICES"]), 1, "{v:?}");
        assert_eq!(count(&v["SLURM_STEP_GPUS"]), 1, "{v:?}");
        assert_eq!(count(&v["SLURM_JOB_GPUS"]), 2, "{v:?}");
    }
    // The batch script: the job's GPUs, no step's.
    let batch = of("batch");
    assert_eq!(batch.len(), 1, "{text}");
    assert_eq!(count(&batch[0]["SLURM_JOB_GPUS"]), 2, "{:?}", batch[0]);
    assert_eq!(batch[0]["SLURM_STEP_GPUS"], None, "{:?}", batch[0]);
    // The Prolog (PrologFlags=Alloc) and the Epilog (done when wait_job returns) ran on both
    // nodes and saw the job's GPUs there.
    for ctx in ["prolog", "epilog"] {
        let lines = of(ctx);
        assert_eq!(nodes(&lines), ["node1", "node2"], "{ctx}");
        for v in &lines {
            assert_eq!(count(&v["SLURM_JOB_GPUS"]), 2, "{ctx}: {v:?}");
        }
    }
    // TaskProlog: once for the batch step, and on each node for each of the 3 steps.
    assert_eq!(of("task_prolog(batch)").len(), 1);
    for step in 0..3 {
        assert_eq!(nodes(&of(&format!("task_prolog({step})"))), ["node1", "node2"], "step {step}");
    }
    eprintln!("harness test: cluster up in {started:?}, all in {:?}", t0.elapsed());
}

fn slurm_version(lab: &SlurmLab) -> String {
    let out = lab.cmd("sinfo").arg("--version").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A cluster with the node-level mode on: `deploy/slurm`'s scripts installed in `{dir}/acb`
/// (copied, as a site installs them; a checkout under /root would be out of the job user's
/// reach), called by wrappers that name the settings file (Slurm gives a Prolog no environment
/// of ours; a site uses /etc/acb/slurm.env).
struct NodeMode {
    lab: SlurmLab,
    /// ACB_SLURM_RUN_DIR: the jobs' sockets, pid files and logs.
    run: PathBuf,
    /// The settings file the scripts source.
    env_file: PathBuf,
    /// ACB_SLURM_LOG: the scripts' own log.
    log: PathBuf,
}

impl NodeMode {
    fn start(test: &str, nodes: usize, gpus: usize) -> Option<NodeMode> {
        let opts = SlurmOpts {
            nodes,
            gpus,
            extra_conf: vec![
                "PrologFlags=Alloc".into(),
                "Prolog={dir}/acb/prolog".into(),
                "Epilog={dir}/acb/epilog".into(),
                "TaskProlog={dir}/acb/task_prolog".into(),
            ],
        };
        let lab = SlurmLab::start(test, opts)?;
        let acb = lab.dir.0.join("acb");
        let scripts = acb.join("scripts");
        std::fs::create_dir_all(&scripts).unwrap();
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/slurm");
        for f in ["common.sh", "prolog.sh", "epilog.sh", "task_prolog.sh"] {
            std::fs::copy(deploy.join(f), scripts.join(f)).unwrap();
        }
        let env_file = acb.join("slurm.env");
        for s in ["prolog", "epilog", "task_prolog"] {
            let body =
                format!("#!/bin/sh\nACB_SLURM_ENV={} exec {}/{s}.sh \"$@\"\n", env_file.display(), scripts.display());
            let p = acb.join(s);
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        let nm = NodeMode { run: lab.dir.0.join("run"), log: lab.dir.0.join("log/acb-slurm.log"), env_file, lab };
        nm.settings("");
        Some(nm)
    }

    /// Writes the settings file: the run directory, the binary, the log, and `extra` lines.
    fn settings(&self, extra: &str) {
        let bin = self.lab.bin_dir().join("acb-assigner");
        let text = format!(
            "ACB_SLURM_RUN_DIR={}\nACB_ASSIGNER_BIN={}\nACB_SLURM_LOG={}\n{extra}\n",
            self.run.display(),
            bin.display(),
            self.log.display()
        );
        std::fs::write(&self.env_file, text).unwrap();
        // Root's and 0644 whatever the umask: the scripts refuse a file others could write.
        std::fs::set_permissions(&self.env_file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    }

    /// The scripts' log.
    fn acb_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A job's file on a node: `job-ID-NODE.EXT` in the run directory.
    fn file(&self, id: u32, node: &str, ext: &str) -> PathBuf {
        self.run.join(format!("job-{id}-{node}.{ext}"))
    }
}

/// `key=value` words of the lines of `text` that start with `prefix`.
fn fields(text: &str, prefix: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .flat_map(|l| l.split_whitespace())
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Whether `pid` still runs an acb-assigner (not gone, not a zombie).
fn runs_assigner(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("acb-assigner"))
}

/// The node-level mode: two GPU jobs of a non-root user at once on a node of 3 GPUs, with 2 and
/// 1 GPUs. The Prolog starts an assigner for each with exactly that job's GPUs, on a socket the
/// job's user owns; TaskProlog gives the batch script and each step ACB_ASSIGNER; a step's
/// `acb-assigner status` and `alloc` find it with no flag; the Epilog stops it (its pid gone)
/// and removes its files.
#[test]
fn node_mode_gives_each_gpu_job_its_own_assigner() {
    let t0 = Instant::now();
    let Some(nm) = NodeMode::start("node_mode_gives_each_gpu_job_its_own_assigner", 1, 3) else { return };
    let lab = &nm.lab;
    let up = t0.elapsed();
    let step = lab.script(
        "acb_step.sh",
        "#!/bin/bash\n\
         echo \"step ACB_ASSIGNER=${ACB_ASSIGNER-<unset>} JOB_GPUS=$SLURM_JOB_GPUS uid=$(id -u)\"\n\
         sock=${ACB_ASSIGNER#unix:}\n\
         echo \"sock pid=$(cat \"${sock%.sock}.pid\") owner=$(stat -c %u \"$sock\")\"\n\
         acb-assigner status --json >\"status-$SLURM_JOB_ID.json\" || echo \"status failed\"\n\
         acb-assigner alloc --gpus 1 --hold 1s --job \"slurm-$SLURM_JOB_ID\"\n",
    );
    let job = lab.script(
        "acb_job.sh",
        &format!("#!/bin/bash\necho \"batch ACB_ASSIGNER=${{ACB_ASSIGNER-<unset>}}\"\nsrun -n1 {}\n", step.display()),
    );
    // As nobody (65534): the socket must be usable by the job's user, not only root.
    let as_nobody = ["--uid=65534", "--gid=65534", "-N1", "-o", "acb-%j.out"];
    let two = lab.sbatch(&job, &[&as_nobody[..], &["--gres=gpu:2"]].concat());
    let one = lab.sbatch(&job, &[&as_nobody[..], &["--gres=gpu:1"]].concat());
    for (id, gpus) in [(two, 2), (one, 1)] {
        let state = lab.wait_job(id, Duration::from_secs(30));
        let out = lab.job_output(format!("acb-{id}.out"));
        let log = nm.acb_log();
        assert_eq!(state, "COMPLETED", "job {id}: {out}\n{log}");
        let sock = nm.file(id, "node1", "sock");
        let addr = format!("unix:{}", sock.display());
        // TaskProlog's ACB_ASSIGNER reached the batch script and the step.
        assert_eq!(fields(&out, "batch ")["ACB_ASSIGNER"], addr, "{out}");
        let s = fields(&out, "step ");
        assert_eq!(s["ACB_ASSIGNER"], addr, "{out}");
        assert_eq!(s["uid"], "65534", "{out}");
        assert_eq!(s["JOB_GPUS"].split(',').count(), gpus, "{out}");
        assert_eq!(fields(&out, "sock ")["owner"], "65534", "the socket is the job user's: {out}");
        // The assigner had exactly the job's GPUs, on this node.
        let status: serde_json::Value =
            serde_json::from_str(&lab.job_output(format!("status-{id}.json"))).unwrap_or_else(|e| panic!("{e}: {out}"));
        let g = status["gpus"].as_array().unwrap();
        assert_eq!(g.len(), gpus, "job {id} ({gpus} GPUs): {status}");
        assert!(g.iter().all(|g| g["node"] == "node1"), "{status}");
        assert!(out.contains("granted lease") && out.contains("released lease"), "{out}");
        // The Epilog stopped it: the pid runs no assigner, the files are gone.
        let pid: u32 = fields(&out, "sock ")["pid"].parse().unwrap();
        assert!(!runs_assigner(pid), "job {id}'s assigner (pid {pid}) still runs after the job\n{log}");
        for ext in ["sock", "pid", "log"] {
            assert!(!nm.file(id, "node1", ext).exists(), "job {id}'s .{ext} left\n{log}");
        }
        assert!(log.contains(&format!("job {id} on node1: acb-assigner (pid {pid}) serves GPUs")), "{log}");
        assert!(log.contains(&format!("job {id} on node1: stopped acb-assigner (pid {pid})")), "{log}");
    }
    assert_eq!(lab.node_state("node1").0, "IDLE");
    eprintln!("node mode, GPU jobs: cluster up in {up:?}, all in {:?}\n{}", t0.elapsed(), nm.acb_log());
}

/// A job without GPUs gets no assigner; an assigner that cannot start is logged and the job runs
/// without acb (the node is not drained); with ACB_SLURM_STRICT=1 the same failure fails the
/// Prolog, and Slurm drains the node.
#[test]
fn node_mode_leaves_jobs_without_gpus_alone_and_survives_a_failed_start() {
    let t0 = Instant::now();
    let Some(nm) = NodeMode::start("node_mode_leaves_jobs_without_gpus_alone_and_survives_a_failed_start", 1, 2) else {
        return;
    };
    let lab = &nm.lab;
    let step = lab.script(
        "plain_step.sh",
        &format!(
            "#!/bin/bash\necho \"step ACB_ASSIGNER=${{ACB_ASSIGNER-<unset>}} files=$(ls {} 2>/dev/null | grep -c \"^job-$SLURM_JOB_ID-\") \
             assigners=$(pgrep -c -f \"job-$SLURM_JOB_ID-\")\"\n",
            nm.run.display()
        ),
    );
    let job = lab.script("plain_job.sh", &format!("#!/bin/bash\nsrun -n1 {}\n", step.display()));
    let run = |args: &[&str]| {
        let id = lab.sbatch(&job, &[&["-N1", "-o", "plain-%j.out"], args].concat());
        (id, lab.wait_job(id, Duration::from_secs(30)), lab.job_output(format!("plain-{id}.out")))
    };
    let unused = |out: &str| {
        let s = fields(out, "step ");
        s["ACB_ASSIGNER"] == "<unset>" && s["files"] == "0" && s["assigners"] == "0"
    };

    // No GPUs: nothing started, nothing logged.
    let (id, state, out) = run(&[]);
    assert_eq!(state, "COMPLETED", "{out}");
    assert!(unused(&out), "a job without GPUs: {out}");
    assert!(!nm.acb_log().contains(&format!("job {id} ")), "{}", nm.acb_log());

    // An assigner that cannot start (a bad --gpus): logged, the job runs without acb.
    nm.settings("ACB_SLURM_GPUS=nonsense");
    let (id, state, out) = run(&["--gres=gpu:1"]);
    let log = nm.acb_log();
    assert_eq!(state, "COMPLETED", "{out}\n{log}");
    assert!(unused(&out), "{out}");
    assert!(
        log.contains(&format!("job {id} on node1: FAILED, the job runs without acb: acb-assigner exited")),
        "{log}"
    );
    for ext in ["sock", "pid", "log"] {
        assert!(!nm.file(id, "node1", ext).exists(), ".{ext} left\n{log}");
    }
    assert_eq!(lab.node_state("node1").0, "IDLE", "a failed start must not drain the node");

    // The same with ACB_SLURM_STRICT=1: the Prolog fails, Slurm drains the node (and holds the
    // job, which the lab cancels at the end).
    nm.settings("ACB_SLURM_GPUS=nonsense\nACB_SLURM_STRICT=1");
    let id = lab.sbatch(&job, &["-N1", "-o", "plain-%j.out", "--gres=gpu:1"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (state, reason) = loop {
        let (state, reason) = lab.node_state("node1");
        if state.contains("DRAIN") || Instant::now() > deadline {
            break (state, reason);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(state.contains("DRAIN"), "node1 {state} ({reason})\n{}", nm.acb_log());
    assert!(reason.to_lowercase().contains("prolog"), "{reason}");
    assert!(
        nm.acb_log().contains(&format!("job {id} on node1: FAILED, the job cannot start here")),
        "{}",
        nm.acb_log()
    );
    eprintln!("node mode, no GPUs and failures: {:?} (node1 {state}: {reason})\n{}", t0.elapsed(), nm.acb_log());
}
