//! Writes the hand-made seed inputs of each fuzz target into DIR/TARGET/ (default
//! fuzz/corpus-seed): valid requests, traces, settings files and C ABI inputs, and a few near
//! misses. `fuzz/run.sh` fuzzes from them; `cargo fuzz cmin` keeps what adds coverage.
//!
//! cargo run -p acb-fuzz-targets --example seed_corpus [DIR]
// `..Default::default()` everywhere, though some messages are given every field now: the proto
// grows, and a seed should not stop compiling when it does.
#![allow(clippy::expect_used, clippy::needless_update)]

use std::path::{Path, PathBuf};

use acb_proto::v1::{self as proto, session_request::Msg};
use prost::Message;

fn main() {
    let dir = std::env::args().nth(1).map_or_else(|| PathBuf::from("fuzz/corpus-seed"), PathBuf::from);
    write(&dir, "requests", requests());
    write(&dir, "trace", traces().into_iter().map(String::into_bytes).collect());
    write(&dir, "settings", settings().into_iter().map(String::into_bytes).collect());
    write(&dir, "c_abi", c_abi());
}

fn write(dir: &Path, target: &str, inputs: Vec<Vec<u8>>) {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir).expect("create the seed directory");
    for (i, input) in inputs.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), input).expect("write a seed");
    }
    println!("{}: {} seeds", dir.display(), inputs.len());
}

fn requests() -> Vec<Vec<u8>> {
    let session = |msg| proto::SessionRequest { msg: Some(msg) }.encode_to_vec();
    let alloc = proto::AllocateRequest {
        client_token: "0123456789abcdef0123456789abcdef".into(),
        job: "fold-1".into(),
        gpus: 2,
        memory_per_gpu: Some(8 << 30),
        priority: 3,
        required_gpus: vec![0, 1],
        preferred_gpus: vec![2],
        request_tag: 9,
        ..Default::default()
    };
    vec![
        session(Msg::Hello(proto::Hello {
            job: "fold-1".into(),
            pid: 4242,
            grants_on_session: true,
            ..Default::default()
        })),
        session(Msg::Hello(proto::Hello { job: "bad\njob".into(), pid: 1, ..Default::default() })),
        session(Msg::Phase(proto::PhaseReport { lease_id: 7, idle: true, ..Default::default() })),
        session(Msg::Swap(proto::SwapReport { bytes_in: 1 << 30, bytes_out: 1 << 20, ..Default::default() })),
        alloc.encode_to_vec(),
        proto::AllocateRequest { client_token: "t".repeat(129), ..alloc.clone() }.encode_to_vec(),
        proto::AllocateRequest { preferred_gpus: vec![5; 4097], ..alloc }.encode_to_vec(),
        proto::ReleaseRequest { client_token: "0123456789abcdef".into(), lease_id: 7, ..Default::default() }
            .encode_to_vec(),
        proto::WatchRequest { replay: true, ..Default::default() }.encode_to_vec(),
        Vec::new(),
    ]
}

fn traces() -> Vec<String> {
    vec![
        r#"{"gpus": "fake:1x80GiB", "swap_bandwidth": "20GB", "jobs": [
  {"name": "alphafold2", "count": 8, "memory": "8GiB", "repeat": 10,
   "phases": [{"cpu": "490s"}, {"gpu": "110s"}]}]}"#
            .into(),
        r#"{"jobs": [
  {"name": "train", "arrival": "1.5m", "gpus": 2, "priority": -1, "memory": "40GB",
   "phases": [{"gpu": "1h"}]},
  {"name": "infer", "count": 3, "arrival": "250ms", "memory": "512MiB", "repeat": 4,
   "phases": [{"cpu": "30s"}, {"gpu": "2s"}, {"cpu": "1s"}]}]}"#
            .into(),
        r#"{"gpus": "fake:2x40GiB,1x80GiB", "jobs": [{"name": "x", "memory": "1024", "phases": []}]}"#.into(),
        r#"{"jobs": [{"name": "both", "memory": "1GiB", "phases": [{"cpu": "1s", "gpu": "1s"}]}]}"#.into(),
        r#"{"jobs": [{"name": "many", "count": 100001, "memory": "1GiB", "phases": [{"gpu": "1s"}]}]}"#.into(),
        r#"{"swap_bandwidth": "0", "jobs": []}"#.into(),
    ]
}

fn settings() -> Vec<String> {
    vec![
        r#"listen = ["unix:/run/acb/assigner.sock", "tcp:127.0.0.1:7878", "tcp:[::1]:9"]
gpus = "fake:2x80GiB,1x40GiB"
scheduler = "gpu-sharing"
quantum = "500ms"
metrics = "127.0.0.1:9400"
log_format = "json"
node_name = "node-1"
"#
        .into(),
        "gpus = \"none\"\nscheduler = \"gpu-affinity\"\nquantum = \"1.5m\"\nlog_format = \"text\"\n".into(),
        "listen = [\"unix:relative.sock\"]\ngpus = \"auto\"\nscheduler = \"simple\"\nquantum = \"2h\"\n".into(),
        "metrics = \"[::1]:9400\"\nauth_token_file = \"/etc/acb/token\"\n".into(),
        "scheduler = \"fair\"\n".into(),
        "gpus = \"fake:0x80GiB\"\n".into(),
        "schedular = \"simple\"\n".into(),
        "quantum = \"soon\"\n".into(),
    ]
}

fn c_abi() -> Vec<Vec<u8>> {
    let input = |flags: u8, fields: &[&[u8]]| {
        let mut v = vec![flags];
        v.extend(fields.join(&0u8));
        v
    };
    let job300 = vec![b'j'; 300];
    vec![
        input(0, &[b"unix:/tmp/acb-fuzz.sock", b"job-1", b"host", b"1", b"0"]),
        input(
            0x32,
            &[
                b"tcp:127.0.0.1:7878",
                b"",
                b"",
                b"",
                b"",
                b"unix:/run/acb/assigner.sock",
                b"fold-1",
                b"0123456789abcdef",
                b"host",
            ],
        ),
        input(0x07, &[b"", b"begin-test", b"host", b"0", b"1", b"unix:/x.sock", b"job"]),
        input(0xd4, &[b"tcp:nowhere", &job300, b"cuda", b"maybe", b"yes"]),
        input(0x0f, &[b"", b"", b"", b"", b"", b"udp:1.2.3.4:5", b"a\tb", b"\xff\xfe", b"gpu"]),
        input(0x47, &[b"", b"", b"cuda"]),
    ]
}
