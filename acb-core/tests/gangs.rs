//! Gangs across processes, as stories: torchrun ranks or Slurm tasks, one process (one client)
//! each, perhaps on different nodes, asking for GPUs under one group name.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::time::Duration;

use acb_core::{
    Affinity, ClientId, Error, GpuId, Grant, Health, LeaseId, MAX_GROUP_SIZE, Output, Policy, Request, RequestId,
    SchedulerConfig, YieldReason,
};
use harness::{GIB, Harness};

/// Two nodes of two 80 GiB GPUs: GPUs 0, 1 on node0 and 2, 3 on node1.
fn two_nodes(policy: Policy) -> Harness {
    Harness::with_config(SchedulerConfig::new(policy), &[&[80, 80], &[80, 80]])
}

/// A rank's request: `gpus` GPUs among `on` (its node's, as the daemon says), in `group`.
fn rank(c: ClientId, group: &str, size: u32, gpus: u32, on: &[u32]) -> Request {
    Request::new(c, "train", gpus)
        .with_group(group, size)
        .with_affinity(Affinity::Required(on.iter().map(|g| GpuId(*g)).collect()))
}

fn grants(out: &[Output]) -> Vec<Grant> {
    out.iter()
        .filter_map(|o| match o {
            Output::Granted(g) => Some(g.clone()),
            _ => None,
        })
        .collect()
}

/// The outputs, which must be exactly the grants of `requests` (in any order), consecutive.
fn granted_together(h: &mut Harness, requests: &[RequestId]) -> Vec<Grant> {
    let out = h.outputs();
    let g = grants(&out);
    assert_eq!(out.len(), g.len(), "only grants expected, got {out:?}");
    let mut got: Vec<RequestId> = g.iter().map(|g| g.request).collect();
    got.sort();
    let mut want = requests.to_vec();
    want.sort();
    assert_eq!(got, want, "the whole gang, in one decision: {out:?}");
    g
}

fn grant_of(g: &[Grant], request: RequestId) -> Grant {
    g.iter().find(|x| x.request == request).cloned().unwrap()
}

// ----- granted together -----

#[test]
fn a_gang_across_two_nodes_is_granted_in_one_decision_each_rank_on_its_own_node() {
    for policy in [Policy::GpuAffinity, Policy::GpuSharing] {
        let mut h = two_nodes(policy);
        let (r0, r1) = (h.client(), h.client());
        let m0 = h.submit(rank(r0, "job-7", 2, 2, &[0, 1]));
        h.nothing(); // one rank of two: it waits, alone
        assert_eq!(h.sched.group_waiting("job-7").map(|(s, m)| (s, m.len())), Some((2, 1)));
        let m1 = h.submit(rank(r1, "job-7", 2, 2, &[2, 3]));
        let g = granted_together(&mut h, &[m0, m1]);
        let (g0, g1) = (grant_of(&g, m0), grant_of(&g, m1));
        assert_eq!(g0.client, r0);
        assert_eq!(g1.client, r1);
        let mut on0 = g0.gpus.clone();
        on0.sort();
        let mut on1 = g1.gpus.clone();
        on1.sort();
        assert_eq!(on0, vec![GpuId(0), GpuId(1)], "rank 0 only on node0");
        assert_eq!(on1, vec![GpuId(2), GpuId(3)], "rank 1 only on node1");
        // The group's name is free again: the next phase assembles it anew.
        assert!(h.sched.group_waiting("job-7").is_none());
        let (_, linked) = h.sched.gang_of(g0.lease).unwrap();
        assert_eq!(linked.len(), 2);
    }
}

#[test]
fn a_group_of_one_is_a_plain_request() {
    let mut h = Harness::new(Policy::Simple, &[80]);
    let a = h.client();
    h.submit(Request::new(a, "solo", 1).with_group("solo", 1));
    let g = h.granted(a);
    assert!(h.sched.gang_of(g.lease).is_none());
}

#[test]
fn an_incomplete_group_blocks_nobody_and_holds_nothing() {
    let mut h = Harness::new(Policy::Simple, &[80]);
    let (r0, b) = (h.client(), h.client());
    let m0 = h.submit(Request::new(r0, "train", 1).with_group("g", 2).with_priority(5));
    h.nothing();
    assert_eq!(h.sched.queue_len(), 0, "a member alone is not in the queue");
    assert!(h.sched.reservation().is_none());
    assert!(h.sched.queued_request(m0).is_some());
    // Under `simple` a head blocks everything behind it: a lone member must not be a head.
    h.ask(b, 1);
    h.granted(b);
}

#[test]
fn members_wait_for_the_group_to_be_complete_even_when_gpus_are_free() {
    let mut h = two_nodes(Policy::GpuAffinity);
    let r: Vec<ClientId> = (0..3).map(|_| h.client()).collect();
    let m0 = h.submit(rank(r[0], "g", 3, 1, &[0, 1]));
    let m1 = h.submit(rank(r[1], "g", 3, 1, &[0, 1]));
    h.nothing();
    let m2 = h.submit(rank(r[2], "g", 3, 1, &[2, 3]));
    let g = granted_together(&mut h, &[m0, m1, m2]);
    assert_ne!(grant_of(&g, m0).gpus, grant_of(&g, m1).gpus, "two ranks on one node take disjoint GPUs");
}

// ----- not starved -----

#[test]
fn a_complete_gang_at_the_head_is_not_starved_by_small_requests_exclusive() {
    // node0: GPU 0, node1: GPU 1. A holder keeps GPU 0 busy; the gang needs both.
    let mut h = Harness::with_config(SchedulerConfig::new(Policy::GpuAffinity), &[&[80], &[80]]);
    let holder = h.client();
    h.submit(Request::new(holder, "long", 1).with_affinity(Affinity::Required(vec![GpuId(0)])));
    let held = h.granted(holder);
    let (r0, r1) = (h.client(), h.client());
    let m0 = h.submit(rank(r0, "g", 2, 1, &[0]));
    let m1 = h.submit(rank(r1, "g", 2, 1, &[1]));
    h.nothing();
    let (entry, reserved) = h.sched.reservation().map(|(r, g)| (r, g.to_vec())).unwrap();
    assert_eq!(entry, m0, "the unit is queued under its first member");
    assert_eq!(reserved, vec![GpuId(0), GpuId(1)], "the reservation covers every member's GPUs");
    // A stream of one-GPU requests: GPU 1 is free, but it is the gang's.
    for _ in 0..5 {
        let c = h.client();
        h.ask(c, 1);
        h.nothing();
        h.step(Duration::from_secs(1));
    }
    h.idle(holder, held.lease);
    h.yield_asked(holder, held.lease, YieldReason::Contended);
    h.release(holder, held.lease);
    let g = granted_together(&mut h, &[m0, m1]);
    assert_eq!(grant_of(&g, m1).gpus, vec![GpuId(1)]);
}

#[test]
fn a_complete_gang_at_the_head_is_not_starved_by_small_requests_sharing() {
    let mut h = Harness::with_config(SchedulerConfig::new(Policy::GpuSharing), &[&[80], &[80]]);
    let holder = h.client();
    h.submit(Request::new(holder, "big", 1).with_memory(60 * GIB).with_affinity(Affinity::Required(vec![GpuId(0)])));
    let held = h.granted(holder);
    let (r0, r1) = (h.client(), h.client());
    let m0 = h.submit(rank(r0, "g", 2, 1, &[0]).with_memory(40 * GIB));
    let m1 = h.submit(rank(r1, "g", 2, 1, &[1]).with_memory(40 * GIB));
    h.nothing();
    // Ten 10 GiB requests would fill GPU 1 (and what is left of GPU 0): both are the gang's.
    let mut small = Vec::new();
    for _ in 0..10 {
        let c = h.client();
        small.push(h.submit(Request::new(c, "small", 1).with_memory(10 * GIB)));
        h.nothing();
    }
    assert_eq!(h.sched.gpu_state(GpuId(1)).unwrap().granted, 0);
    h.release(holder, held.lease);
    let out = h.outputs();
    let g = grants(&out);
    assert_eq!(&g[..2].iter().map(|g| g.request).collect::<Vec<_>>().len(), &2);
    let mut first_two: Vec<RequestId> = g[..2].iter().map(|g| g.request).collect();
    first_two.sort();
    assert_eq!(first_two, vec![m0, m1], "the gang first, as one decision: {out:?}");
    // Then the small ones fill what is left (40 GiB on each GPU: four each).
    assert_eq!(g.len(), 2 + 8);
}

// ----- leaving before and after completion -----

#[test]
fn a_member_cancelled_before_completion_leaves_and_the_group_waits_for_another() {
    let mut h = two_nodes(Policy::GpuAffinity);
    let r: Vec<ClientId> = (0..4).map(|_| h.client()).collect();
    let m0 = h.submit(rank(r[0], "g", 3, 1, &[0, 1]));
    let m1 = h.submit(rank(r[1], "g", 3, 1, &[0, 1]));
    h.sched.cancel(r[1], m1, h.now).unwrap();
    h.nothing();
    assert_eq!(h.sched.group_waiting("g").map(|(_, m)| m.to_vec()), Some(vec![m0]));
    let m2 = h.submit(rank(r[2], "g", 3, 1, &[2, 3]));
    h.nothing();
    let m3 = h.submit(rank(r[3], "g", 3, 1, &[2, 3]));
    granted_together(&mut h, &[m0, m2, m3]);
}

#[test]
fn a_member_leaving_a_complete_gang_takes_the_unit_out_of_the_queue() {
    for disconnect in [false, true] {
        let mut h = Harness::with_config(SchedulerConfig::new(Policy::GpuAffinity), &[&[80], &[80]]);
        let holder = h.client();
        h.submit(Request::new(holder, "long", 1).with_affinity(Affinity::Required(vec![GpuId(0)])));
        let held = h.granted(holder);
        let (r0, r1, r2) = (h.client(), h.client(), h.client());
        let m0 = h.submit(rank(r0, "g", 2, 1, &[0]));
        let m1 = h.submit(rank(r1, "g", 2, 1, &[1]));
        h.nothing();
        assert_eq!(h.sched.queue_len(), 1);
        assert!(h.sched.reservation().is_some());
        if disconnect {
            let gone = h.sched.disconnect(r0, h.now).unwrap();
            assert_eq!(gone.requests, vec![m0]);
        } else {
            h.sched.cancel(r0, m0, h.now).unwrap();
        }
        assert_eq!(h.sched.queue_len(), 0, "the unit left the queue");
        assert!(h.sched.reservation().is_none(), "and its reservation with it");
        // A plain request may now use GPU 1 (the waiting member holds nothing).
        let c = h.client();
        h.ask(c, 1);
        let g = h.granted(c);
        assert_eq!(g.gpus, vec![GpuId(1)]);
        h.release(c, g.lease);
        // The rank comes back (a restarted process): the group is complete again.
        let m2 = h.submit(rank(r2, "g", 2, 1, &[0]));
        h.nothing();
        assert_eq!(h.sched.queued_members(m1), vec![m1, m2]);
        h.release(holder, held.lease);
        granted_together(&mut h, &[m1, m2]);
    }
}

// ----- validation -----

#[test]
fn bad_groups_are_refused_at_submit() {
    let mut h = Harness::new(Policy::GpuAffinity, &[80, 80]);
    let (a, b, c) = (h.client(), h.client(), h.client());
    let now = h.now;
    for (name, size) in [("g", 0), ("g", MAX_GROUP_SIZE + 1), ("", 2)] {
        let r = h.sched.submit(Request::new(a, "x", 1).with_group(name, size), now);
        assert_eq!(r, Err(Error::InvalidGroup { size }));
    }
    // Each member is also a request like any other.
    assert_eq!(h.sched.submit(Request::new(a, "x", 0).with_group("g", 2), now), Err(Error::ZeroGpus));
    h.sched.submit(Request::new(a, "x", 1).with_group("g", 3), now).unwrap();
    assert_eq!(
        h.sched.submit(Request::new(b, "x", 1).with_group("g", 2), now),
        Err(Error::GroupSizeMismatch { group: "g".into(), expected: 3, got: 2 })
    );
    // One member per process.
    assert_eq!(
        h.sched.submit(Request::new(a, "x", 1).with_group("g", 3), now),
        Err(Error::GroupFull { group: "g".into(), size: 3 })
    );
    assert!(h.sched.check_invariants().is_ok());
    let _ = c;
}

#[test]
fn a_complete_group_still_waiting_is_full() {
    let mut h = Harness::new(Policy::GpuAffinity, &[80, 80]);
    let holder = h.client();
    h.ask(holder, 2);
    h.granted(holder);
    let (r0, r1, r2) = (h.client(), h.client(), h.client());
    h.submit(Request::new(r0, "x", 1).with_group("g", 2));
    h.submit(Request::new(r1, "x", 1).with_group("g", 2));
    h.nothing();
    let r = h.sched.submit(Request::new(r2, "x", 1).with_group("g", 2), h.now);
    assert_eq!(r, Err(Error::GroupFull { group: "g".into(), size: 2 }));
}

#[test]
fn a_gang_the_pool_can_never_hold_is_rejected_whole() {
    // Two ranks that both need the one GPU of node0: never, under an exclusive policy.
    let mut h = Harness::with_config(SchedulerConfig::new(Policy::GpuAffinity), &[&[80], &[80]]);
    let (r0, r1) = (h.client(), h.client());
    let m0 = h.submit(rank(r0, "g", 2, 1, &[0]));
    let m1 = h.submit(rank(r1, "g", 2, 1, &[0]));
    let out = h.outputs();
    let rejected: Vec<RequestId> = out
        .iter()
        .filter_map(|o| match o {
            Output::Rejected { request, .. } => Some(*request),
            _ => None,
        })
        .collect();
    assert_eq!(rejected, vec![m0, m1], "{out:?}");
    assert!(h.sched.group_waiting("g").is_none());
    // Under gpu-sharing both fit on the one GPU (by memory).
    let mut h = Harness::with_config(SchedulerConfig::new(Policy::GpuSharing), &[&[80], &[80]]);
    let (r0, r1) = (h.client(), h.client());
    let m0 = h.submit(rank(r0, "g", 2, 1, &[0]).with_memory(30 * GIB));
    let m1 = h.submit(rank(r1, "g", 2, 1, &[0]).with_memory(30 * GIB));
    granted_together(&mut h, &[m0, m1]);
}

#[test]
fn losing_a_gpu_a_waiting_member_needs_rejects_every_member() {
    let mut h = Harness::with_config(SchedulerConfig::new(Policy::GpuAffinity), &[&[80], &[80]]);
    let (r0, r1) = (h.client(), h.client());
    let m0 = h.submit(rank(r0, "g", 3, 1, &[0]));
    let m1 = h.submit(rank(r1, "g", 3, 1, &[1]));
    h.sched.set_health(GpuId(1), Health::Lost, h.now).unwrap();
    let out = h.outputs();
    let rejected: Vec<(ClientId, RequestId)> = out
        .iter()
        .filter_map(|o| match o {
            Output::Rejected { client, request, .. } => Some((*client, *request)),
            _ => None,
        })
        .collect();
    assert_eq!(rejected, vec![(r0, m0), (r1, m1)]);
    h.check();
}

#[test]
fn a_member_counts_against_its_clients_queue_limit() {
    let mut config = SchedulerConfig::new(Policy::GpuAffinity);
    config.max_queued_per_client = 1;
    let mut h = Harness::with_config(config, &[&[80]]);
    let a = h.client();
    h.submit(Request::new(a, "x", 1).with_group("g", 2));
    assert_eq!(h.sched.submit(Request::new(a, "y", 1), h.now), Err(Error::TooManyQueued { limit: 1 }));
}

// ----- priority of the unit -----

#[test]
fn a_unit_is_served_at_its_highest_members_priority_arriving_when_complete() {
    let mut h = Harness::new(Policy::GpuAffinity, &[80, 80]);
    let holders = [h.client(), h.client()];
    let mut held = Vec::new();
    for c in holders {
        h.ask(c, 1);
        held.push(h.granted(c).lease);
    }
    let (r0, r1, p, q) = (h.client(), h.client(), h.client(), h.client());
    // p (priority 1) waits before the group is complete; q (priority 2) after its first rank.
    let m0 = h.submit(Request::new(r0, "x", 1).with_group("g", 2));
    let pr = h.submit(Request::new(p, "x", 1).with_priority(1));
    let qr = h.submit(Request::new(q, "x", 1).with_priority(2));
    let m1 = h.submit(Request::new(r1, "x", 1).with_group("g", 2).with_priority(2));
    h.nothing();
    let order: Vec<(RequestId, i32)> = h.sched.queued().map(|e| (e.id, e.priority())).collect();
    // Priority 2 from its second rank puts the unit ahead of p; q, of the same priority,
    // arrived before the group was complete and stays ahead.
    assert_eq!(order, vec![(qr, 2), (m0, 2), (pr, 1)]);
    h.release(holders[0], held[0]);
    assert_eq!(h.granted(q).request, qr);
    h.release(holders[1], held[1]);
    h.nothing(); // the gang needs two GPUs: one is free, reserved for it
    let lq = h.sched.leases_of(q).next().unwrap();
    h.release(q, lq);
    granted_together(&mut h, &[m0, m1]);
}

// ----- linked leases -----

/// A granted 2-node gang of `n` ranks with one GPU each, plus its leases by rank.
fn granted_gang(h: &mut Harness, n: u32) -> Vec<(ClientId, LeaseId)> {
    let ranks: Vec<ClientId> = (0..n).map(|_| h.client()).collect();
    let mut ids = Vec::new();
    for (i, r) in ranks.iter().enumerate() {
        let on: &[u32] = if i % 2 == 0 { &[0, 1] } else { &[2, 3] };
        ids.push(h.submit(rank(*r, "g", n, 1, on)));
    }
    let g = granted_together(h, &ids);
    ids.iter().map(|id| grant_of(&g, *id)).map(|g| (g.client, g.lease)).collect()
}

#[test]
fn a_yield_asked_of_one_member_is_asked_of_all() {
    let mut h = two_nodes(Policy::GpuAffinity);
    let gang = granted_gang(&mut h, 4);
    let other = h.client();
    h.submit(Request::new(other, "x", 1).with_affinity(Affinity::Required(vec![GpuId(0)])));
    h.nothing(); // every rank is busy: no quantum, nobody is asked
    let holder_of_0 = *gang.iter().find(|(_, l)| h.sched.lease(*l).unwrap().gpus == vec![GpuId(0)]).unwrap();
    h.idle(holder_of_0.0, holder_of_0.1);
    let out = h.outputs();
    let mut asked: Vec<LeaseId> = out
        .iter()
        .map(|o| match o {
            Output::YieldAsked { lease, reason: YieldReason::Contended, .. } => *lease,
            o => panic!("only yields expected, got {o:?}"),
        })
        .collect();
    asked.sort();
    let mut all: Vec<LeaseId> = gang.iter().map(|(_, l)| *l).collect();
    all.sort();
    assert_eq!(asked, all, "the busy ranks are asked too, at once");
}

#[test]
fn a_member_that_goes_away_breaks_the_gang() {
    let mut h = two_nodes(Policy::GpuAffinity);
    let gang = granted_gang(&mut h, 3);
    h.sched.disconnect(gang[0].0, h.now).unwrap();
    let out = h.outputs();
    let broken: Vec<(ClientId, LeaseId)> = out
        .iter()
        .map(|o| match o {
            Output::GroupBroken { client, lease, group, gone } => {
                assert_eq!(group, "g");
                assert_eq!(*gone, gang[0].0);
                (*client, *lease)
            }
            o => panic!("only broken leases expected, got {o:?}"),
        })
        .collect();
    assert_eq!(broken, gang[1..].to_vec());
    assert_eq!(h.sched.leases().count(), 0, "every GPU of the gang is free");
    h.check();
}

#[test]
fn a_member_that_releases_asks_the_others_to_yield() {
    let mut h = two_nodes(Policy::GpuAffinity);
    let gang = granted_gang(&mut h, 2);
    h.release(gang[0].0, gang[0].1);
    h.yield_asked(gang[1].0, gang[1].1, YieldReason::Contended);
    assert!(h.sched.gang_of(gang[0].1).is_none());
    assert_eq!(h.sched.gang_of(gang[1].1).map(|(_, l)| l.to_vec()), Some(vec![gang[1].1]));
}

#[test]
fn a_member_revoked_by_a_lost_gpu_breaks_the_gang() {
    let mut h = two_nodes(Policy::GpuAffinity);
    let gang = granted_gang(&mut h, 2);
    let gpu = h.sched.lease(gang[1].1).unwrap().gpus[0];
    h.sched.set_health(gpu, Health::Lost, h.now).unwrap();
    let out = h.outputs();
    assert_eq!(
        out,
        vec![
            Output::Revoked { client: gang[1].0, lease: gang[1].1, gpu },
            Output::GroupBroken { client: gang[0].0, lease: gang[0].1, group: "g".into(), gone: gang[1].0 },
        ]
    );
    h.check();
}

// ----- affinity across phases -----

#[test]
fn under_gpu_affinity_a_gang_keeps_its_gpus_across_phases() {
    let mut h = two_nodes(Policy::GpuAffinity);
    // GPUs 0 and 2 are busy during the first phase, so the ranks get 1 and 3.
    let others = [h.client(), h.client()];
    let mut held = Vec::new();
    for (c, g) in others.iter().zip([0u32, 2]) {
        h.submit(Request::new(*c, "x", 1).with_affinity(Affinity::Required(vec![GpuId(g)])));
        held.push(h.granted(*c).lease);
    }
    let (r0, r1) = (h.client(), h.client());
    let m0 = h.submit(rank(r0, "g", 2, 1, &[0, 1]));
    let m1 = h.submit(rank(r1, "g", 2, 1, &[2, 3]));
    let g = granted_together(&mut h, &[m0, m1]);
    let first = [grant_of(&g, m0), grant_of(&g, m1)];
    assert_eq!(first[0].gpus, vec![GpuId(1)]);
    assert_eq!(first[1].gpus, vec![GpuId(3)]);
    for (c, l) in others.iter().zip(&held) {
        h.release(*c, *l);
    }
    h.release(r0, first[0].lease);
    h.yield_asked(r1, first[1].lease, YieldReason::Contended);
    h.release(r1, first[1].lease);
    h.step(Duration::from_secs(2));
    // Second phase, every GPU free: each rank gets the GPU it had (its memory map is there).
    let m0 = h.submit(rank(r0, "g", 2, 1, &[0, 1]));
    let m1 = h.submit(rank(r1, "g", 2, 1, &[2, 3]));
    let g = granted_together(&mut h, &[m0, m1]);
    assert_eq!(grant_of(&g, m0).gpus, vec![GpuId(1)]);
    assert_eq!(grant_of(&g, m1).gpus, vec![GpuId(3)]);
}

// ----- the simulator -----

mod simulated {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use acb_core::sim::{self, JobSpec, Mode, Phase, SimConfig, SimError, SpanKind};
    use acb_core::{GpuPool, NodeId, Policy, ReleaseMode, SchedulerConfig};

    use super::GIB;

    /// Two nodes of two GPUs; a 2-rank torchrun job (one rank per node, 2 GPUs each) beside
    /// two single-GPU jobs, one per node.
    fn setup() -> (GpuPool, Vec<JobSpec>, BTreeMap<usize, NodeId>, Vec<Vec<usize>>) {
        let mut pool = GpuPool::new();
        for n in 0..2 {
            let node = pool.add_node(&format!("node{n}"));
            for i in 0..2 {
                pool.add_gpu(node, format!("fake-{n}-{i}"), 80 * GIB);
            }
        }
        let phases = vec![Phase::Cpu(Duration::from_secs(20)), Phase::Gpu(Duration::from_secs(30))];
        let mut jobs = Vec::new();
        for r in 0..2 {
            let mut rank = JobSpec::new(format!("train-rank{r}"), 10 * GIB, phases.clone(), 4);
            rank.gpus = 2;
            jobs.push(rank);
        }
        for n in 0..2 {
            let mut other = JobSpec::new(
                format!("other{n}"),
                5 * GIB,
                vec![Phase::Cpu(Duration::from_secs(7)), Phase::Gpu(Duration::from_secs(25))],
                5,
            );
            other.arrival = Duration::from_secs(3 + n);
            jobs.push(other);
        }
        let pinned = BTreeMap::from([(0, NodeId(0)), (1, NodeId(1)), (2, NodeId(0)), (3, NodeId(1))]);
        (pool, jobs, pinned, vec![vec![0, 1]])
    }

    #[test]
    fn a_two_node_gang_job_finishes_its_ranks_always_granted_in_the_same_instant() {
        let (pool, jobs, pinned, gangs) = setup();
        let modes = [
            Mode::Static,
            Mode::Brokered(SchedulerConfig::new(Policy::GpuAffinity)),
            Mode::Brokered(SchedulerConfig::new(Policy::GpuSharing)),
            Mode::Brokered(SchedulerConfig::new(Policy::GpuAffinity).with_quantum(Duration::from_secs(5))),
        ];
        for eager in [false, true] {
            for mode in modes.clone() {
                let mut cfg = SimConfig::new(pool.clone(), mode.clone());
                cfg.pinned = pinned.clone();
                cfg.gangs = gangs.clone();
                if eager {
                    cfg.client.release = ReleaseMode::Eager;
                }
                let r = sim::run(&cfg, &jobs).unwrap_or_else(|e| panic!("{mode:?}: {e}"));
                assert_eq!(r.items, 4 + 4 + 5 + 5, "{mode:?}");
                assert_eq!(r.jobs_done, 4);
                // Every grant to rank 0 comes with one to rank 1, in the same instant.
                let grants_of = |j: usize| r.waits.iter().filter(|w| w.job == j).map(|w| w.end).collect::<Vec<_>>();
                assert!(!grants_of(0).is_empty());
                assert_eq!(grants_of(0), grants_of(1), "{mode:?} eager={eager}");
                // Each job only ever holds GPUs of its own node.
                for s in &r.spans {
                    let node = pool.gpu(s.gpu).unwrap().node;
                    assert_eq!(Some(&node), pinned.get(&s.job), "{mode:?}: job {} on {}", s.job, s.gpu);
                }
                // Lockstep: the ranks compute over the same intervals.
                let computes = |j: usize| {
                    r.spans
                        .iter()
                        .filter(|s| s.job == j && s.kind == SpanKind::Compute)
                        .map(|s| (s.start, s.end))
                        .collect::<Vec<_>>()
                };
                assert_eq!(computes(0), computes(1), "{mode:?}");
                // Never more than the hardware: GPU-phase work fits in makespan x GPUs.
                assert!(r.compute <= r.makespan.as_nanos() * 4);
                assert!(r.makespan >= sim::makespan_lower_bound(4, &jobs));
            }
        }
    }

    #[test]
    fn a_rank_waits_at_the_collective_for_a_slower_one() {
        // Rank 1 shares its GPU with another job under gpu-sharing, so it computes at half
        // speed: rank 0 must not run ahead of it.
        let mut pool = GpuPool::new();
        for n in 0..2 {
            let node = pool.add_node(&format!("node{n}"));
            pool.add_gpu(node, format!("fake-{n}"), 80 * GIB);
        }
        let phases = vec![Phase::Gpu(Duration::from_secs(10)), Phase::Cpu(Duration::from_secs(1))];
        let jobs = vec![
            JobSpec::new("rank0", GIB, phases.clone(), 2),
            JobSpec::new("rank1", GIB, phases, 2),
            JobSpec::new("noisy", GIB, vec![Phase::Gpu(Duration::from_secs(100))], 1),
        ];
        let mut cfg = SimConfig::new(pool, Mode::Brokered(SchedulerConfig::new(Policy::GpuSharing)));
        cfg.pinned = BTreeMap::from([(0, NodeId(0)), (1, NodeId(1)), (2, NodeId(1))]);
        cfg.gangs = vec![vec![0, 1]];
        let r = sim::run(&cfg, &jobs).unwrap();
        let computes = |j: usize| {
            r.spans.iter().filter(|s| s.job == j && s.kind == SpanKind::Compute).map(|s| s.end).collect::<Vec<_>>()
        };
        // Rank 1 at half speed: 20 s per phase. Rank 0 finishes computing at 10 s but leaves
        // the phase with rank 1, so its second phase starts after 21 s, not 11 s.
        assert_eq!(computes(1)[0], acb_core::Instant::ZERO + Duration::from_secs(20));
        let second0 = r.spans.iter().filter(|s| s.job == 0 && s.kind == SpanKind::Compute).nth(1).unwrap();
        assert!(second0.start >= acb_core::Instant::ZERO + Duration::from_secs(21), "{second0:?}");
    }

    #[test]
    fn a_malformed_layout_is_refused() {
        let (pool, jobs, pinned, _) = setup();
        let mut cfg = SimConfig::new(pool, Mode::Brokered(SchedulerConfig::new(Policy::GpuAffinity)));
        cfg.pinned = pinned;
        cfg.gangs = vec![vec![0, 2]]; // other phases
        assert!(matches!(sim::run(&cfg, &jobs), Err(SimError::InvalidJob { reason, .. }) if reason.contains("phases")));
        cfg.gangs = vec![vec![0, 1], vec![1]];
        assert!(
            matches!(sim::run(&cfg, &jobs), Err(SimError::InvalidJob { reason, .. }) if reason.contains("two gangs"))
        );
        cfg.gangs = vec![];
        cfg.pinned.insert(9, NodeId(0));
        assert!(matches!(sim::run(&cfg, &jobs), Err(SimError::InvalidJob { .. })));
    }
}
