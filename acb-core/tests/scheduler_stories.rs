//! The scheduler's behaviour, as stories over a virtual clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::time::Duration;

use acb_core::{
    Affinity, ClientId, Error, ErrorKind, GpuId, GpuPool, Health, Instant, LeaseId, Output, Policy, Request, RequestId,
    Scheduler, SchedulerConfig, YieldReason,
};
use harness::{GIB, Harness};

// ----- simple -----

#[test]
fn two_jobs_one_gpu_the_idle_holder_yields_to_the_waiter() {
    let mut h = Harness::new(Policy::Simple, &[80]);
    let a = h.client();
    let b = h.client();
    h.ask(a, 1);
    let ga = h.granted(a);
    assert_eq!(ga.gpus, vec![GpuId(0)]);
    assert_eq!(ga.memory_per_gpu, 80 * GIB, "simple grants the whole GPU");

    h.step(Duration::from_secs(1));
    h.ask(b, 1);
    h.nothing(); // A is busy and there is no quantum: B waits

    h.step(Duration::from_secs(4));
    h.idle(a, ga.lease); // A's GPU phase ends; lazy release keeps the GPU, but B waits
    h.yield_asked(a, ga.lease, YieldReason::Contended);

    h.step(Duration::from_millis(300)); // A swaps out
    h.release(a, ga.lease);
    let gb = h.granted(b);
    assert_eq!(gb.gpus, vec![GpuId(0)]);
    assert_eq!(gb.waited, Duration::from_millis(4300));
}

#[test]
fn an_idle_holder_keeps_its_gpu_while_nobody_waits() {
    let mut h = Harness::new(Policy::Simple, &[80]);
    let a = h.client();
    h.ask(a, 1);
    let ga = h.granted(a);
    h.idle(a, ga.lease);
    h.step(Duration::from_secs(3600));
    h.nothing();
    // A starts another phase on the GPU it kept; then B comes, and A is busy: no yield.
    h.busy(a, ga.lease);
    let b = h.client();
    h.ask(b, 1);
    h.nothing();
    assert_eq!(h.sched.queue_len(), 1);
}

#[test]
fn waiters_are_served_first_in_first_out() {
    let mut h = Harness::new(Policy::Simple, &[80]);
    let holder = h.client();
    h.ask(holder, 1);
    let g = h.granted(holder);
    let waiters: Vec<ClientId> = (0..3).map(|_| h.client()).collect();
    for &w in &waiters {
        h.ask(w, 1);
        h.step(Duration::from_millis(10));
    }
    h.nothing();
    let mut lease = g.lease;
    let mut owner = holder;
    for &w in &waiters {
        h.release(owner, lease);
        let gw = h.granted(w);
        lease = gw.lease;
        owner = w;
    }
}

#[test]
fn simple_strict_fifo_the_head_blocks_even_when_others_could_run() {
    // The head requires GPU 0; GPU 1 is free but simple does not backfill.
    let mut h = Harness::new(Policy::Simple, &[80, 80]);
    let a = h.client();
    h.submit(Request::new(a, "a", 1).with_affinity(Affinity::Required(vec![GpuId(0)])));
    let ga = h.granted(a);
    let head = h.client();
    h.submit(Request::new(head, "head", 1).with_affinity(Affinity::Required(vec![GpuId(0)])));
    let other = h.client();
    h.ask(other, 1);
    h.nothing();
    h.release(a, ga.lease);
    let out = h.outputs();
    let granted: Vec<ClientId> = out
        .iter()
        .filter_map(|o| match o {
            Output::Granted(g) => Some(g.client),
            _ => None,
        })
        .collect();
    assert_eq!(granted, vec![head, other], "head first, then the next in line");
}

#[test]
fn a_higher_priority_request_goes_first() {
    let mut h = Harness::new(Policy::Simple, &[80]);
    let a = h.client();
    h.ask(a, 1);
    let ga = h.granted(a);
    let low = h.client();
    let high = h.client();
    h.submit(Request::new(low, "low", 1).with_priority(0));
    h.submit(Request::new(high, "high", 1).with_priority(5));
    h.nothing();
    h.release(a, ga.lease);
    assert_eq!(h.granted(high).client, high);
}

#[test]
fn a_busy_holder_is_asked_to_yield_when_its_quantum_is_up() {
    let config = SchedulerConfig::new(Policy::Simple).with_quantum(Duration::from_secs(10));
    let mut h = Harness::with_config(config, &[&[80]]);
    let a = h.client();
    h.ask(a, 1);
    let ga = h.granted(a);
    assert_eq!(h.sched.poll_timeout(), None, "nobody waits: no timer");

    h.step(Duration::from_secs(4));
    let b = h.client();
    h.ask(b, 1);
    h.nothing();
    assert_eq!(h.sched.poll_timeout(), Some(Instant::ZERO + Duration::from_secs(10)));

    // Calling the timer early does nothing.
    h.sched.handle_timeout(Instant::ZERO + Duration::from_secs(5));
    h.nothing();

    h.step(Duration::from_secs(6));
    h.yield_asked(a, ga.lease, YieldReason::QuantumExpired);
    // Calling it again, late, does not ask twice.
    h.sched.handle_timeout(Instant::ZERO + Duration::from_secs(20));
    h.nothing();
    assert_eq!(h.sched.poll_timeout(), None);

    h.release(a, ga.lease);
    assert_eq!(h.granted(b).gpus, vec![GpuId(0)]);
}

#[test]
fn the_head_reserves_the_idle_holder_rather_than_the_busy_one() {
    let mut h = Harness::new(Policy::Simple, &[80, 80]);
    let a = h.client();
    let b = h.client();
    h.ask(a, 1);
    let ga = h.granted(a);
    h.ask(b, 1);
    let gb = h.granted(b);
    h.idle(b, gb.lease);
    h.nothing();
    let c = h.client();
    h.ask(c, 1);
    h.yield_asked(b, gb.lease, YieldReason::Contended);
    // More events while B swaps out do not ask A (busy) or anyone else.
    h.idle(a, ga.lease);
    h.nothing();
    h.release(b, gb.lease);
    assert_eq!(h.granted(c).gpus, gb.gpus);
}

// ----- gpu-affinity -----

#[test]
fn a_gang_is_granted_whole_or_not_at_all() {
    let mut h = Harness::new(Policy::GpuAffinity, &[80, 80, 80]);
    let a = h.client();
    h.ask(a, 1);
    let ga = h.granted(a);
    let gang = h.client();
    h.ask(gang, 3);
    h.nothing(); // two GPUs are free, but the gang needs three
    h.release(a, ga.lease);
    let g = h.granted(gang);
    let mut gpus = g.gpus.clone();
    gpus.sort();
    assert_eq!(gpus, vec![GpuId(0), GpuId(1), GpuId(2)]);
}

#[test]
fn backfill_runs_a_small_job_on_a_gpu_the_head_cannot_use() {
    // Two 80 GiB GPUs and one 40 GiB GPU. The head wants two 80 GiB GPUs, one is busy.
    let mut h = Harness::new(Policy::GpuAffinity, &[80, 80, 40]);
    let a = h.client();
    h.submit(Request::new(a, "a", 1).with_memory(70 * GIB));
    let ga = h.granted(a);
    let head = h.client();
    h.submit(Request::new(head, "head", 2).with_memory(70 * GIB));
    h.nothing();
    let (reserved_for, reserved) = h.sched.reservation().unwrap();
    assert_eq!(h.sched.queued_request(reserved_for).unwrap().request.client, head);
    assert!(!reserved.contains(&GpuId(2)), "the 40 GiB GPU cannot serve the head");

    // A small job behind the head runs at once, on the GPU the head cannot use.
    let small = h.client();
    h.submit(Request::new(small, "small", 1).with_memory(20 * GIB));
    assert_eq!(h.granted(small).gpus, vec![GpuId(2)]);

    // Another small one may not take the free 80 GiB GPU: it is the head's.
    let small2 = h.client();
    h.submit(Request::new(small2, "small2", 1).with_memory(20 * GIB));
    h.nothing();

    h.release(a, ga.lease);
    let g = h.granted(head);
    assert_eq!(g.gpus.len(), 2);
}

#[test]
fn backfill_never_delays_the_head_of_the_queue() {
    // Four GPUs; three are busy. The head wants all four. However many one-GPU requests come
    // and go behind it, the free GPU stays reserved, and the head runs as soon as the three
    // holders let go.
    let mut h = Harness::new(Policy::GpuAffinity, &[80, 80, 80, 80]);
    let holders: Vec<(ClientId, LeaseId)> = (0..3)
        .map(|_| {
            let c = h.client();
            h.ask(c, 1);
            (c, h.granted(c).lease)
        })
        .collect();
    let head = h.client();
    h.ask(head, 4);
    for _ in 0..20 {
        let s = h.client();
        h.ask(s, 1);
        h.nothing();
        h.step(Duration::from_millis(5));
    }
    for (i, (c, l)) in holders.iter().enumerate() {
        h.release(*c, *l);
        if i < 2 {
            h.nothing();
        }
    }
    let out = h.outputs();
    assert!(
        matches!(out.first(), Some(Output::Granted(g)) if g.client == head && g.gpus.len() == 4),
        "head first, got {out:?}"
    );
}

#[test]
fn a_job_gets_the_gpu_it_used_last_when_it_is_free() {
    let mut h = Harness::new(Policy::GpuAffinity, &[80, 80, 80]);
    let a = h.client();
    let b = h.client();
    h.ask(b, 1);
    let gb = h.granted(b); // b takes one GPU
    h.ask(a, 1);
    let first = h.granted(a);
    h.release(a, first.lease);
    h.release(b, gb.lease);
    // All free now; a comes back and lands where its memory was.
    h.ask(a, 1);
    assert_eq!(h.granted(a).gpus, first.gpus);
}

#[test]
fn a_gang_prefers_one_node_but_spans_nodes_when_it_must() {
    let config = SchedulerConfig::new(Policy::GpuAffinity);
    let mut h = Harness::with_config(config, &[&[80, 80], &[80, 80]]);
    let a = h.client();
    h.ask(a, 1);
    let ga = h.granted(a); // one GPU of some node
    let busy_node = h.gpu(ga.gpus[0].0).node;
    let gang = h.client();
    h.ask(gang, 2);
    let g = h.granted(gang);
    for gpu in &g.gpus {
        assert_ne!(h.gpu(gpu.0).node, busy_node, "a two-GPU gang fits on the other node");
    }
    let wide = h.client();
    h.ask(wide, 1);
    let _ = h.granted(wide);
    h.release(gang, g.lease);
    // Now one GPU is free on each... of whatever is left: a gang of two must span nodes.
    let free: Vec<u32> = (0..4).filter(|i| h.sched.gpu_state(GpuId(*i)).unwrap().holders.is_empty()).collect();
    assert_eq!(free.len(), 2);
    let span = h.client();
    h.ask(span, 2);
    let gs = h.granted(span);
    assert_eq!(gs.gpus.len(), 2);
}

#[test]
fn required_affinity_is_honoured() {
    let mut h = Harness::new(Policy::GpuAffinity, &[80, 80, 80]);
    let a = h.client();
    h.submit(Request::new(a, "a", 2).with_affinity(Affinity::Required(vec![GpuId(2), GpuId(0)])));
    let mut gpus = h.granted(a).gpus;
    gpus.sort();
    assert_eq!(gpus, vec![GpuId(0), GpuId(2)]);
}

#[test]
fn preferred_affinity_is_used_when_free() {
    let mut h = Harness::new(Policy::GpuAffinity, &[80, 80, 80]);
    let a = h.client();
    h.submit(Request::new(a, "a", 1).with_affinity(Affinity::Preferred(vec![GpuId(1)])));
    assert_eq!(h.granted(a).gpus, vec![GpuId(1)]);
}

// ----- gpu-sharing -----

#[test]
fn sharing_packs_jobs_on_one_gpu_by_memory() {
    let mut h = Harness::new(Policy::GpuSharing, &[80]);
    let jobs: Vec<ClientId> = (0..3).map(|_| h.client()).collect();
    let mut leases = Vec::new();
    for &j in &jobs[..2] {
        h.submit(Request::new(j, "j", 1).with_memory(30 * GIB));
        let g = h.granted(j);
        assert_eq!(g.memory_per_gpu, 30 * GIB, "the fence is what was asked");
        leases.push(g.lease);
    }
    assert_eq!(h.sched.gpu_state(GpuId(0)).unwrap().granted, 60 * GIB);
    h.submit(Request::new(jobs[2], "j", 1).with_memory(30 * GIB));
    h.nothing(); // 20 GiB left
    h.release(jobs[0], leases[0]);
    assert_eq!(h.granted(jobs[2]).gpus, vec![GpuId(0)]);
}

#[test]
fn sharing_fills_the_fullest_gpu_that_fits() {
    let mut h = Harness::new(Policy::GpuSharing, &[80, 80]);
    let a = h.client();
    h.submit(Request::new(a, "a", 1).with_memory(50 * GIB));
    let on = h.granted(a).gpus[0];
    let b = h.client();
    h.submit(Request::new(b, "b", 1).with_memory(20 * GIB));
    assert_eq!(h.granted(b).gpus, vec![on], "best fit keeps the other GPU whole");
}

#[test]
fn sharing_backfill_does_not_eat_the_heads_memory() {
    // GPU0: A holds 50 of 80. The head needs 60 on one GPU: it reserves GPU0 (GPU1 is held
    // whole). A small job fits in GPU0's 30 free GiB but must not take them.
    let mut h = Harness::new(Policy::GpuSharing, &[80, 80]);
    let a = h.client();
    h.submit(Request::new(a, "a", 1).with_memory(50 * GIB).with_affinity(Affinity::Required(vec![GpuId(0)])));
    let ga = h.granted(a);
    let whole = h.client();
    h.submit(Request::new(whole, "w", 1).with_affinity(Affinity::Required(vec![GpuId(1)])));
    let gw = h.granted(whole);
    let head = h.client();
    h.submit(Request::new(head, "head", 1).with_memory(60 * GIB));
    h.nothing();
    let small = h.client();
    h.submit(Request::new(small, "small", 1).with_memory(10 * GIB));
    h.nothing();
    h.release(a, ga.lease);
    let out = h.outputs();
    assert!(matches!(&out[0], Output::Granted(g) if g.client == head), "got {out:?}");
    let _ = gw;
}

#[test]
fn sharing_without_memory_means_a_whole_gpu() {
    let mut h = Harness::new(Policy::GpuSharing, &[80]);
    let a = h.client();
    h.submit(Request::new(a, "a", 1).with_memory(GIB));
    let _ = h.granted(a);
    let b = h.client();
    h.ask(b, 1);
    h.nothing();
}

// ----- sessions and health -----

#[test]
fn a_client_that_disconnects_holds_nothing_and_waits_for_nothing() {
    let mut h = Harness::new(Policy::Simple, &[80]);
    let a = h.client();
    h.ask(a, 1);
    let ga = h.granted(a);
    let b = h.client();
    h.ask(b, 1);
    let c = h.client();
    h.ask(c, 1);
    let gone = h.sched.disconnect(b, h.now).unwrap();
    assert_eq!(gone.requests.len(), 1);
    let gone = h.sched.disconnect(a, h.now).unwrap();
    assert_eq!(gone.leases, vec![ga.lease]);
    assert_eq!(h.granted(c).client, c, "the next waiter is granted at once");
    assert!(!h.sched.is_connected(a));
    assert_eq!(h.sched.leases_of(a).count(), 0);
    assert_eq!(h.sched.disconnect(a, h.now), Err(Error::UnknownClient(a)));
}

#[test]
fn losing_a_gpu_revokes_its_leases_and_rejects_what_can_no_longer_run() {
    let mut h = Harness::new(Policy::GpuAffinity, &[80, 80]);
    let a = h.client();
    h.ask(a, 1);
    let ga = h.granted(a);
    let b = h.client();
    h.ask(b, 1);
    let _gb = h.granted(b);
    let gang = h.client();
    let r = h.ask(gang, 2);
    h.nothing();
    h.sched.set_health(ga.gpus[0], Health::Lost, h.now).unwrap();
    let out = h.outputs();
    assert!(out.contains(&Output::Revoked { client: a, lease: ga.lease, gpu: ga.gpus[0] }), "{out:?}");
    assert!(
        out.iter().any(|o| matches!(o, Output::Rejected { client, request, error: Error::TooManyGpus { .. } }
            if *client == gang && *request == r)),
        "{out:?}"
    );
    h.check();
    // A one-GPU request waits for the healthy GPU; the lost one is never granted.
    h.ask(a, 1);
    h.nothing();
    h.sched.set_health(ga.gpus[0], Health::Healthy, h.now).unwrap();
    assert_eq!(h.granted(a).gpus, ga.gpus);
}

// ----- bad input -----

#[test]
fn bad_requests_get_typed_errors_not_panics() {
    let mut h = Harness::new(Policy::GpuAffinity, &[80, 40]);
    let c = h.client();
    let t = h.now;
    let s = &mut h.sched;
    assert_eq!(s.submit(Request::new(c, "x", 0), t), Err(Error::ZeroGpus));
    assert_eq!(s.submit(Request::new(c, "x", 3), t), Err(Error::TooManyGpus { requested: 3, available: 2 }));
    assert_eq!(
        s.submit(Request::new(c, "x", 1).with_memory(81 * GIB), t),
        Err(Error::MemoryTooLarge { requested: 81 * GIB, largest: 80 * GIB })
    );
    assert_eq!(
        s.submit(Request::new(c, "x", 2).with_memory(50 * GIB), t),
        Err(Error::TooManyGpus { requested: 2, available: 1 })
    );
    assert_eq!(s.submit(Request::new(c, "x", 1).with_memory(0), t), Err(Error::ZeroMemory));
    assert_eq!(
        s.submit(Request::new(c, "x", 1).with_affinity(Affinity::Required(vec![GpuId(9)])), t),
        Err(Error::UnknownGpu(GpuId(9)))
    );
    assert_eq!(
        s.submit(Request::new(c, "x", 2).with_affinity(Affinity::Required(vec![GpuId(0), GpuId(0)])), t),
        Err(Error::TooManyGpus { requested: 2, available: 1 })
    );
    let stranger = ClientId(999);
    assert_eq!(s.submit(Request::new(stranger, "x", 1), t), Err(Error::UnknownClient(stranger)));
    assert_eq!(s.connect(c, t), Err(Error::ClientExists(c)));
    assert_eq!(s.set_health(GpuId(7), Health::Lost, t), Err(Error::UnknownGpu(GpuId(7))));
    assert_eq!(Error::ZeroGpus.kind(), ErrorKind::InvalidArgument);

    let mut simple = Harness::new(Policy::Simple, &[80, 80]);
    let c = simple.client();
    let err = simple.sched.submit(Request::new(c, "x", 2), simple.now).unwrap_err();
    assert_eq!(err, Error::PolicyLimit { policy: "simple", requested: 2, max: 1 });
    assert!(err.to_string().contains("gpu-affinity"), "the message says what to use instead: {err}");
}

#[test]
fn bad_releases_get_typed_errors() {
    let mut h = Harness::new(Policy::Simple, &[80]);
    let a = h.client();
    let b = h.client();
    h.ask(a, 1);
    let ga = h.granted(a);
    let t = h.now;
    assert_eq!(h.sched.release(a, LeaseId(77), t), Err(Error::UnknownLease(LeaseId(77))));
    assert_eq!(h.sched.release(b, ga.lease, t), Err(Error::NotOwner(ga.lease)));
    assert_eq!(h.sched.report_idle(b, ga.lease, t), Err(Error::NotOwner(ga.lease)));
    assert_eq!(h.sched.release(ClientId(55), ga.lease, t), Err(Error::UnknownClient(ClientId(55))));
    h.release(a, ga.lease);
    assert_eq!(h.sched.release(a, ga.lease, t), Err(Error::AlreadyReleased(ga.lease)));
    assert_eq!(Error::NotOwner(ga.lease).kind(), ErrorKind::PermissionDenied);
    assert_eq!(Error::UnknownLease(ga.lease).kind(), ErrorKind::NotFound);
    let r = h.ask(b, 1);
    let _ = h.granted(b);
    assert_eq!(h.sched.cancel(b, r, t), Err(Error::UnknownRequest(r)));
    assert_eq!(h.sched.cancel(b, RequestId(1234), t), Err(Error::UnknownRequest(RequestId(1234))));
}

#[test]
fn a_client_cannot_flood_the_queue() {
    let mut config = SchedulerConfig::new(Policy::Simple);
    config.max_queued_per_client = 2;
    let mut h = Harness::with_config(config, &[&[80]]);
    let holder = h.client();
    h.ask(holder, 1);
    let _ = h.granted(holder);
    let c = h.client();
    h.ask(c, 1);
    h.ask(c, 1);
    assert_eq!(h.sched.submit(Request::new(c, "x", 1), h.now), Err(Error::TooManyQueued { limit: 2 }));
}

#[test]
fn cancel_withdraws_only_ones_own_request() {
    let mut h = Harness::new(Policy::Simple, &[80]);
    let holder = h.client();
    h.ask(holder, 1);
    let g = h.granted(holder);
    let a = h.client();
    let b = h.client();
    let ra = h.ask(a, 1);
    h.ask(b, 1);
    assert_eq!(h.sched.cancel(b, ra, h.now), Err(Error::NotRequestOwner(ra)));
    h.sched.cancel(a, ra, h.now).unwrap();
    h.release(holder, g.lease);
    assert_eq!(h.granted(b).client, b);
}

#[test]
fn an_empty_pool_rejects_every_request() {
    let mut s = Scheduler::new(SchedulerConfig::default(), GpuPool::new());
    s.connect(ClientId(1), Instant::ZERO).unwrap();
    assert_eq!(
        s.submit(Request::new(ClientId(1), "x", 1), Instant::ZERO),
        Err(Error::TooManyGpus { requested: 1, available: 0 })
    );
}

#[test]
fn policy_names_parse_and_bad_ones_say_what_is_allowed() {
    for p in Policy::ALL {
        assert_eq!(p.name().parse::<Policy>().unwrap(), p);
    }
    let err = "fifo".parse::<Policy>().unwrap_err();
    assert!(err.to_string().contains("simple, gpu-sharing, gpu-affinity"));
}

#[test]
fn a_gpu_without_memory_serves_nobody_and_blocks_nobody() {
    let mut h = Harness::new(Policy::GpuAffinity, &[80, 0]);
    let c = h.client();
    assert_eq!(h.sched.submit(Request::new(c, "x", 2), h.now), Err(Error::TooManyGpus { requested: 2, available: 1 }));
    h.ask(c, 1);
    assert_eq!(h.granted(c).gpus, vec![GpuId(0)]);
}

#[test]
fn the_time_slice_never_preempts_a_holder_of_higher_priority() {
    let config = SchedulerConfig::new(Policy::Simple).with_quantum(Duration::from_secs(1));
    let mut h = Harness::with_config(config, &[&[80]]);
    let vip = h.client();
    h.submit(Request::new(vip, "vip", 1).with_priority(10));
    let g = h.granted(vip);
    let low = h.client();
    h.ask(low, 1);
    assert_eq!(h.sched.poll_timeout(), None);
    h.step(Duration::from_secs(60));
    h.nothing();
    // Idle is different: a kept GPU is always given up for a waiter.
    h.idle(vip, g.lease);
    h.yield_asked(vip, g.lease, YieldReason::Contended);
}
