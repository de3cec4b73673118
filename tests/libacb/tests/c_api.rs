//! The C side, from the test suite: C programs are compiled against `include/acb.h` and the
//! freshly built libacb with `-Wall -Wextra -Werror -Wpedantic` and AddressSanitizer + UBSan,
//! then run as real processes against a real assigner on a temporary Unix socket.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use acb_core::record::EventKind;
use common::{Assigner, compile, lib_dir, root, scratch};

mod common;

fn run(bin: &Path, args: &[&str], assigner: Option<&str>) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args).env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1").env_remove("ACB_ASSIGNER");
    if let Some(a) = assigner {
        cmd.env("ACB_ASSIGNER", a);
    }
    cmd.output().unwrap()
}

#[test]
fn the_c_api_contract_holds_under_sanitizers() {
    let dir = scratch("api");
    let bin = dir.join("api_test");
    compile(&root().join("bindings/c/tests/api_test.c"), &bin);
    let a = Assigner::start("api", "fake:1x80GiB");
    let out = run(&bin, &[], Some(&a.addr()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    let passed: u32 = stdout.split_whitespace().next().unwrap().parse().unwrap();
    assert!(passed >= 50, "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_cpp_wrapper_works_under_sanitizers() {
    let dir = scratch("cpp");
    let bin = dir.join("cpp_test");
    compile(&root().join("bindings/c/tests/cpp_test.cpp"), &bin);
    let a = Assigner::start("cpp", "fake:1x80GiB");
    let out = run(&bin, &[], Some(&a.addr()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    let passed: u32 = stdout.split_whitespace().next().unwrap().parse().unwrap();
    assert!(passed >= 38, "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}

/// `acb.hpp` wraps the whole C API: every function `acb.h` declares is called from it, but for
/// the allocator's entry points, which PyTorch and the cudaMalloc interposer call, and the
/// automatic mode's gate, which the CUDA interposer calls (acb.hpp names them in comments).
#[test]
fn the_cpp_wrapper_calls_every_function_of_the_header() {
    let header = std::fs::read_to_string(root().join("include/acb.h")).unwrap();
    let wrapper = std::fs::read_to_string(root().join("bindings/c/include/acb.hpp")).unwrap();
    let declared: Vec<&str> = header
        .lines()
        .filter(|l| !l.starts_with([' ', '#', '/', '*']) && l.contains('('))
        .filter_map(|l| l[..l.find('(')?].rsplit([' ', '*']).next())
        .filter(|name| name.starts_with("acb_"))
        .collect();
    assert!(declared.len() > 30 && declared.contains(&"acb_config_set_group"), "{declared:?}");
    // PyTorch's allocator entry points, and the interposer's gate.
    let for_pytorch = [
        "acb_allocator_malloc",
        "acb_allocator_malloc_or_abort",
        "acb_allocator_free",
        "acb_auto_enter",
        "acb_auto_exit",
        "acb_auto_note_context",
        "acb_auto_forget_context",
    ];
    let missing: Vec<_> =
        declared.iter().filter(|f| !wrapper.contains(&format!("{f}(")) && !for_pytorch.contains(f)).collect();
    assert!(missing.is_empty(), "acb.hpp does not wrap {missing:?}");
}

/// Eight real processes (four C, four Python), one simulated GPU: the GPU never has two holders, every process
/// finishes, and the run takes about the sum of the GPU phases, not of the whole jobs.
#[test]
fn eight_pipeline_processes_share_one_gpu() {
    let dir = scratch("eight");
    let bin = dir.join("pipeline");
    compile(&root().join("bindings/c/examples/pipeline.c"), &bin);
    let a = Assigner::start("eight", "fake:1x80GiB");
    let (phases, cpu_ms, gpu_ms) = (4u64, 300u64, 100u64);
    let start = Instant::now();
    let args = [phases.to_string(), cpu_ms.to_string(), gpu_ms.to_string()];
    // Four C processes and four Python processes (the same pipeline, through the `acb` package).
    let mut children: Vec<std::process::Child> = (0..8)
        .map(|i| {
            let mut cmd = if i < 4 {
                let mut c = Command::new(&bin);
                c.env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1");
                c
            } else {
                let mut c = Command::new("python3");
                c.arg(root().join("bindings/python/examples/pipeline.py"))
                    .env("ACB_LIBRARY", lib_dir().join("libacb.so"))
                    .env("PYTHONPATH", root().join("bindings/python"));
                c
            };
            cmd.args(&args)
                .env("ACB_ASSIGNER", a.addr())
                .env("ACB_JOB_ID", format!("pipeline-{i}"))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children.drain(..) {
        let out = c.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && stdout.contains(&format!("done: {phases} phases")), "{stdout}");
    }
    let wall = start.elapsed();
    let events = a.events();
    check_one_holder_at_a_time(&events);
    let grants = events.iter().filter(|e| matches!(e.kind, EventKind::Granted { .. })).count();
    assert!(grants >= 8, "every process was granted at least once ({grants} grants)");
    let gpu_sum = Duration::from_millis(8 * phases * gpu_ms);
    let whole_sum = Duration::from_millis(8 * phases * (gpu_ms + cpu_ms));
    eprintln!("8 processes: wall {wall:?}, sum of GPU phases {gpu_sum:?}, sum of whole jobs {whole_sum:?}");
    // Brokered, the jobs overlap their CPU phases: the run lasts about the GPU phases' sum (plus
    // one job's CPU time), far below running the jobs one after another. The bound is generous
    // so that a loaded machine does not fail it; the figures are printed above.
    assert!(wall < whole_sum.mul_f64(0.75), "wall {wall:?} vs whole jobs {whole_sum:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// From the record: on GPU 0, each grant starts after the previous lease was released.
fn check_one_holder_at_a_time(events: &[acb_core::record::Event]) {
    let mut holder: Option<u64> = None;
    for e in events {
        match &e.kind {
            EventKind::Granted { lease, gpus, .. } if gpus.contains(&0) => {
                assert!(holder.is_none(), "lease {lease} granted while lease {holder:?} held the GPU");
                holder = Some(*lease);
            }
            EventKind::Released { lease, .. } if holder == Some(*lease) => holder = None,
            _ => {}
        }
    }
}

/// The AlphaFold-like example in C and in Python (examples/alphafold-pipeline), side by side on
/// one simulated GPU: both fold every protein, and the GPU never has two holders.
#[test]
fn the_alphafold_like_examples_fold_in_c_and_python() {
    let dir = scratch("fold");
    let bin = dir.join("fold");
    compile(&root().join("examples/alphafold-pipeline/fold.c"), &bin);
    let a = Assigner::start("fold", "fake:1x80GiB");
    let c = Command::new(&bin)
        .args(["2", "60", "30"])
        .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
        .env("ACB_ASSIGNER", a.addr())
        .env("ACB_JOB_ID", "fold-c")
        .spawn_output();
    let py = Command::new("python3")
        .arg(root().join("examples/alphafold-pipeline/fold.py"))
        .args(["--proteins", "2", "--msa", "0.06", "--fold", "0.03"])
        .env("ACB_ASSIGNER", a.addr())
        .env("ACB_JOB_ID", "fold-py")
        .env("ACB_LIBRARY", lib_dir().join("libacb.so"))
        .env("PYTHONPATH", root().join("bindings/python"))
        .spawn_output();
    for (name, out) in [("C", c.join().unwrap()), ("Python", py.join().unwrap())] {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{name}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(stdout.matches("folded on GPU 0").count(), 2, "{name}: {stdout}");
        assert!(stdout.contains("done: 2 proteins"), "{name}: {stdout}");
    }
    let events = a.events();
    check_one_holder_at_a_time(&events);
    for job in ["fold-c", "fold-py"] {
        assert!(
            events.iter().any(|e| matches!(&e.kind, EventKind::Granted { job: j, .. } if j == job)),
            "{job} was never granted"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Runs a command on a thread of its own, so that two can run at once.
trait SpawnOutput {
    fn spawn_output(&mut self) -> std::thread::JoinHandle<Output>;
}

impl SpawnOutput for Command {
    fn spawn_output(&mut self) -> std::thread::JoinHandle<Output> {
        let child = self
            .env_remove("ACB_PROFILE")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::spawn(move || child.wait_with_output().unwrap())
    }
}

/// The `cudaMalloc`/`cudaFree` interposer under `LD_PRELOAD`, with no CUDA runtime present:
/// allocations go to libacb while a client is set, CUDA errors otherwise.
#[test]
fn the_cuda_malloc_interposer_sends_allocations_to_libacb() {
    let dir = scratch("preload");
    let bin = dir.join("preload_test");
    compile(&root().join("bindings/c/tests/preload_test.c"), &bin);
    let preload = lib_dir().join("libacb_preload.so");
    assert!(preload.exists(), "{} not built (acb-ffi's dev-dependency builds it)", preload.display());
    let a = Assigner::start("preload", "fake:1x80GiB");
    let out = Command::new(&bin)
        .env("ACB_ASSIGNER", a.addr())
        .env("LD_PRELOAD", &preload)
        // ASan wants to be first in the library list; the interposer comes first here.
        .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1:verify_asan_link_order=0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    let passed: u32 = stdout.split_whitespace().next().unwrap().parse().unwrap();
    assert!(passed >= 20, "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}
