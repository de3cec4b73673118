#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! acb-router attacked from outside, with real processes on 127.0.0.1: clients that hang up or
//! flood, hostile request bodies and framing, broken or hostile model servers, an assigner that
//! dies, hostile configuration files, and signals to the router. Each test is bounded in time;
//! every process a test starts is killed when the test ends (`Proc`), and a test that leaves a
//! server behind kills it by its pid.
//!
//! Some tests guard behaviour that is right today; the others reproduce a fault (each says
//! which, and what should happen instead).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use acb_router_tests::{
    TempDir, assigner, chat, events, free_port, get, http, model_state, post, router, test_model, wait_for,
};
use serde_json::{Value, json};

const ASSIGNER: &str = env!("CARGO_BIN_EXE_router-tests-assigner");
const ROUTER: &str = env!("CARGO_BIN_EXE_router-tests-router");
const MODEL: &str = env!("CARGO_BIN_EXE_acb-test-model");

/// A model table for a test model the router starts.
fn started_model(name: &str, engine: &str, extra: &str, table: &str) -> String {
    let port = free_port();
    format!(
        "[models.{name}]\nengine = \"{engine}\"\nport = {port}\ncommand = [\"{MODEL}\", \"--name\", \"{name}\", \"--listen\", \"127.0.0.1:{{port}}\"{extra}]\n{table}\n"
    )
}

/// Leases each job holds now, by `acb-assigner status --json`.
fn leases(addr: &str) -> Vec<(String, u64)> {
    let out = Command::new(ASSIGNER).args(["status", "--json", "--assigner", addr]).output().unwrap();
    let status: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    status["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["job"].as_str().unwrap_or_default().to_string(), c["leases"].as_u64().unwrap_or(0)))
        .collect()
}

fn leases_held(addr: &str) -> u64 {
    leases(addr).iter().map(|(_, n)| n).sum()
}

/// Whether `pid` runs (a zombie does not: nobody may reap an orphan in a container).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(')').unwrap();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based, as proc(5) counts).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf(3) reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ticks as f64 / hz as f64
}

/// Sends `raw` on a new connection and reads until the peer closes or `timeout` passes.
fn raw_exchange(addr: &str, raw: &[u8], timeout: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// TEST DOUBLE written here: a `url`-only "vLLM" server that answers its sleep-mode endpoints
/// (`/is_sleeping`: true; `/sleep`, `/wake_up`, `/health`: 200) and answers every other request
/// as `mode` says: `garbage` (not HTTP), `midstream` (a stream cut after one chunk), `hang` (no
/// answer for 20 s), `echo` (the request's head as JSON). One thread per connection, every
/// answer `connection: close`. Returns its URL.
fn fake_vllm(mode: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || serve_fake(conn, mode));
        }
    });
    url
}

fn serve_fake(conn: TcpStream, mode: &str) {
    conn.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut reader = BufReader::new(conn);
    let mut head = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
        if let Some((n, v)) = line.split_once(':')
            && n.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
        head.push(line.trim_end().to_string());
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let mut conn = reader.into_inner();
    let path = head.first().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("").to_string();
    let ok = |conn: &mut TcpStream, body: &str| {
        let _ = conn.write_all(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    };
    if path.starts_with("/is_sleeping") {
        ok(&mut conn, "{\"is_sleeping\": true}");
    } else if ["/sleep", "/wake_up", "/health"].iter().any(|p| path.starts_with(p)) {
        ok(&mut conn, "{}");
    } else {
        match mode {
            "garbage" => {
                let _ = conn.write_all(b"\x00\x01 this is not HTTP\r\n\r\n");
            }
            "midstream" => {
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n9\r\ndata: 1\n\n\r\n",
                );
                std::thread::sleep(Duration::from_millis(200));
            }
            "hang" => std::thread::sleep(Duration::from_secs(20)),
            _ => ok(&mut conn, &json!({ "head": head }).to_string()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Faults found: each of these fails until the router is fixed.
// ---------------------------------------------------------------------------------------------

/// FAULT (high): a vLLM server the router started that dies while asleep (a host OOM while it
/// holds its weights in host memory, a crash) is never restarted. The next wake does
/// `POST /wake_up` to the dead server (its child was never reaped, so the router thinks it still
/// runs), fails, and so does every later one: the model answers 502 until the router restarts,
/// `max_restarts` never counts it, and `/running` shows the dead (zombie) pid. It should be
/// started again (a cold start) at the next request.
#[test]
fn a_vllm_server_that_died_while_asleep_is_started_again() {
    let dir = TempDir::new("h-deadasleep");
    let (_assigner, addr) = assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB"]);
    let toml = format!("assigner = \"{addr}\"\n{}", started_model("dozer", "vllm", "", "idle_ttl = \"200ms\""));
    let (_router, r) = router(Path::new(ROUTER), &dir, &toml);
    assert_eq!(post(&r, "/v1/chat/completions", &chat("dozer", "hello")).unwrap().status, 200);
    wait_for("dozer to sleep", Duration::from_secs(10), || model_state(&r, "dozer")["state"] == "asleep");
    let pid = model_state(&r, "dozer")["pid"].as_i64().expect("a vLLM server runs while asleep") as i32;
    // SAFETY: kill(2) on the test model server the router started for this test.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for("the server to die", Duration::from_secs(5), || !alive(pid));
    let resp = post(&r, "/v1/chat/completions", &chat("dozer", "are you there")).unwrap();
    assert_eq!(resp.status, 200, "a dead sleeping server was not started again: {}", resp.text());
    assert_ne!(model_state(&r, "dozer")["pid"].as_i64(), Some(i64::from(pid)), "/running shows the dead pid");
}

/// FAULT (medium): a model's port already taken by another process (an orphan of an earlier
/// router, another service) is not noticed. The router starts the command, which fails to
/// bind, but the health check is answered by the squatter, so the model is "awake" and its
/// requests are answered by the squatter: another model, or a server holding the GPU without a
/// lease. The wake should fail (502: the port is in use) and the squatter get nothing.
#[test]
fn a_port_in_use_by_another_server_is_not_routed_to() {
    let dir = TempDir::new("h-squat");
    let (_assigner, addr) = assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB"]);
    let (_squatter, url) = test_model(Path::new(MODEL), "squatter", &[]);
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let toml = format!(
        "assigner = \"{addr}\"\n[models.victim]\nengine = \"process\"\nport = {port}\ncommand = [\"{MODEL}\", \"--name\", \"victim\", \"--listen\", \"127.0.0.1:{{port}}\"]\n"
    );
    let (_router, r) = router(Path::new(ROUTER), &dir, &toml);
    let resp = post(&r, "/v1/chat/completions", &chat("victim", "who answers")).unwrap();
    assert!(
        !resp.text().contains("squatter heard"),
        "a request for victim was answered by the process squatting its port: {}",
        resp.text()
    );
    assert_ne!(resp.status, 200, "{}", resp.text());
}

/// FAULT (medium): `wake_timeout` ("grant + start/wake + health, at most", says the README)
/// is applied twice: once to the grant, then again, in full, to the start and health check.
/// A model granted its GPU late in its timeout may take nearly twice its wake timeout to wake,
/// and the requests queued for it wait that long. Here the grant comes after about 1.5 s
/// (another model's stream) and the server takes 2 s to start: with wake_timeout = 2.5 s the
/// request must be answered (502) by about 2.5 s, not at about 3.5 s (200).
#[test]
fn wake_timeout_bounds_the_grant_and_the_start_together() {
    let dir = TempDir::new("h-waketimeout");
    let (_assigner, addr) = assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB"]);
    let toml = format!(
        "assigner = \"{addr}\"\n{}{}",
        started_model("hog", "vllm", ", \"--token-delay-ms\", \"100\"", "idle_ttl = \"100ms\""),
        started_model("late", "process", ", \"--start-delay-ms\", \"2000\"", "wake_timeout = \"2500ms\"")
    );
    let (_router, r) = router(Path::new(ROUTER), &dir, &toml);
    let body = json!({"model": "hog", "stream": true, "max_tokens": 15, "prompt": (0..15).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ")});
    let r2 = r.clone();
    let stream = std::thread::spawn(move || post(&r2, "/v1/completions", &body));
    wait_for("hog to stream", Duration::from_secs(10), || model_state(&r, "hog")["in_flight"] == 1);
    let started = Instant::now();
    let resp = post(&r, "/v1/chat/completions", &chat("late", "x")).unwrap();
    let took = started.elapsed();
    assert_eq!(stream.join().unwrap().unwrap().status, 200);
    assert!(
        took < Duration::from_millis(3200),
        "a wake with wake_timeout = 2.5 s took {took:?} (status {}): the timeout was applied to the grant and again to the start",
        resp.status
    );
}

/// FAULT (medium): while the router drains at shutdown, each model task with requests in
/// flight spins at full CPU: after the stop signal's sender is dropped, `shutdown.changed()`
/// in `awake()`'s select returns an error at once, every time. For up to `drain_timeout` (30 s
/// by default) a core burns, taken from the very servers finishing the drained requests. The
/// drain should wait idly.
#[test]
fn the_shutdown_drain_does_not_spin() {
    let dir = TempDir::new("h-spin");
    let (_assigner, addr) = assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB"]);
    let toml = format!(
        "assigner = \"{addr}\"\n{}",
        started_model("drawl", "vllm", ", \"--token-delay-ms\", \"100\"", "idle_ttl = \"1h\"")
    );
    let (mut router_proc, r) = router(Path::new(ROUTER), &dir, &toml);
    let body = json!({"model": "drawl", "stream": true, "max_tokens": 25, "prompt": (0..25).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ")});
    let r2 = r.clone();
    let stream = std::thread::spawn(move || post(&r2, "/v1/completions", &body));
    wait_for("the stream to start", Duration::from_secs(10), || model_state(&r, "drawl")["in_flight"] == 1);
    let before = cpu_seconds(router_proc.pid());
    router_proc.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(1500));
    let used = cpu_seconds(router_proc.pid()) - before;
    let streamed = stream.join().unwrap().unwrap();
    assert!(streamed.text().ends_with("data: [DONE]\n\n"), "the drain cut the stream: {}", streamed.text());
    assert_eq!(router_proc.wait_exit(Duration::from_secs(15)).unwrap(), Some(0));
    assert!(used < 0.5, "the router used {used:.2} s of CPU in 1.5 s of draining one stream");
}

/// FAULT (medium): a server started through a wrapper (`sh -c "... vllm serve ..."`, a
/// script that activates a venv) outlives a router killed by SIGKILL (or an OOM kill): only the
/// wrapper gets the PDEATHSIG, and the server, holding its GPU and its port, is orphaned. Next
/// time the router starts, the orphan squats the port (see the test above) and holds GPU
/// memory no lease accounts for. The router's servers should all die with it (its whole
/// process group, as SIGTERM already does).
#[test]
fn servers_die_with_a_killed_router_even_behind_a_wrapper() {
    let dir = TempDir::new("h-orphan");
    let (_assigner, addr) =
        assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB", "--scheduler", "gpu-sharing"]);
    let pidfile = dir.path("server.pid");
    let wrapped_port = free_port();
    let toml = format!(
        "assigner = \"{addr}\"\n[defaults]\nidle_ttl = \"1h\"\n{}[models.wrapped]\nengine = \"process\"\nport = {wrapped_port}\nmemory = \"10GiB\"\ncommand = [\"sh\", \"-c\", \"{MODEL} --name wrapped --listen 127.0.0.1:{{port}} & echo $! > {}; wait\"]\n",
        started_model("direct", "vllm", "", "memory = \"10GiB\""),
        pidfile.display()
    );
    let (mut router_proc, r) = router(Path::new(ROUTER), &dir, &toml);
    for name in ["direct", "wrapped"] {
        let resp = post(&r, "/v1/chat/completions", &chat(name, "hi")).unwrap();
        assert_eq!(resp.status, 200, "{name}: {}", resp.text());
    }
    let direct = model_state(&r, "direct")["pid"].as_i64().unwrap() as i32;
    let wrapped: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    router_proc.signal(libc::SIGKILL);
    let _ = router_proc.wait_exit(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(5);
    while (alive(direct) || alive(wrapped)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (direct_alive, wrapped_alive) = (alive(direct), alive(wrapped));
    for pid in [direct, wrapped] {
        if alive(pid) {
            // SAFETY: kill(2) on a test model server this test had started (through the router).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    assert!(!direct_alive, "the router's direct server outlived it");
    assert!(!wrapped_alive, "the server behind a wrapper outlived a SIGKILLed router (orphan pid {wrapped})");
}

/// FAULT (low): `queue_size = 0` is accepted, and then a sleeping model can never be woken:
/// every request is refused as "queue full" before anything asks for a wake, forever. The file
/// should be refused at start (or the model still be wakeable).
#[test]
fn a_zero_queue_is_refused_or_still_wakes() {
    let dir = TempDir::new("h-queue0");
    let (_assigner, addr) = assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB"]);
    let toml = format!("assigner = \"{addr}\"\n{}", started_model("q0", "process", "", "queue_size = 0"));
    let config = dir.path("check.toml");
    std::fs::write(&config, &toml).unwrap();
    let check = Command::new(ROUTER).arg("--config").arg(&config).arg("--check").output().unwrap();
    if check.status.success() {
        let (_router, r) = router(Path::new(ROUTER), &dir, &toml);
        let resp = post(&r, "/v1/chat/completions", &chat("q0", "x")).unwrap();
        assert_eq!(resp.status, 200, "queue_size = 0 was accepted, and the model can never wake: {}", resp.text());
    }
}

/// FAULT (low): a request whose declared `content-length` is over `max_body` and that asks
/// `Expect: 100-continue` (curl does, for bodies over 1 KiB) is told `100 Continue`, to send a
/// body that will be refused, instead of 413 at once.
#[test]
fn a_declared_body_over_max_body_gets_413_before_it_is_sent() {
    let dir = TempDir::new("h-expect");
    let (_assigner, addr) = assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB"]);
    let toml = format!("assigner = \"{addr}\"\nmax_body = \"1KiB\"\n{}", started_model("m", "process", "", ""));
    let (_router, r) = router(Path::new(ROUTER), &dir, &toml);
    let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\nexpect: 100-continue\r\ncontent-length: 1025\r\n\r\n";
    let got = raw_exchange(&r, head.as_bytes(), Duration::from_secs(3));
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413"), "an over-limit upload was invited instead of refused: {text:?}");
}

/// FAULT (low): headers the client names in `Connection` are hop-by-hop (RFC 9110 7.6.1) but
/// are forwarded to the model's server; only the fixed list is dropped.
#[test]
fn headers_named_in_connection_are_not_forwarded() {
    let dir = TempDir::new("h-connhdr");
    let (_assigner, addr) = assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB"]);
    let url = fake_vllm("echo");
    let toml = format!("assigner = \"{addr}\"\n[models.echo]\nengine = \"vllm\"\nurl = \"{url}\"\nidle_ttl = \"1h\"\n");
    let (_router, r) = router(Path::new(ROUTER), &dir, &toml);
    let body = chat("echo", "x").to_string();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close, x-hop-secret\r\nx-hop-secret: for the router only\r\nproxy-authorization: Basic c2VjcmV0\r\nx-end-to-end: kept\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let got = String::from_utf8_lossy(&raw_exchange(&r, req.as_bytes(), Duration::from_secs(10))).into_owned();
    let forwarded = got.split_once("\r\n\r\n").map(|(_, b)| b.to_ascii_lowercase()).unwrap_or_default();
    assert!(forwarded.contains("x-end-to-end: kept"), "{got}");
    assert!(!forwarded.contains("proxy-authorization"), "{got}");
    assert!(!forwarded.contains("x-hop-secret"), "a header named in Connection was forwarded: {forwarded}");
}

// ---------------------------------------------------------------------------------------------
// Hostile cases the router handles well today: guards.
// ---------------------------------------------------------------------------------------------

/// Clients that hang up while queued or mid-stream leave nothing behind: the queue and the
/// in-flight count go back to 0, the model still sleeps at its TTL and its lease goes back.
#[test]
fn clients_that_hang_up_leave_no_trace() {
    let dir = TempDir::new("h-hangup");
    let (_assigner, addr) = assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB"]);
    let toml = format!(
        "assigner = \"{addr}\"\n{}",
        started_model(
            "slow",
            "process",
            ", \"--start-delay-ms\", \"1000\", \"--token-delay-ms\", \"100\"",
            "idle_ttl = \"500ms\"\nqueue_size = 4"
        )
    );
    let (_router, r) = router(Path::new(ROUTER), &dir, &toml);
    let body = json!({"model": "slow", "stream": true, "max_tokens": 30, "prompt": (0..30).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ")}).to_string();
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    // Three clients queue for the sleeping model and hang up.
    let quitters: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(&r).unwrap();
            s.write_all(req.as_bytes()).unwrap();
            s
        })
        .collect();
    wait_for("three queued", Duration::from_secs(5), || model_state(&r, "slow")["queued"] == 3);
    drop(quitters);
    wait_for("the queue to empty", Duration::from_secs(5), || model_state(&r, "slow")["queued"] == 0);
    // A client that hangs up mid-stream, once the model is awake.
    wait_for("slow to wake anyway", Duration::from_secs(10), || model_state(&r, "slow")["state"] == "awake");
    let mut s = TcpStream::connect(&r).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut first = [0u8; 64];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(s.read(&mut first).unwrap() > 0);
    assert_eq!(model_state(&r, "slow")["in_flight"], 1);
    drop(s);
    wait_for("in_flight back to 0", Duration::from_secs(5), || model_state(&r, "slow")["in_flight"] == 0);
    wait_for("slow to sleep at its TTL", Duration::from_secs(5), || model_state(&r, "slow")["state"] == "asleep");
    wait_for("the lease to go back", Duration::from_secs(5), || leases_held(&addr) == 0);
    let metrics = get(&r, "/metrics").unwrap().text();
    assert!(metrics.contains("acb_router_queued{model=\"slow\"} 0"), "{metrics}");
    assert!(metrics.contains("acb_router_in_flight{model=\"slow\"} 0"), "{metrics}");
}

/// A hundred clients at once on a sleeping model with a queue of 5: each gets an answer (200
/// or 503 with Retry-After), none hangs, and the counts go back to 0.
#[test]
fn a_flood_on_a_sleeping_model_with_a_small_queue() {
    let dir = TempDir::new("h-flood");
    let (_assigner, addr) = assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB"]);
    let toml = format!(
        "assigner = \"{addr}\"\n{}",
        started_model("popular", "process", ", \"--start-delay-ms\", \"800\"", "queue_size = 5")
    );
    let (_router, r) = router(Path::new(ROUTER), &dir, &toml);
    let clients: Vec<_> = (0..100)
        .map(|i| {
            let r = r.clone();
            std::thread::spawn(move || {
                http(
                    &r,
                    "POST",
                    "/v1/chat/completions",
                    Some(chat("popular", &format!("n{i}")).to_string().as_bytes()),
                    Duration::from_secs(15),
                )
            })
        })
        .collect();
    let (mut ok, mut busy) = (0, 0);
    for c in clients {
        let resp = c.join().unwrap().unwrap();
        match resp.status {
            200 => ok += 1,
            503 => {
                assert!(resp.header("retry-after").is_some(), "{:?}", resp.headers);
                busy += 1;
            }
            s => panic!("status {s}: {}", resp.text()),
        }
    }
    assert_eq!(ok + busy, 100);
    assert!(ok >= 5, "the 5 queued requests were served: {ok} were");
    let m = model_state(&r, "popular");
    assert_eq!((m["queued"].clone(), m["in_flight"].clone()), (json!(0), json!(0)), "{m}");
}

/// Hostile bodies: exactly `max_body` (128 KiB) passes, one byte more is 413 (chunked too); odd `model`
/// values (100 KB, NUL, non-ASCII, an array, an object, null) are 400/404 and wake nothing; a
/// Content-Length + Transfer-Encoding request does not smuggle a second request through.
#[test]
fn hostile_bodies_and_framing() {
    let dir = TempDir::new("h-bodies");
    let (_assigner, addr) = assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB"]);
    let toml = format!(
        "assigner = \"{addr}\"\nmax_body = \"128KiB\"\n{}",
        started_model("m", "vllm", "", "idle_ttl = \"1h\"")
    );
    let (_router, r) = router(Path::new(ROUTER), &dir, &toml);
    for (value, status) in [
        (json!("x".repeat(100_000)), 404),
        (json!("m\u{0}"), 404),
        (json!("ｍ"), 404),
        (json!(["m"]), 400),
        (json!({"name": "m"}), 400),
        (Value::Null, 400),
    ] {
        let body = json!({"model": value}).to_string();
        let resp = http(&r, "POST", "/v1/chat/completions", Some(body.as_bytes()), Duration::from_secs(10)).unwrap();
        assert_eq!(resp.status, status, "{}", resp.text());
        assert!(resp.text().len() < 2000, "the error echoes the whole name: {} bytes", resp.text().len());
    }
    assert_eq!(model_state(&r, "m")["state"], "asleep", "a bad request woke the model");
    let base = chat("m", "x").to_string();
    let exact = format!("{base}{}", " ".repeat((128 << 10) - base.len()));
    let resp = http(&r, "POST", "/v1/chat/completions", Some(exact.as_bytes()), Duration::from_secs(20)).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let over = format!("{exact} ");
    let resp = http(&r, "POST", "/v1/chat/completions", Some(over.as_bytes()), Duration::from_secs(10)).unwrap();
    assert_eq!(resp.status, 413);
    let chunked: String =
        over.as_bytes().chunks(4096).map(|c| format!("{:x}\r\n{}\r\n", c.len(), String::from_utf8_lossy(c))).collect();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n{chunked}0\r\n\r\n"
    );
    let got = raw_exchange(&r, req.as_bytes(), Duration::from_secs(10));
    assert!(got.starts_with(b"HTTP/1.1 413"), "{}", String::from_utf8_lossy(&got));
    // Smuggling: CL says 5, TE says chunked, and a second request hides after the chunks.
    let url = model_state(&r, "m")["url"].as_str().unwrap().to_string();
    let before = get(&url, "/stats").unwrap().json()["requests"].as_u64().unwrap();
    let small = chat("m", "once").to_string();
    let smuggled = chat("m", "smuggled").to_string();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{small}\r\n0\r\n\r\nPOST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{smuggled}",
        small.len(),
        smuggled.len()
    );
    let got = raw_exchange(&r, req.as_bytes(), Duration::from_secs(3));
    let text = String::from_utf8_lossy(&got);
    assert!(!text.contains("smuggled"), "a smuggled request was answered: {text}");
    let after = get(&url, "/stats").unwrap().json()["requests"].as_u64().unwrap();
    assert!(after - before <= 1, "the server got {} requests from one", after - before);
}

/// Broken servers: garbage for an answer is 502, a stream cut midway ends the client's
/// response with an error, a server that never answers holds its request only while the client
/// waits; after each, nothing is in flight.
#[test]
fn broken_servers_get_502_and_free_their_requests() {
    let dir = TempDir::new("h-broken");
    let (_assigner, addr) =
        assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB", "--scheduler", "gpu-sharing"]);
    let mut toml = format!("assigner = \"{addr}\"\n[defaults]\nidle_ttl = \"1h\"\n");
    for mode in ["garbage", "midstream", "hang"] {
        toml.push_str(&format!(
            "[models.{mode}]\nengine = \"vllm\"\nurl = \"{}\"\nmemory = \"1GiB\"\n",
            fake_vllm(mode)
        ));
    }
    let (_router, r) = router(Path::new(ROUTER), &dir, &toml);
    let resp = post(&r, "/v1/chat/completions", &chat("garbage", "x")).unwrap();
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_eq!(resp.json()["error"]["code"], "backend_unavailable");
    // The cut stream: the client sees a response that never ends properly.
    let body = chat("midstream", "x").to_string();
    let req = format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}", body.len());
    let got = String::from_utf8_lossy(&raw_exchange(&r, req.as_bytes(), Duration::from_secs(5))).into_owned();
    assert!(got.contains("data: 1") && !got.ends_with("0\r\n\r\n"), "a cut stream looked complete: {got:?}");
    // The hanging server: the client gives up after 1 s.
    let mut s = TcpStream::connect(&r).unwrap();
    let body = chat("hang", "x").to_string();
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}", body.len()).unwrap();
    wait_for("the hung request to be in flight", Duration::from_secs(5), || model_state(&r, "hang")["in_flight"] == 1);
    drop(s);
    for m in ["garbage", "midstream", "hang"] {
        wait_for(&format!("{m}: nothing in flight"), Duration::from_secs(5), || model_state(&r, m)["in_flight"] == 0);
    }
}

/// Wakes that cannot succeed (a health path that 404s forever, a command that does not exist,
/// a command that exits at once) fail with 502 within the wake timeout, and give the lease back.
#[test]
fn hopeless_wakes_are_bounded_and_give_the_lease_back() {
    let dir = TempDir::new("h-hopeless");
    let (_assigner, addr) = assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB"]);
    let toml = format!(
        "assigner = \"{addr}\"\n{}[models.missing]\nengine = \"process\"\nport = {}\ncommand = [\"/nonexistent/acb-router-test/server\", \"{{port}}\"]\n[models.quitter]\nengine = \"vllm\"\nport = {}\ncommand = [\"/bin/false\", \"{{port}}\"]\n",
        started_model("unhealthy", "process", "", "health = \"/never\"\nwake_timeout = \"1s\""),
        free_port(),
        free_port()
    );
    let (_router, r) = router(Path::new(ROUTER), &dir, &toml);
    for (name, says) in [("unhealthy", "not healthy"), ("missing", "cannot start"), ("quitter", "exited")] {
        let started = Instant::now();
        let resp = post(&r, "/v1/chat/completions", &chat(name, "x")).unwrap();
        assert_eq!(resp.status, 502, "{name}: {}", resp.text());
        assert!(resp.text().contains(says), "{name}: {}", resp.text());
        assert!(started.elapsed() < Duration::from_secs(4), "{name}: took {:?}", started.elapsed());
        assert_eq!(leases_held(&addr), 0, "{name} kept its lease: {:?}", leases(&addr));
    }
}

/// The assigner killed (SIGKILL) while a model is awake, then started again on its socket: the
/// model drains and sleeps, requests meanwhile get 502 (not a hang), and once the assigner is
/// back the next request wakes the model on a new session with one lease.
#[test]
fn the_assigner_killed_and_restarted() {
    let dir = TempDir::new("h-assigner");
    let (first, addr) = assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB"]);
    let toml = format!("assigner = \"{addr}\"\n{}", started_model("m", "vllm", "", "idle_ttl = \"1h\""));
    let (_router, r) = router(Path::new(ROUTER), &dir, &toml);
    assert_eq!(post(&r, "/v1/chat/completions", &chat("m", "before")).unwrap().status, 200);
    first.signal(libc::SIGKILL);
    drop(first);
    wait_for("m to sleep without its assigner", Duration::from_secs(10), || model_state(&r, "m")["state"] == "asleep");
    let resp = post(&r, "/v1/chat/completions", &chat("m", "no assigner")).unwrap();
    assert_eq!(resp.status, 502, "{}", resp.text());
    let _ = std::fs::remove_file(dir.path("assigner.sock"));
    let (_second, addr2) = assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB"]);
    assert_eq!(addr, addr2);
    let resp = post(&r, "/v1/chat/completions", &chat("m", "after")).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(leases(&addr), vec![("router:m".to_string(), 1)]);
    assert_eq!(events(Path::new(ASSIGNER), &addr).iter().filter(|e| e["event"] == "granted").count(), 1);
}

/// SIGTERM with requests queued for a model that is still starting: they get 503 at once, the
/// router exits 0 quickly, and the half-started server is stopped.
#[test]
fn sigterm_with_a_queue_waiting_for_a_slow_start() {
    let dir = TempDir::new("h-termqueue");
    let (_assigner, addr) = assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB"]);
    let pidfile = dir.path("server.pid");
    let port = free_port();
    let toml = format!(
        "assigner = \"{addr}\"\n[models.slow]\nengine = \"process\"\nport = {port}\ncommand = [\"sh\", \"-c\", \"echo $$ > {}; exec {MODEL} --name slow --listen 127.0.0.1:{{port}} --start-delay-ms 10000\"]\n",
        pidfile.display()
    );
    let (mut router_proc, r) = router(Path::new(ROUTER), &dir, &toml);
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let r = r.clone();
            std::thread::spawn(move || post(&r, "/v1/chat/completions", &chat("slow", "x")))
        })
        .collect();
    wait_for("three queued", Duration::from_secs(5), || model_state(&r, "slow")["queued"] == 3);
    wait_for("the server to start", Duration::from_secs(5), || pidfile.exists());
    std::thread::sleep(Duration::from_millis(100));
    let server: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let started = Instant::now();
    router_proc.signal(libc::SIGTERM);
    for w in waiting {
        let resp = w.join().unwrap().unwrap();
        assert_eq!(resp.status, 503, "{}", resp.text());
    }
    assert_eq!(router_proc.wait_exit(Duration::from_secs(15)).unwrap(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(5), "exit took {:?}", started.elapsed());
    let gone = !alive(server);
    if !gone {
        // SAFETY: kill(2) on the server this test had the router start.
        unsafe { libc::kill(server, libc::SIGKILL) };
    }
    assert!(gone, "the half-started server {server} outlived the router");
    wait_for("no lease", Duration::from_secs(5), || leases_held(&addr) == 0);
}

/// Slow clients (slowloris): a connection that never finishes its headers is closed after
/// `header_timeout`, and does not keep the router from serving others.
#[test]
fn a_client_that_never_finishes_its_headers_is_closed() {
    let dir = TempDir::new("h-slowloris");
    let (_assigner, addr) = assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB"]);
    let toml = format!("assigner = \"{addr}\"\nheader_timeout = \"1s\"\n{}", started_model("calm", "process", "", ""));
    let (_router, r) = router(Path::new(ROUTER), &dir, &toml);
    let mut slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(&r).unwrap();
            s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    assert_eq!(get(&r, "/health").unwrap().status, 200, "slow clients kept the router from serving");
    let started = Instant::now();
    for s in &mut slow {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf); // the router closes it (after a 408, or without a word)
    }
    assert!(started.elapsed() < Duration::from_secs(8), "slow connections were held {:?}", started.elapsed());
}
