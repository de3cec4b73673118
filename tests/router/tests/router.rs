//! acb-router with real processes: an assigner with one simulated GPU, the router, and the
//! project's test model servers (`acb-test-model`, a test double: no model, deterministic text,
//! vLLM's sleep endpoints). Each test model takes an exclusive lock on one file while awake,
//! standing for the GPU's memory: two models awake on the one GPU is a "violation" it counts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use acb_router_tests::{
    TempDir, assigner, chat, events, free_port, get, holders, http, model_state, post, router, running, test_model,
    wait_for,
};
use serde_json::{Value, json};

const ASSIGNER: &str = env!("CARGO_BIN_EXE_router-tests-assigner");
const ROUTER: &str = env!("CARGO_BIN_EXE_router-tests-router");
const MODEL: &str = env!("CARGO_BIN_EXE_acb-test-model");

/// What the test double answers to `prompt` (see test_model.rs): its name, then the words
/// reversed.
fn expected(name: &str, prompt: &str) -> String {
    let mut text = format!("{name} heard:");
    for w in prompt.split_whitespace().rev().take(16) {
        text.push(' ');
        text.push_str(w);
    }
    text
}

fn answer(v: &Value) -> String {
    v["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string()
}

/// A model table for a test model the router starts (engine `vllm` or `process`).
fn started_model(name: &str, engine: &str, lock: &Path, extra: &str, table: &str) -> String {
    let port = free_port();
    format!(
        "[models.{name}]\nengine = \"{engine}\"\nport = {port}\ncommand = [\"{MODEL}\", \"--name\", \"{name}\", \"--listen\", \"127.0.0.1:{{port}}\", \"--gpu-lock\", \"{}\"{extra}]\n{table}\n",
        lock.display()
    )
}

fn stats(url: &str) -> Value {
    get(url, "/stats").unwrap_or_else(|e| panic!("stats: {e}")).json()
}

fn metric(router: &str, line_start: &str) -> f64 {
    let text = get(router, "/metrics").unwrap_or_else(|e| panic!("/metrics: {e}")).text();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn three_models_share_one_gpu_one_holder_at_a_time() {
    let dir = TempDir::new("three");
    let lock = dir.path("gpu.lock");
    let (_assigner, addr) = assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB"]);
    let toml = format!(
        "assigner = \"{addr}\"\n{}{}{}",
        started_model("alpha", "vllm", &lock, "", "aliases = [\"a\"]"),
        started_model("beta", "vllm", &lock, "", ""),
        started_model("gamma", "process", &lock, "", "")
    );
    let (_router, r) = router(Path::new(ROUTER), &dir, &toml);
    let names = ["alpha", "beta", "gamma"];
    for round in 0..3 {
        for name in names {
            let prompt = format!("round {round} for {name}");
            let resp = post(&r, "/v1/chat/completions", &chat(name, &prompt)).unwrap();
            assert_eq!(resp.status, 200, "{name}: {}", resp.text());
            assert_eq!(answer(&resp.json()), expected(name, &prompt));
        }
    }
    // An alias routes to its model.
    let resp = post(&r, "/v1/chat/completions", &chat("a", "by alias")).unwrap();
    assert_eq!(answer(&resp.json()), expected("alpha", "by alias"));

    // One holder at a time in the assigner's record; each model was granted the GPU each round.
    let (most, grants) = holders(&events(Path::new(ASSIGNER), &addr));
    assert_eq!(most, 1, "two leases were held at once: {grants:?}");
    for name in names {
        assert!(grants.get(&format!("router:{name}")).copied().unwrap_or(0) >= 3, "{name}: {grants:?}");
    }
    // Only the model awake now holds a lease; the sleeping ones hold none.
    let models = running(&r);
    let awake: Vec<&Value> = models.iter().filter(|m| m["state"] == "awake").collect();
    assert_eq!(awake.len(), 1, "{models:?}");
    assert_eq!(awake[0]["model"], "alpha");
    for m in &models {
        assert_eq!(m["lease"].is_null(), m["state"] != "awake", "{m}");
    }
    let status = std::process::Command::new(ASSIGNER).args(["status", "--json", "--assigner", &addr]).output().unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let leases: Vec<&Value> =
        status["clients"].as_array().unwrap().iter().filter(|c| c["leases"].as_u64() != Some(0)).collect();
    assert_eq!(leases.len(), 1, "{status}");
    assert_eq!(leases[0]["job"], "router:alpha", "models show as jobs: {status}");
    // The vLLM-engine servers were put to sleep and woken, never asked while asleep, and never
    // awake together (the lock).
    for m in &models {
        if m["engine"] != "vllm" {
            continue;
        }
        let url = m["url"].as_str().unwrap();
        let s = stats(url);
        assert_eq!(s["requests_while_sleeping"], 0, "{s}");
        assert_eq!(s["violations"], 0, "{s}");
        assert_eq!(s["slept_in_flight"], 0, "{s}");
        assert!(s["sleeps"].as_u64().unwrap() >= 2, "{s}");
    }
    assert!(metric(&r, "acb_router_cold_starts_total{model=\"gamma\"}") >= 3.0);
    assert_eq!(metric(&r, "acb_router_cold_starts_total{model=\"beta\"}"), 1.0, "vLLM sleeps, it does not restart");
}

#[test]
fn streams_pass_through_byte_exact() {
    let dir = TempDir::new("stream");
    let (_assigner, addr) = assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB"]);
    // A vLLM-style server already running (url only): the router puts it to sleep at start.
    let (_server, url) = test_model(Path::new(MODEL), "streamer", &["--token-delay-ms", "5"]);
    let toml =
        format!("assigner = \"{addr}\"\n[models.streamer]\nengine = \"vllm\"\nurl = \"{url}\"\nidle_ttl = \"1h\"\n");
    let (_router, r) = router(Path::new(ROUTER), &dir, &toml);
    wait_for("the running server to be put to sleep", Duration::from_secs(10), || stats(&url)["sleeping"] == true);
    let prompt = "one two three four five six seven eight nine ten";
    for body in [
        json!({"model": "streamer", "stream": true, "messages": [{"role": "user", "content": prompt}]}),
        json!({"model": "streamer", "stream": true, "prompt": prompt, "max_tokens": 5}),
    ] {
        let path = if body.get("messages").is_some() { "/v1/chat/completions" } else { "/v1/completions" };
        let routed = post(&r, path, &body).unwrap();
        assert_eq!(routed.status, 200, "{}", routed.text());
        assert_eq!(routed.header("content-type"), Some("text/event-stream"));
        // The router holds the model awake now: ask the server directly, the same bytes.
        let direct = post(&url, path, &body).unwrap();
        assert_eq!(direct.status, 200);
        assert_eq!(routed.body, direct.body, "the stream changed on its way through the router");
        assert!(routed.text().ends_with("data: [DONE]\n\n"), "{}", routed.text());
        assert!(routed.text().matches("data: ").count() > 3);
    }
    let embed = post(&r, "/v1/embeddings", &json!({"model": "streamer", "input": ["a", "b"]})).unwrap();
    assert_eq!(
        embed.body,
        post(&url, "/v1/embeddings", &json!({"model": "streamer", "input": ["a", "b"]})).unwrap().body
    );
    assert!(metric(&r, "acb_router_time_to_first_byte_seconds_count{model=\"streamer\"}") >= 3.0);
}

#[test]
fn in_flight_requests_survive_a_yield() {
    let dir = TempDir::new("yield");
    let lock = dir.path("gpu.lock");
    // A time slice, so that a busy model is asked to yield while its stream runs.
    let (_assigner, addr) = assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB", "--quantum", "100ms"]);
    let toml = format!(
        "assigner = \"{addr}\"\n[defaults]\nidle_ttl = \"1h\"\n{}{}",
        started_model("slow", "vllm", &lock, ", \"--token-delay-ms\", \"40\"", ""),
        started_model("other", "vllm", &lock, "", "")
    );
    let (_router, r) = router(Path::new(ROUTER), &dir, &toml);
    let prompt: String = (0..30).map(|i| format!("w{i} ")).collect();
    let body =
        json!({"model": "slow", "stream": true, "max_tokens": 30, "messages": [{"role": "user", "content": prompt}]});
    let r2 = r.clone();
    let stream = std::thread::spawn(move || post(&r2, "/v1/chat/completions", &body));
    wait_for("slow to be streaming", Duration::from_secs(20), || model_state(&r, "slow")["in_flight"] == 1);
    let started = Instant::now();
    let other = post(&r, "/v1/chat/completions", &chat("other", "me next")).unwrap();
    assert_eq!(other.status, 200, "{}", other.text());
    assert_eq!(answer(&other.json()), expected("other", "me next"));
    let streamed = stream.join().unwrap().unwrap();
    assert_eq!(streamed.status, 200);
    let text = streamed.text();
    assert!(text.ends_with("data: [DONE]\n\n"), "the stream was cut by the yield: {text}");
    assert_eq!(text.matches("\"finish_reason\":\"stop\"").count(), 1, "{text}");
    // The other model waited for the stream to finish (about 30 x 40 ms) rather than sharing.
    assert!(started.elapsed() >= Duration::from_millis(500), "other was served before slow drained");
    let slow = model_state(&r, "slow");
    let s = stats(slow["url"].as_str().unwrap());
    assert_eq!(s["slept_in_flight"], 0, "{s}");
    assert_eq!(s["violations"], 0, "{s}");
    assert!(metric(&r, "acb_router_yields_total{model=\"slow\"}") >= 1.0);
    let (most, _) = holders(&events(Path::new(ASSIGNER), &addr));
    assert_eq!(most, 1);
}

#[test]
fn idle_model_sleeps_and_gives_its_lease_back() {
    let dir = TempDir::new("idle");
    let lock = dir.path("gpu.lock");
    let (_assigner, addr) = assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB"]);
    let toml = format!("assigner = \"{addr}\"\n{}", started_model("napper", "vllm", &lock, "", "idle_ttl = \"300ms\""));
    let (_router, r) = router(Path::new(ROUTER), &dir, &toml);
    assert_eq!(post(&r, "/v1/chat/completions", &chat("napper", "hi")).unwrap().status, 200);
    wait_for("napper to sleep", Duration::from_secs(10), || model_state(&r, "napper")["state"] == "asleep");
    let m = model_state(&r, "napper");
    assert!(m["lease"].is_null(), "{m}");
    assert!(m["pid"].is_u64(), "a vLLM server stays running while it sleeps: {m}");
    let s = stats(m["url"].as_str().unwrap());
    assert_eq!((s["sleeping"].clone(), s["sleeps"].clone()), (json!(true), json!(1)), "{s}");
    let (_, grants) = holders(&events(Path::new(ASSIGNER), &addr));
    let evs = events(Path::new(ASSIGNER), &addr);
    assert_eq!(evs.iter().filter(|e| e["event"] == "released").count(), 1, "{grants:?}");
    // It wakes again on the next request.
    assert_eq!(post(&r, "/v1/chat/completions", &chat("napper", "again")).unwrap().status, 200);
    assert_eq!(metric(&r, "acb_router_sleeps_total{model=\"napper\"}"), 1.0);
    assert!(metric(&r, "acb_router_wake_seconds_count{model=\"napper\"}") >= 2.0);
}

#[test]
fn bad_requests_get_openai_errors() {
    let dir = TempDir::new("errors");
    let lock = dir.path("gpu.lock");
    let (_assigner, addr) = assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB"]);
    let toml = format!("assigner = \"{addr}\"\n{}", started_model("known", "process", &lock, "", "aliases = [\"k\"]"));
    let (_router, r) = router(Path::new(ROUTER), &dir, &toml);
    let unknown = post(&r, "/v1/chat/completions", &chat("nope", "x")).unwrap();
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["code"], "model_not_found", "{}", unknown.text());
    assert!(unknown.json()["error"]["message"].as_str().unwrap().contains("nope"));
    for (body, status) in [
        (&b"{not json"[..], 400),
        (&b"[1,2]"[..], 400),
        (&b"{\"messages\": []}"[..], 400),
        (&b"{\"model\": 7}"[..], 400),
        (&b""[..], 400),
    ] {
        let resp = http(&r, "POST", "/v1/chat/completions", Some(body), Duration::from_secs(10)).unwrap();
        assert_eq!(resp.status, status, "{}: {}", String::from_utf8_lossy(body), resp.text());
        assert_eq!(resp.json()["error"]["type"], "invalid_request_error");
    }
    let resp = get(&r, "/v1/nothing").unwrap();
    assert_eq!(resp.status, 404);
    assert!(resp.json()["error"]["message"].is_string());
    // No bad request woke the model.
    assert_eq!(model_state(&r, "known")["state"], "asleep");
    let models = get(&r, "/v1/models").unwrap().json();
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, ["known", "k"]);
    assert!(metric(&r, "acb_router_requests_total{model=\"_unknown\",code=\"400\"}") >= 5.0);
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let dir = TempDir::new("queue");
    let lock = dir.path("gpu.lock");
    let (_assigner, addr) = assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB"]);
    // The server takes 1.5 s to start: requests queue meanwhile; one place in the queue.
    let toml = format!(
        "assigner = \"{addr}\"\n{}",
        started_model("sluggish", "process", &lock, ", \"--start-delay-ms\", \"1500\"", "queue_size = 1")
    );
    let (_router, r) = router(Path::new(ROUTER), &dir, &toml);
    let r2 = r.clone();
    let first = std::thread::spawn(move || post(&r2, "/v1/chat/completions", &chat("sluggish", "first")));
    wait_for("the first request to queue", Duration::from_secs(10), || model_state(&r, "sluggish")["queued"] == 1);
    let second = post(&r, "/v1/chat/completions", &chat("sluggish", "second")).unwrap();
    assert_eq!(second.status, 503, "{}", second.text());
    assert!(second.header("retry-after").is_some_and(|v| v.parse::<u64>().is_ok()), "{:?}", second.headers);
    assert_eq!(first.join().unwrap().unwrap().status, 200);
}

#[test]
fn a_failed_wake_is_502_and_the_lease_goes_back() {
    let dir = TempDir::new("failwake");
    let (_assigner, addr) = assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB"]);
    let (_server, url) = test_model(Path::new(MODEL), "broken", &["--fail-wake", "--start-asleep"]);
    let toml = format!("assigner = \"{addr}\"\n[models.broken]\nengine = \"vllm\"\nurl = \"{url}\"\n");
    let (_router, r) = router(Path::new(ROUTER), &dir, &toml);
    let resp = post(&r, "/v1/chat/completions", &chat("broken", "x")).unwrap();
    assert_eq!(resp.status, 502, "{}", resp.text());
    let msg = resp.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("wake_up") && msg.contains("500"), "the reason is given: {msg}");
    let evs = events(Path::new(ASSIGNER), &addr);
    assert_eq!(evs.iter().filter(|e| e["event"] == "granted").count(), 1);
    assert_eq!(evs.iter().filter(|e| e["event"] == "released").count(), 1, "the lease was given back");
    assert_eq!(model_state(&r, "broken")["state"], "asleep");
    assert_eq!(stats(&url)["requests_while_sleeping"], 0);
}

#[test]
fn a_dead_server_is_restarted_then_marked_failed() {
    let dir = TempDir::new("dies");
    let lock = dir.path("gpu.lock");
    let (_assigner, addr) = assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB"]);
    // Each start of the server answers one request, then exits (code 3).
    let toml = format!(
        "assigner = \"{addr}\"\n{}",
        started_model("fragile", "process", &lock, ", \"--exit-after\", \"1\"", "max_restarts = 2\nidle_ttl = \"1h\"")
    );
    let (_router, r) = router(Path::new(ROUTER), &dir, &toml);
    for i in 0..3 {
        let resp = post(&r, "/v1/chat/completions", &chat("fragile", &format!("try {i}"))).unwrap();
        assert_eq!(resp.status, 200, "try {i}: {}", resp.text());
        wait_for("the death to be seen", Duration::from_secs(10), || model_state(&r, "fragile")["lease"].is_null());
    }
    // A third death in a row is more than max_restarts = 2: failed, 502 with the reason.
    wait_for("fragile to be failed", Duration::from_secs(10), || model_state(&r, "fragile")["state"] == "failed");
    let resp = post(&r, "/v1/chat/completions", &chat("fragile", "once more")).unwrap();
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert!(resp.text().contains("max_restarts"), "{}", resp.text());
    assert_eq!(metric(&r, "acb_router_restarts_total{model=\"fragile\"}"), 3.0);
    let evs = events(Path::new(ASSIGNER), &addr);
    assert_eq!(
        evs.iter().filter(|e| e["event"] == "granted").count(),
        evs.iter().filter(|e| e["event"] == "released").count(),
        "every lease of a dead server was freed"
    );
}

#[test]
fn shutdown_drains_in_flight_requests_and_stops_servers() {
    let dir = TempDir::new("drain");
    let lock = dir.path("gpu.lock");
    let (_assigner, addr) = assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB"]);
    let toml = format!(
        "assigner = \"{addr}\"\n{}",
        started_model("drained", "vllm", &lock, ", \"--token-delay-ms\", \"30\"", "idle_ttl = \"1h\"")
    );
    let (mut router_proc, r) = router(Path::new(ROUTER), &dir, &toml);
    let body = json!({"model": "drained", "stream": true, "max_tokens": 20, "prompt": (0..20).map(|i| format!("t{i}")).collect::<Vec<_>>().join(" ")});
    let r2 = r.clone();
    let stream = std::thread::spawn(move || post(&r2, "/v1/completions", &body));
    wait_for("the stream to start", Duration::from_secs(20), || model_state(&r, "drained")["in_flight"] == 1);
    let pid = model_state(&r, "drained")["pid"].as_i64().unwrap() as i32;
    router_proc.signal(libc::SIGTERM);
    let streamed = stream.join().unwrap().unwrap();
    assert!(streamed.text().ends_with("data: [DONE]\n\n"), "shutdown cut the stream: {}", streamed.text());
    assert_eq!(router_proc.wait_exit(Duration::from_secs(30)).unwrap(), Some(0));
    // SAFETY: kill(2) with signal 0 only asks whether the pid exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    assert!(!alive, "the router left its server {pid} running");
    let evs = events(Path::new(ASSIGNER), &addr);
    assert_eq!(evs.iter().filter(|e| e["event"] == "released").count(), 1, "the lease went back");
}

#[test]
fn auto_engine_runs_the_server_under_agarun_and_takes_no_lease() {
    let dir = TempDir::new("auto");
    let (_assigner, addr) = assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB"]);
    // TEST DOUBLE for agarun: records its arguments, then runs the command after `--`.
    let agarun = dir.path("agarun");
    let record = dir.path("agarun.args");
    std::fs::write(
        &agarun,
        format!(
            "#!/bin/sh\necho \"$@\" > '{}'\nwhile [ \"$1\" != -- ]; do shift; done\nshift\nexec \"$@\"\n",
            record.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&agarun, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let port = free_port();
    let toml = format!(
        "assigner = \"{addr}\"\n[defaults]\nagarun = \"{}\"\n[models.torchy]\nengine = \"auto\"\nport = {port}\ncommand = [\"{MODEL}\", \"--name\", \"torchy\", \"--listen\", \"127.0.0.1:{{port}}\"]\n",
        agarun.display()
    );
    let (_router, r) = router(Path::new(ROUTER), &dir, &toml);
    let resp = post(&r, "/v1/chat/completions", &chat("torchy", "auto mode")).unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let args = std::fs::read_to_string(&record).unwrap();
    assert!(args.starts_with("--mode auto --job router:torchy -- "), "{args}");
    assert!(events(Path::new(ASSIGNER), &addr).iter().all(|e| e["event"] != "granted"), "the router took a lease");
    let m = model_state(&r, "torchy");
    assert_eq!(m["state"], "awake");
}

#[test]
fn small_models_pack_on_one_gpu_under_gpu_sharing() {
    let dir = TempDir::new("sharing");
    let (_assigner, addr) =
        assigner(Path::new(ASSIGNER), &dir, &["--gpus", "fake:1x80GiB", "--scheduler", "gpu-sharing"]);
    // Two 30 GiB models fit one 80 GiB GPU together: no lock file, both stay awake.
    let model = |name: &str| {
        let port = free_port();
        format!(
            "[models.{name}]\nengine = \"vllm\"\nport = {port}\nmemory = \"30GiB\"\nidle_ttl = \"1h\"\ncommand = [\"{MODEL}\", \"--name\", \"{name}\", \"--listen\", \"127.0.0.1:{{port}}\"]\n"
        )
    };
    let toml = format!("assigner = \"{addr}\"\n{}{}", model("left"), model("right"));
    let (_router, r) = router(Path::new(ROUTER), &dir, &toml);
    for i in 0..3 {
        for name in ["left", "right"] {
            let resp = post(&r, "/v1/chat/completions", &chat(name, &format!("n{i}"))).unwrap();
            assert_eq!(resp.status, 200, "{}", resp.text());
        }
    }
    let models = running(&r);
    for m in &models {
        assert_eq!(m["state"], "awake", "{m}");
        assert_eq!(m["memory_per_gpu"], 30u64 << 30, "each model's memory is what its lease grants: {m}");
    }
    let (most, grants) = holders(&events(Path::new(ASSIGNER), &addr));
    assert_eq!(most, 2, "the two models shared the GPU");
    assert_eq!(grants.values().sum::<usize>(), 2, "no model slept and woke again: {grants:?}");
    assert_eq!(metric(&r, "acb_router_sleeps_total{model=\"left\"}"), 0.0);
}
