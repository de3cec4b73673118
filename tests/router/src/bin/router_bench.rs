//! The router's own cost, measured side by side in one run: the same requests to the same test
//! model server (`acb-test-model`, a test double with no model: it answers at once), directly
//! and through `acb-router`, interleaved so that the machine's noise hits both alike.
//!
//! Prints, for a whole non-streaming chat completion and for the time to first byte of a
//! streamed one, the latency percentiles of both paths and what the router adds at p50; then
//! requests per second through the router against direct, with several clients.
//!
//! ```text
//! cargo build --release -p acb-router-tests && target/release/router-bench [--requests N] [--seconds S] [--clients C]
//! ```

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use acb_router_tests::{Conn, TempDir, assigner, router, test_model};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Requests per path for the latency figures.
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Seconds per path and round for the throughput figures.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Concurrent clients for the throughput figures.
    #[arg(long, default_value_t = 4)]
    clients: usize,
}

fn beside_me(name: &str) -> PathBuf {
    let me = std::env::current_exe().expect("current_exe");
    me.with_file_name(name)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn report(what: &str, direct: &mut [Duration], routed: &mut [Duration]) -> f64 {
    direct.sort();
    routed.sort();
    println!("{what}");
    println!("  {:<8} {:>10} {:>10} {:>10}", "path", "p50 us", "p90 us", "p99 us");
    for (name, v) in [("direct", &*direct), ("router", &*routed)] {
        println!(
            "  {:<8} {:>10.1} {:>10.1} {:>10.1}",
            name,
            us(percentile(v, 0.5)),
            us(percentile(v, 0.9)),
            us(percentile(v, 0.99))
        );
    }
    let added = us(percentile(routed, 0.5)) - us(percentile(direct, 0.5));
    println!(
        "  added by the router at p50: {added:.1} us ({:.2}x direct)",
        us(percentile(routed, 0.5)) / us(percentile(direct, 0.5))
    );
    added
}

/// `clients` threads, each with its own kept-alive connection, for `seconds`; requests done.
fn throughput(addr: &str, body: &[u8], clients: usize, seconds: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (stop, done, addr, body) = (Arc::clone(&stop), Arc::clone(&done), addr.to_string(), body.to_vec());
            std::thread::spawn(move || {
                let mut c = Conn::connect(&addr).expect("connect");
                while !stop.load(Ordering::Relaxed) {
                    let t = c.post("/v1/chat/completions", &body).expect("request");
                    assert_eq!(t.status, 200);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("client thread");
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let args = Args::parse();
    let dir = TempDir::new("bench");
    let (_assigner, addr) = assigner(&beside_me("router-tests-assigner"), &dir, &["--gpus", "fake:1x80GiB"]);
    let (_server, url) = test_model(&beside_me("acb-test-model"), "bench", &[]);
    let toml =
        format!("assigner = \"{addr}\"\n[models.bench]\nengine = \"vllm\"\nurl = \"{url}\"\nidle_ttl = \"1h\"\n");
    let (_router, r) = router(&beside_me("router-tests-router"), &dir, &toml);
    println!("acb-router bench: test model server (a test double, answers at once) on a simulated GPU");
    println!("one run, direct and routed requests interleaved; {} requests per path", args.requests);
    let chat = serde_json::json!({"model": "bench", "max_tokens": 16,
        "messages": [{"role": "user", "content": "the quick brown fox jumps over the lazy dog"}]})
    .to_string();
    let stream = serde_json::json!({"model": "bench", "max_tokens": 16, "stream": true,
        "messages": [{"role": "user", "content": "the quick brown fox jumps over the lazy dog"}]})
    .to_string();
    let mut direct = Conn::connect(&url).expect("direct");
    let mut routed = Conn::connect(&r).expect("router");
    // The first routed request wakes the model (takes the lease): not measured.
    let warm = Instant::now();
    assert_eq!(routed.post("/v1/chat/completions", chat.as_bytes()).expect("wake").status, 200);
    println!("first request (lease grant + wake_up): {:.1} ms, not counted", warm.elapsed().as_secs_f64() * 1e3);
    for _ in 0..200 {
        direct.post("/v1/chat/completions", chat.as_bytes()).expect("warm direct");
        routed.post("/v1/chat/completions", chat.as_bytes()).expect("warm routed");
    }
    let (mut d_total, mut r_total) = (Vec::new(), Vec::new());
    let (mut d_first, mut r_first) = (Vec::new(), Vec::new());
    for i in 0..args.requests {
        let order: [bool; 2] = if i % 2 == 0 { [true, false] } else { [false, true] };
        for via_router in order {
            let c = if via_router { &mut routed } else { &mut direct };
            let t = c.post("/v1/chat/completions", chat.as_bytes()).expect("chat");
            assert_eq!(t.status, 200);
            if via_router {
                r_total.push(t.total)
            } else {
                d_total.push(t.total)
            }
            let t = c.post("/v1/chat/completions", stream.as_bytes()).expect("stream");
            assert_eq!(t.status, 200);
            if via_router { r_first.push(t.first_byte) } else { d_first.push(t.first_byte) }
        }
    }
    println!();
    report("whole response, non-streaming chat completion", &mut d_total, &mut r_total);
    println!();
    report("time to first byte, streamed chat completion", &mut d_first, &mut r_first);
    println!();
    println!(
        "throughput: {} clients, kept-alive connections, {:.1} s per path, 3 rounds alternating",
        args.clients, args.seconds
    );
    let (mut d_rps, mut r_rps) = (Vec::new(), Vec::new());
    for round in 0..3 {
        let d = throughput(&url, chat.as_bytes(), args.clients, args.seconds);
        let rr = throughput(&r, chat.as_bytes(), args.clients, args.seconds);
        println!("  round {round}: direct {d:.0} req/s, router {rr:.0} req/s, ratio {:.2}", rr / d);
        d_rps.push(d);
        r_rps.push(rr);
    }
    let (d, rr): (f64, f64) = (d_rps.iter().sum::<f64>() / 3.0, r_rps.iter().sum::<f64>() / 3.0);
    println!("  mean: direct {d:.0} req/s, router {rr:.0} req/s, router/direct {:.2}", rr / d);
    println!(
        "(one machine: the client, the router and the server share its {} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}
