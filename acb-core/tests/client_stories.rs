//! The client session machine, the swap registry and the simulator, as stories.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use acb_core::sim::{self, JobSpec, Mode, Phase, SimConfig, SimError};
use acb_core::swap::{Residency, SwapError};
use acb_core::{
    Action, ClientConfig, ClientError, ClientId, ClientMachine, GpuDemand, GpuId, GpuPool, Instant, LeaseId, Policy,
    ReleaseMode, RequestTag, SchedulerConfig, State, SwapRegistry,
};

const GIB: u64 = 1 << 30;

fn t(ms: u64) -> Instant {
    Instant::from_nanos(ms * 1_000_000)
}

fn drain(m: &mut ClientMachine) -> Vec<Action> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

/// The request the machine sends, tagged `tag`.
fn request(tag: u64, demand: GpuDemand) -> Action {
    Action::SendRequest { tag: RequestTag(tag), demand }
}

/// The assigner grants request `tag` lease `lease` on GPU 0.
fn granted(m: &mut ClientMachine, tag: u64, lease: u64, now: Instant) -> Vec<Action> {
    m.handle_granted(RequestTag(tag), LeaseId(lease), vec![GpuId(0)], 80 * GIB, now);
    drain(m)
}

/// The assigner acknowledges the release of `lease`, in the current session.
fn acked(m: &mut ClientMachine, lease: u64, now: Instant) {
    let session = m.session();
    m.handle_release_acked(LeaseId(lease), session, now);
}

/// A machine in its first GPU phase, on lease 1 (GPU 0) for request 1, granted at t(1).
fn active(config: ClientConfig) -> ClientMachine {
    let mut m = ClientMachine::new(config);
    m.begin(GpuDemand::gpus(1), t(0)).unwrap();
    drain(&mut m);
    granted(&mut m, 1, 1, t(1));
    m
}

#[test]
fn a_phase_asks_swaps_in_and_under_lazy_release_keeps_the_gpu() {
    let mut m = ClientMachine::new(ClientConfig::default());
    m.begin(GpuDemand::gpus(1), t(0)).unwrap();
    assert_eq!(drain(&mut m), vec![request(1, GpuDemand::gpus(1))]);
    assert_eq!(m.state(), State::Requesting);
    let l = LeaseId(1);
    assert_eq!(
        granted(&mut m, 1, 1, t(5)),
        vec![Action::SwapIn { lease: l, gpus: vec![GpuId(0)], memory_per_gpu: 80 * GIB }, Action::Ready { lease: l }]
    );
    m.end(t(100)).unwrap();
    assert_eq!(drain(&mut m), vec![Action::ReportIdle { lease: l }]);
    assert_eq!(m.state(), State::IdleHeld);
    // The next phase reuses the lease: no request, no swap.
    m.begin(GpuDemand::gpus(1), t(200)).unwrap();
    assert_eq!(drain(&mut m), vec![Action::ReportBusy { lease: l }, Action::Ready { lease: l }]);
    assert_eq!(m.state(), State::Active);
}

#[test]
fn eager_release_gives_the_gpu_back_after_every_phase() {
    let mut m = active(ClientConfig { release: ReleaseMode::Eager, idle_timeout: None });
    m.end(t(2)).unwrap();
    let l = LeaseId(1);
    assert_eq!(drain(&mut m), vec![Action::SwapOut { lease: l }, Action::SendRelease { lease: l }]);
    assert_eq!(m.state(), State::Releasing);
    acked(&mut m, 1, t(3));
    assert_eq!(m.state(), State::Idle);
    assert_eq!(m.lease(), None);
}

#[test]
fn a_yield_asked_while_idle_releases_at_once_and_while_busy_at_the_end() {
    let mut m = active(ClientConfig::default());
    let l = LeaseId(1);
    m.handle_yield(l, t(2)); // busy: noted
    assert!(drain(&mut m).is_empty());
    assert!(m.yield_asked());
    m.end(t(3)).unwrap();
    assert_eq!(drain(&mut m), vec![Action::SwapOut { lease: l }, Action::SendRelease { lease: l }]);
    acked(&mut m, 1, t(4));

    m.begin(GpuDemand::gpus(1), t(5)).unwrap();
    drain(&mut m);
    granted(&mut m, 2, 2, t(6));
    m.end(t(7)).unwrap();
    drain(&mut m);
    m.handle_yield(LeaseId(1), t(8)); // stale: ignored
    assert!(drain(&mut m).is_empty());
    m.handle_yield(LeaseId(2), t(8));
    assert_eq!(drain(&mut m), vec![Action::SwapOut { lease: LeaseId(2) }, Action::SendRelease { lease: LeaseId(2) }]);
}

#[test]
fn a_safe_point_gives_the_gpu_back_mid_phase_and_asks_again() {
    let mut m = active(ClientConfig::default());
    assert!(!m.safe_point(t(2)), "nobody asked");
    m.handle_yield(LeaseId(1), t(3));
    assert!(m.safe_point(t(4)));
    assert_eq!(drain(&mut m), vec![Action::SwapOut { lease: LeaseId(1) }, Action::SendRelease { lease: LeaseId(1) }]);
    acked(&mut m, 1, t(5));
    assert_eq!(drain(&mut m), vec![request(2, GpuDemand::gpus(1))]);
    let actions = granted(&mut m, 2, 2, t(9));
    assert_eq!(actions.last(), Some(&Action::Ready { lease: LeaseId(2) }));
}

#[test]
fn the_idle_timeout_gives_a_kept_gpu_back() {
    let mut m =
        ClientMachine::new(ClientConfig { release: ReleaseMode::Lazy, idle_timeout: Some(Duration::from_secs(2)) });
    m.begin(GpuDemand::gpus(1), t(0)).unwrap();
    drain(&mut m);
    granted(&mut m, 1, 1, t(1));
    m.end(t(1000)).unwrap();
    drain(&mut m);
    assert_eq!(m.poll_timeout(), Some(t(3000)));
    m.handle_timeout(t(2000)); // early: nothing
    assert!(drain(&mut m).is_empty());
    m.handle_timeout(t(3000));
    assert_eq!(drain(&mut m), vec![Action::SwapOut { lease: LeaseId(1) }, Action::SendRelease { lease: LeaseId(1) }]);
    assert_eq!(m.poll_timeout(), None);
}

#[test]
fn a_begin_that_needs_more_than_the_kept_lease_releases_it_first() {
    let mut m = active(ClientConfig::default());
    m.end(t(2)).unwrap();
    drain(&mut m);
    m.begin(GpuDemand::gpus(2), t(3)).unwrap();
    assert_eq!(drain(&mut m), vec![Action::SwapOut { lease: LeaseId(1) }, Action::SendRelease { lease: LeaseId(1) }]);
    acked(&mut m, 1, t(4));
    assert_eq!(drain(&mut m), vec![request(2, GpuDemand::gpus(2))]);
}

#[test]
fn misuse_gets_clear_errors() {
    let mut m = ClientMachine::new(ClientConfig::default());
    assert_eq!(m.end(t(0)), Err(ClientError::NotActive));
    assert_eq!(m.cancel(t(0)), Err(ClientError::NotRequesting));
    m.begin(GpuDemand::gpus(1), t(0)).unwrap();
    assert_eq!(m.begin(GpuDemand::gpus(1), t(0)), Err(ClientError::AlreadyRequesting));
    drain(&mut m);
    granted(&mut m, 1, 1, t(1));
    assert_eq!(m.begin(GpuDemand::gpus(1), t(0)), Err(ClientError::AlreadyActive));
    assert!(ClientError::AlreadyActive.to_string().contains("twice"));
}

#[test]
fn a_grant_that_crosses_a_cancel_is_given_straight_back() {
    let mut m = ClientMachine::new(ClientConfig::default());
    m.begin(GpuDemand::gpus(1), t(0)).unwrap();
    drain(&mut m);
    m.cancel(t(1)).unwrap();
    assert_eq!(drain(&mut m), vec![Action::SendCancel]);
    assert_eq!(granted(&mut m, 1, 1, t(2)), vec![Action::SendRelease { lease: LeaseId(1) }]);
    assert_eq!(m.state(), State::Idle);
}

#[test]
fn a_rejected_request_fails_the_waiting_begin() {
    let mut m = ClientMachine::new(ClientConfig::default());
    m.begin(GpuDemand::gpus(4), t(0)).unwrap();
    drain(&mut m);
    m.handle_rejected(RequestTag(1), "asked for 4 GPUs but only 1".into(), t(1));
    assert!(matches!(drain(&mut m).as_slice(), [Action::Failed(ClientError::Rejected(_))]));
    assert_eq!(m.state(), State::Idle);
}

#[test]
fn after_a_disconnect_the_memory_is_saved_and_the_next_phase_asks_again() {
    let mut m = active(ClientConfig::default());
    m.end(t(2)).unwrap();
    drain(&mut m);
    m.handle_disconnect(t(3)); // the assigner restarted while we kept the GPU
    assert_eq!(drain(&mut m), vec![Action::SwapOut { lease: LeaseId(1) }]);
    assert_eq!(m.state(), State::Disconnected);
    m.begin(GpuDemand::gpus(1), t(4)).unwrap(); // waits for the connection
    assert!(drain(&mut m).is_empty());
    m.handle_reconnected(t(5));
    assert_eq!(drain(&mut m), vec![request(2, GpuDemand::gpus(1))]);
}

#[test]
fn a_disconnect_mid_phase_saves_the_memory_at_the_end_and_releases_nothing() {
    let mut m = active(ClientConfig::default());
    m.handle_disconnect(t(2));
    assert!(drain(&mut m).is_empty(), "kernels in flight finish");
    m.handle_reconnected(t(3)); // back before the phase ends: the new assigner never knew the lease
    m.end(t(4)).unwrap();
    assert_eq!(drain(&mut m), vec![Action::SwapOut { lease: LeaseId(1) }]);
    assert_eq!(m.state(), State::Idle);
    m.begin(GpuDemand::gpus(1), t(6)).unwrap();
    assert_eq!(drain(&mut m), vec![request(2, GpuDemand::gpus(1))]);
}

#[test]
fn a_revoked_lease_fails_the_phase_and_loses_its_memory() {
    let mut m = active(ClientConfig::default());
    m.handle_revoked(LeaseId(1), t(2));
    assert_eq!(
        drain(&mut m),
        vec![Action::Lost { lease: LeaseId(1) }, Action::Failed(ClientError::Revoked(LeaseId(1)))]
    );
    assert_eq!(m.state(), State::Idle);
}

// ----- races the driver used to settle by timing -----

/// A fresh machine; the job's first begin is sent as request 1.
fn waiting(config: ClientConfig, demand: GpuDemand) -> ClientMachine {
    let mut m = ClientMachine::new(config);
    m.begin(demand.clone(), t(0)).unwrap();
    assert_eq!(drain(&mut m), vec![request(1, demand)]);
    m
}

#[test]
fn a_grant_that_races_a_begins_timeout_is_given_back_and_never_used() {
    // The begin times out and the job at once begins again: its first request's grant arrives
    // only then. It is the withdrawn request's: given back, never swapped into.
    let mut m = waiting(ClientConfig::default(), GpuDemand::gpus(1));
    m.cancel(t(40)).unwrap();
    assert_eq!(drain(&mut m), vec![Action::SendCancel]);
    m.begin(GpuDemand::gpus(1), t(41)).unwrap();
    assert_eq!(drain(&mut m), vec![request(2, GpuDemand::gpus(1))]);
    assert_eq!(granted(&mut m, 1, 7, t(42)), vec![Action::SendRelease { lease: LeaseId(7) }]);
    assert_eq!((m.state(), m.lease()), (State::Requesting, None), "the retry still waits for its own grant");
    assert!(granted(&mut m, 1, 7, t(43)).is_empty(), "its session copy: already given back");
    assert_eq!(granted(&mut m, 2, 8, t(44)).last(), Some(&Action::Ready { lease: LeaseId(8) }));

    // The other way round: the grant wins by a hair, and the begin's caller gives up before
    // it sees the phase. The cancel ends that phase, so the GPU is not held for a phase
    // nobody runs (under lazy release it is kept idle, and goes to whoever waits).
    let mut m = waiting(ClientConfig::default(), GpuDemand::gpus(1));
    assert_eq!(granted(&mut m, 1, 1, t(39)).last(), Some(&Action::Ready { lease: LeaseId(1) }));
    m.cancel(t(40)).unwrap();
    assert_eq!(drain(&mut m), vec![Action::ReportIdle { lease: LeaseId(1) }]);
    assert_eq!(m.state(), State::IdleHeld);
    m.handle_yield(LeaseId(1), t(41)); // someone waits: it goes back at once
    assert_eq!(drain(&mut m), vec![Action::SwapOut { lease: LeaseId(1) }, Action::SendRelease { lease: LeaseId(1) }]);
}

#[test]
fn the_same_grant_arriving_twice_is_handled_once() {
    // The call's reply first; the session's copy comes while the phase runs: nothing happens
    // (taking it for a stranger's grant would give back the lease in use).
    let mut m = waiting(ClientConfig { release: ReleaseMode::Eager, idle_timeout: None }, GpuDemand::gpus(1));
    assert_eq!(granted(&mut m, 1, 1, t(1)).len(), 2, "swap in, ready");
    assert!(granted(&mut m, 1, 1, t(2)).is_empty(), "the session's copy");
    assert_eq!((m.state(), m.lease()), (State::Active, Some(LeaseId(1))));

    // The session's copy first this time; the call's reply is late, and comes after the phase
    // ended and its lease went back, as the next phase waits: nothing happens either.
    m.end(t(3)).unwrap();
    drain(&mut m);
    acked(&mut m, 1, t(4));
    m.begin(GpuDemand::gpus(1), t(5)).unwrap();
    assert_eq!(drain(&mut m), vec![request(2, GpuDemand::gpus(1))]);
    assert_eq!(granted(&mut m, 2, 2, t(6)).last(), Some(&Action::Ready { lease: LeaseId(2) }), "the session's copy");
    m.end(t(7)).unwrap();
    drain(&mut m);
    acked(&mut m, 2, t(8));
    m.begin(GpuDemand::gpus(1), t(9)).unwrap();
    assert_eq!(drain(&mut m), vec![request(3, GpuDemand::gpus(1))]);
    assert!(granted(&mut m, 2, 2, t(10)).is_empty(), "request 2's late reply: no second release");
    assert!(granted(&mut m, 1, 1, t(10)).is_empty(), "nor for request 1's");
    assert_eq!(m.state(), State::Requesting);
}

#[test]
fn a_session_lost_mid_request_asks_again_and_ignores_the_old_sessions_late_replies() {
    let mut m = waiting(ClientConfig::default(), GpuDemand::gpus(1));
    let old = m.session();
    m.handle_disconnect(t(1)); // the assigner restarted while request 1 waited
    assert!(drain(&mut m).is_empty());
    assert_eq!(m.state(), State::Disconnected);
    m.handle_reconnected(t(2));
    assert_eq!(drain(&mut m), vec![request(2, GpuDemand::gpus(1))], "the request is sent again");
    // The old session's reply, late: its lease ended with that session. Neither used nor
    // given back (the new assigner may have granted the same lease id to someone else).
    assert!(granted(&mut m, 1, 5, t(3)).is_empty());
    // Nor does a late "unknown session" answer to the old request end the new session.
    m.handle_session_expired(RequestTag(1), t(3));
    assert!(m.is_connected());
    assert_eq!(m.state(), State::Requesting);
    // The new assigner grants the same lease id, 5: it is the new request's, and used.
    assert_eq!(granted(&mut m, 2, 5, t(4)).last(), Some(&Action::Ready { lease: LeaseId(5) }));

    // A release acknowledged late by the old session does not end a release in the new one.
    m.end(t(5)).unwrap();
    drain(&mut m);
    m.handle_yield(LeaseId(5), t(6));
    assert_eq!(drain(&mut m), vec![Action::SwapOut { lease: LeaseId(5) }, Action::SendRelease { lease: LeaseId(5) }]);
    m.handle_release_acked(LeaseId(5), old, t(7));
    assert_eq!(m.state(), State::Releasing, "an ack from the ended session");
    acked(&mut m, 5, t(8));
    assert_eq!(m.state(), State::Idle);

    // An "unknown session" answer to the current request ends the session like a disconnect.
    m.begin(GpuDemand::gpus(1), t(9)).unwrap();
    assert_eq!(drain(&mut m), vec![request(3, GpuDemand::gpus(1))]);
    m.handle_session_expired(RequestTag(3), t(10));
    assert!(!m.is_connected());
    m.handle_reconnected(t(11));
    assert_eq!(drain(&mut m), vec![request(4, GpuDemand::gpus(1))]);
}

#[test]
fn a_yield_during_a_begin() {
    // The kept lease is too small for the next phase: it goes back first. The assigner's
    // yield for it crosses that release: nothing more is sent.
    let mut m = active(ClientConfig::default());
    m.end(t(2)).unwrap();
    drain(&mut m);
    m.begin(GpuDemand::gpus(2), t(3)).unwrap();
    assert_eq!(drain(&mut m), vec![Action::SwapOut { lease: LeaseId(1) }, Action::SendRelease { lease: LeaseId(1) }]);
    m.handle_yield(LeaseId(1), t(4));
    assert!(drain(&mut m).is_empty());
    acked(&mut m, 1, t(5));
    assert_eq!(drain(&mut m), vec![request(2, GpuDemand::gpus(2))]);

    // As the begin waits, the assigner asks back a lease this job never saw (granted to a
    // request withdrawn, its grant lost): it is given back, and the begin goes on waiting.
    m.handle_yield(LeaseId(9), t(6));
    assert_eq!(drain(&mut m), vec![Action::SendRelease { lease: LeaseId(9) }]);
    assert_eq!(m.state(), State::Requesting);

    // The grant comes with a yield right behind it (a job of higher priority arrived), both
    // before the owner drains: the begin still gets its phase, and the GPU goes back at the
    // phase's first safe point.
    m.handle_granted(RequestTag(2), LeaseId(2), vec![GpuId(0), GpuId(1)], 80 * GIB, t(7));
    m.handle_yield(LeaseId(2), t(7));
    let ready = drain(&mut m);
    assert_eq!(ready.last(), Some(&Action::Ready { lease: LeaseId(2) }));
    assert_eq!(ready.len(), 2, "swap in, ready: {ready:?}");
    assert!(m.safe_point(t(8)));
    assert_eq!(drain(&mut m), vec![Action::SwapOut { lease: LeaseId(2) }, Action::SendRelease { lease: LeaseId(2) }]);
}

#[test]
fn an_end_racing_a_yield_gives_the_gpu_back_once() {
    let give_back = |l| vec![Action::SwapOut { lease: LeaseId(l) }, Action::SendRelease { lease: LeaseId(l) }];
    // The yield first, the end just after: the GPU goes back at the end, not kept idle.
    let mut m = active(ClientConfig::default());
    m.handle_yield(LeaseId(1), t(2));
    m.end(t(2)).unwrap();
    assert_eq!(drain(&mut m), give_back(1));
    m.handle_yield(LeaseId(1), t(3)); // asked again while it goes: nothing more
    assert!(drain(&mut m).is_empty());
    acked(&mut m, 1, t(4));
    m.handle_yield(LeaseId(1), t(5)); // and after: stale
    assert!(drain(&mut m).is_empty());
    assert_eq!(m.state(), State::Idle);

    // The end first, the yield just after: kept idle for a moment, then given back.
    let mut m = active(ClientConfig::default());
    m.end(t(2)).unwrap();
    m.handle_yield(LeaseId(1), t(2));
    let mut expected = vec![Action::ReportIdle { lease: LeaseId(1) }];
    expected.extend(give_back(1));
    assert_eq!(drain(&mut m), expected);
    m.handle_yield(LeaseId(1), t(3));
    assert!(drain(&mut m).is_empty(), "one release only");
}

#[test]
fn a_pinned_job_asks_for_the_gpus_of_its_first_grant_ever_after() {
    use acb_core::Affinity;
    let eager = ClientConfig { release: ReleaseMode::Eager, idle_timeout: None };
    let mut m = ClientMachine::new(eager.clone()).with_pinned_gpus();
    m.begin(GpuDemand::gpus(1), t(0)).unwrap();
    assert_eq!(drain(&mut m), vec![request(1, GpuDemand::gpus(1))], "the first request may go anywhere");
    // A grant for a request since withdrawn does not pin: the job never used that GPU.
    m.cancel(t(1)).unwrap();
    m.begin(GpuDemand::gpus(1), t(2)).unwrap();
    drain(&mut m);
    m.handle_granted(RequestTag(1), LeaseId(1), vec![GpuId(5)], 80 * GIB, t(3));
    assert_eq!(drain(&mut m), vec![Action::SendRelease { lease: LeaseId(1) }]);
    m.handle_granted(RequestTag(2), LeaseId(2), vec![GpuId(3)], 80 * GIB, t(4));
    drain(&mut m);
    assert_eq!(m.pinned_gpus(), &[GpuId(3)]);
    m.end(t(5)).unwrap();
    drain(&mut m);
    acked(&mut m, 2, t(6));
    let on_gpu_3 = GpuDemand { affinity: Affinity::Required(vec![GpuId(3)]), ..GpuDemand::gpus(1) };
    m.begin(GpuDemand::gpus(1), t(7)).unwrap();
    assert_eq!(drain(&mut m), vec![request(3, on_gpu_3.clone())], "the second request requires GPU 3");
    // Across a new session too.
    m.handle_disconnect(t(8));
    m.handle_reconnected(t(9));
    assert_eq!(drain(&mut m), vec![request(4, on_gpu_3)]);

    // Unpinned, the same story asks for any GPU every time.
    let mut m = ClientMachine::new(eager);
    m.begin(GpuDemand::gpus(1), t(0)).unwrap();
    drain(&mut m);
    m.handle_granted(RequestTag(1), LeaseId(1), vec![GpuId(3)], 80 * GIB, t(1));
    m.end(t(2)).unwrap();
    drain(&mut m);
    acked(&mut m, 1, t(3));
    m.begin(GpuDemand::gpus(1), t(4)).unwrap();
    assert_eq!(drain(&mut m), vec![request(2, GpuDemand::gpus(1))]);
}

// ----- swap registry -----

#[test]
fn read_only_memory_is_copied_out_once() {
    let mut r = SwapRegistry::new();
    let job = ClientId(1);
    let weights = r.insert(job, 0, GpuId(0), 10 * GIB, true).unwrap();
    let acts = r.insert(job, 0, GpuId(0), 2 * GIB, false).unwrap();
    let out = r.plan_swap_out(job);
    assert_eq!(out.bytes_to_copy(), 12 * GIB, "the first swap-out copies everything");
    r.complete_swap_out(&out);
    assert_eq!(r.client_totals(job).swapped, 12 * GIB);
    assert_eq!(r.get(weights).unwrap().residency, Residency::Swapped);

    let inn = r.plan_swap_in(job, &[GpuId(3)]).unwrap();
    assert_eq!(inn.bytes_to_copy(), 12 * GIB);
    r.complete_swap_in(&inn);
    assert_eq!(r.get(acts).unwrap().residency, Residency::Resident(GpuId(3)));
    assert_eq!(r.gpu_totals(GpuId(3)).resident, 12 * GIB);

    let out = r.plan_swap_out(job);
    assert_eq!(out.bytes_to_copy(), 2 * GIB, "the weights' host copy is still good");
    assert_eq!(out.bytes_total(), 12 * GIB);

    r.set_read_only(weights, false).unwrap();
    assert_eq!(r.plan_swap_out(job).bytes_to_copy(), 12 * GIB, "writable now: copied again");
}

#[test]
fn swap_registry_errors() {
    let mut r = SwapRegistry::new();
    let job = ClientId(1);
    assert_eq!(r.insert(job, 0, GpuId(0), 0, false), Err(SwapError::ZeroSize));
    let a = r.insert(job, 1, GpuId(1), GIB, false).unwrap();
    r.complete_swap_out(&r.plan_swap_out(job));
    assert_eq!(r.plan_swap_in(job, &[GpuId(0)]), Err(SwapError::MissingOrdinal { ordinal: 1, gpus: 1 }));
    r.remove(a).unwrap();
    assert_eq!(r.remove(a), Err(SwapError::UnknownAllocation(a)));
    assert!(r.is_empty());
}

// ----- simulator -----

fn pipeline(n: usize, cpu: u64, gpu: u64, items: u32) -> Vec<JobSpec> {
    (0..n)
        .map(|i| {
            JobSpec::new(
                format!("job{i}"),
                4 * GIB,
                vec![Phase::Cpu(Duration::from_secs(cpu)), Phase::Gpu(Duration::from_secs(gpu))],
                items,
            )
        })
        .collect()
}

#[test]
fn brokering_cpu_heavy_jobs_beats_static_allocation() {
    let pool = GpuPool::uniform("n", 1, 80 * GIB);
    let jobs = pipeline(4, 70, 30, 5);
    let cmp = sim::compare(&pool, &jobs, &[SchedulerConfig::new(Policy::Simple)], &Default::default(), 20_000_000_000)
        .unwrap();
    let (stat, brok) = (&cmp.reports[0], &cmp.reports[1]);
    assert_eq!(stat.items, 20);
    assert_eq!(brok.items, 20);
    assert_eq!(brok.jobs_done, 4);
    // Static runs one job at a time: 4 x 5 x 100 s. Brokered overlaps CPU phases.
    assert_eq!(stat.makespan, Duration::from_secs(2000));
    assert!(brok.items_per_hour() > 2.0 * stat.items_per_hour(), "{cmp}");
    // Brokered: 600 s of GPU work after a first 70 s CPU phase, plus swaps: > 600/700.
    assert!(brok.gpu_busy() > 0.85 && stat.gpu_busy() < 0.31, "{cmp}");
    assert!(brok.bytes_swapped > 0);
    assert!(cmp.to_string().contains("items per hour"));
}

#[test]
fn brokering_gpu_bound_jobs_gains_nothing() {
    let pool = GpuPool::uniform("n", 1, 80 * GIB);
    let jobs: Vec<JobSpec> =
        (0..3).map(|i| JobSpec::new(format!("j{i}"), GIB, vec![Phase::Gpu(Duration::from_secs(60))], 4)).collect();
    let cmp = sim::compare(&pool, &jobs, &[SchedulerConfig::new(Policy::Simple)], &Default::default(), 20_000_000_000)
        .unwrap();
    let (stat, brok) = (&cmp.reports[0], &cmp.reports[1]);
    assert!(brok.items_per_hour() <= stat.items_per_hour() * 1.0001, "{cmp}");
}

#[test]
fn the_simulation_is_deterministic_and_every_policy_finishes() {
    let pool = GpuPool::uniform("n", 2, 80 * GIB);
    let mut jobs = pipeline(6, 40, 20, 3);
    jobs[1].gpus = 2;
    jobs[2].priority = 3;
    jobs[3].arrival = Duration::from_secs(15);
    for policy in Policy::ALL {
        let mut cfg = SimConfig::new(pool.clone(), Mode::Brokered(SchedulerConfig::new(policy)));
        if policy == Policy::Simple {
            // simple grants one GPU per request: the two-GPU job is refused, clearly
            let err = sim::run(&cfg, &jobs).unwrap_err();
            assert!(matches!(err, SimError::Rejected { ref job, .. } if job == "job1"), "{err}");
            continue;
        }
        let a = sim::run(&cfg, &jobs).unwrap();
        let b = sim::run(&cfg, &jobs).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.items, 18);
        cfg.client.release = acb_core::ReleaseMode::Eager;
        assert_eq!(sim::run(&cfg, &jobs).unwrap().items, 18);
    }
}

#[test]
fn a_time_slice_lets_a_waiter_in_during_a_long_gpu_phase() {
    // One job does a 100 s GPU phase; another arrives and waits. With a 10 s quantum the holder
    // is asked to yield, which it does at the end of its phase (its next safe point): the
    // simulator's jobs have no safe point inside a phase, so the wait is the same, but the
    // yield is recorded.
    let pool = GpuPool::uniform("n", 1, 80 * GIB);
    let mut jobs = pipeline(2, 1, 100, 1);
    jobs[1].arrival = Duration::from_secs(5);
    let cfg = SimConfig::new(
        pool,
        Mode::Brokered(SchedulerConfig::new(Policy::Simple).with_quantum(Duration::from_secs(10))),
    );
    let r = sim::run(&cfg, &jobs).unwrap();
    assert_eq!(r.yields, 1);
    assert_eq!(r.items, 2);
}

#[test]
fn bad_jobs_are_refused_with_a_reason() {
    let pool = GpuPool::uniform("n", 1, 80 * GIB);
    let cfg = SimConfig::new(pool.clone(), Mode::Brokered(SchedulerConfig::default()));
    let mut jobs = pipeline(1, 1, 1, 1);
    jobs[0].repeat = 0;
    assert!(matches!(sim::run(&cfg, &jobs), Err(SimError::InvalidJob { reason, .. }) if reason.contains("repeat")));
    let mut jobs = pipeline(1, 1, 1, 1);
    jobs[0].memory_per_gpu = 100 * GIB;
    let err = sim::run(&cfg, &jobs).unwrap_err();
    assert!(err.to_string().contains("largest healthy GPU"), "{err}");
    let mut cfg0 = cfg;
    cfg0.swap_bandwidth = 0;
    assert_eq!(sim::run(&cfg0, &pipeline(1, 1, 1, 1)), Err(SimError::ZeroBandwidth));
}

#[test]
fn three_jobs_sharing_one_gpu_slow_each_other_down() {
    // gpu-sharing packs three 1 GiB jobs on one GPU at once. Each 60 s GPU phase is 60 s of the
    // GPU alone; computing together, each gets a third of it, so all three end at 180 s: the GPU
    // did 180 s of work in 180 s, not 180 s of work in 60 s.
    let pool = GpuPool::uniform("n", 1, 80 * GIB);
    let jobs: Vec<JobSpec> =
        (0..3).map(|i| JobSpec::new(format!("j{i}"), GIB, vec![Phase::Gpu(Duration::from_secs(60))], 1)).collect();
    let cfg = SimConfig::new(pool, Mode::Brokered(SchedulerConfig::new(Policy::GpuSharing)));
    let r = sim::run(&cfg, &jobs).unwrap();
    assert_eq!(r.grants, 3);
    assert_eq!(r.makespan, Duration::from_secs(180));
    assert_eq!(sim::makespan_lower_bound(1, &jobs), Duration::from_secs(180));
    assert!((r.gpu_busy() - 1.0).abs() < 1e-9);
}

#[test]
fn a_job_that_joins_a_shared_gpu_slows_the_one_already_there() {
    // j0 computes 100 s alone on the GPU; j1 arrives at 40 s with 30 s of work. From 40 s both
    // run at half speed: j1 ends at 100 s (30 s of work in 60 s), j0 has 60 - 30 = 30 s left
    // and ends alone at 130 s.
    let pool = GpuPool::uniform("n", 1, 80 * GIB);
    let mut jobs = vec![
        JobSpec::new("j0", GIB, vec![Phase::Gpu(Duration::from_secs(100))], 1),
        JobSpec::new("j1", GIB, vec![Phase::Gpu(Duration::from_secs(30))], 1),
    ];
    jobs[1].arrival = Duration::from_secs(40);
    let cfg = SimConfig::new(pool, Mode::Brokered(SchedulerConfig::new(Policy::GpuSharing)));
    let r = sim::run(&cfg, &jobs).unwrap();
    assert_eq!(r.makespan, Duration::from_secs(130));
    let end_of = |job| r.spans.iter().filter(|s| s.job == job && s.kind == sim::SpanKind::Compute).map(|s| s.end).max();
    assert_eq!(end_of(1), Some(Instant::from_nanos(100_000_000_000)));
}

#[test]
fn a_job_with_no_memory_swaps_nothing_and_asks_for_no_memory() {
    let pool = GpuPool::uniform("n", 1, 80 * GIB);
    let mut jobs = pipeline(3, 5, 1, 3);
    for j in &mut jobs {
        j.memory_per_gpu = 0;
    }
    for policy in Policy::ALL {
        let cfg = SimConfig::new(pool.clone(), Mode::Brokered(SchedulerConfig::new(policy)));
        let r = sim::run(&cfg, &jobs).unwrap_or_else(|e| panic!("{policy:?}: {e:?}"));
        assert_eq!((r.items, r.bytes_swapped), (9, 0), "{policy:?}");
    }
}

#[test]
fn a_grant_latency_keeps_the_gpu_held_and_idle_for_that_long() {
    // Two jobs, one GPU, 1 s GPU phases: the second grant takes 50 ms to reach its job, and so
    // does the first, so the run is 2 x 50 ms longer than without.
    let pool = GpuPool::uniform("n", 1, 80 * GIB);
    let jobs = pipeline(2, 0, 1, 1);
    let mut cfg = SimConfig::new(pool, Mode::Brokered(SchedulerConfig::new(Policy::Simple)));
    let quick = sim::run(&cfg, &jobs).unwrap().makespan;
    cfg.grant_latency = Duration::from_millis(50);
    let slow = sim::run(&cfg, &jobs).unwrap().makespan;
    assert_eq!(slow - quick, Duration::from_millis(100));
}

// ----- fixes found in review -----

#[test]
fn a_kept_lease_is_reused_only_for_a_phase_it_can_serve() {
    use acb_core::Affinity;
    // Kept: a 10 GiB fenced lease on GPU 0.
    let fenced = GpuDemand { gpus: 1, memory_per_gpu: Some(10 * GIB), ..Default::default() };
    let mut m = ClientMachine::new(ClientConfig::default());
    m.begin(fenced.clone(), t(0)).unwrap();
    drain(&mut m);
    m.handle_granted(RequestTag(1), LeaseId(1), vec![GpuId(0)], 10 * GIB, t(1));
    drain(&mut m);
    m.end(t(2)).unwrap();
    drain(&mut m);
    // A whole GPU is more than the fence: give the lease back and ask again.
    m.begin(GpuDemand::gpus(1), t(3)).unwrap();
    assert_eq!(drain(&mut m), vec![Action::SwapOut { lease: LeaseId(1) }, Action::SendRelease { lease: LeaseId(1) }]);
    acked(&mut m, 1, t(4));
    drain(&mut m);
    m.handle_granted(RequestTag(2), LeaseId(2), vec![GpuId(0)], 80 * GIB, t(5));
    drain(&mut m);
    m.end(t(6)).unwrap();
    drain(&mut m);
    // Required elsewhere: not reusable either.
    let elsewhere = GpuDemand { affinity: Affinity::Required(vec![GpuId(1)]), ..GpuDemand::gpus(1) };
    m.begin(elsewhere, t(7)).unwrap();
    assert_eq!(drain(&mut m)[0], Action::SwapOut { lease: LeaseId(2) });
}

#[test]
fn a_stale_grant_that_cannot_serve_the_phase_is_given_back_and_the_wait_goes_on() {
    let mut m = ClientMachine::new(ClientConfig::default());
    m.begin(GpuDemand::gpus(2), t(0)).unwrap();
    drain(&mut m);
    m.handle_granted(RequestTag(1), LeaseId(7), vec![GpuId(0)], 80 * GIB, t(1)); // one GPU, two asked
    assert_eq!(drain(&mut m), vec![Action::SendRelease { lease: LeaseId(7) }]);
    assert_eq!(m.state(), State::Requesting);
    acked(&mut m, 7, t(2)); // the ack of that give-back changes nothing
    assert_eq!(m.state(), State::Requesting);
    m.handle_granted(RequestTag(1), LeaseId(8), vec![GpuId(0), GpuId(1)], 80 * GIB, t(3));
    assert_eq!(drain(&mut m).last(), Some(&Action::Ready { lease: LeaseId(8) }));
}

#[test]
fn nothing_is_sent_while_disconnected() {
    let mut m = ClientMachine::new(ClientConfig::default());
    m.begin(GpuDemand::gpus(1), t(0)).unwrap();
    drain(&mut m);
    m.handle_granted(RequestTag(1), LeaseId(1), vec![GpuId(0)], 80 * GIB, t(1));
    drain(&mut m);
    m.handle_disconnect(t(2));
    m.handle_revoked(LeaseId(1), t(3));
    drain(&mut m);
    m.begin(GpuDemand::gpus(1), t(4)).unwrap();
    assert!(drain(&mut m).is_empty(), "no request into a dead connection");
    m.handle_reconnected(t(5));
    assert_eq!(drain(&mut m), vec![request(2, GpuDemand::gpus(1))]);
}
