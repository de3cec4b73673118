//! The client machine across a restart of the assigner: a session lost while a lease was held
//! is resumed, claiming the lease of a phase still running; a swapped-out one is not claimed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use acb_core::{Action, ClientConfig, ClientMachine, GpuDemand, GpuId, Instant, LeaseId, RequestTag, State};

const GIB: u64 = 1 << 30;

fn t(ms: u64) -> Instant {
    Instant::from_nanos(ms * 1_000_000)
}

fn drain(m: &mut ClientMachine) -> Vec<Action> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

/// A machine in its first GPU phase, on lease 1 (GPU 0).
fn active() -> ClientMachine {
    let mut m = ClientMachine::new(ClientConfig::default());
    m.begin(GpuDemand::gpus(1), t(0)).unwrap();
    drain(&mut m);
    m.handle_granted(RequestTag(1), LeaseId(1), vec![GpuId(0)], 80 * GIB, t(1));
    drain(&mut m);
    m
}

#[test]
fn a_phase_running_across_a_restart_is_claimed_and_ends_normally_on_the_resumed_session() {
    let mut m = active();
    assert!(!m.wants_resume());
    m.handle_disconnect(t(10)); // the assigner restarts mid-phase
    assert!(m.wants_resume(), "a lease was held: resume soon, without waiting for a phase");
    assert_eq!(m.resume_claim(), Some(LeaseId(1)));
    assert_eq!(drain(&mut m), vec![], "the running phase is not disturbed");
    m.handle_reconnected(t(20));
    m.handle_resumed(&[LeaseId(1)], t(20));
    assert!(!m.wants_resume());
    assert_eq!(drain(&mut m), vec![]);
    // The phase ends as on any session: the lease is kept idle and reported, not swapped out.
    m.end(t(30)).unwrap();
    assert_eq!(drain(&mut m), vec![Action::ReportIdle { lease: LeaseId(1) }]);
    assert_eq!(m.state(), State::IdleHeld);
}

#[test]
fn a_session_that_is_not_resumed_leaves_the_phase_orphaned() {
    let mut m = active();
    m.handle_disconnect(t(10));
    m.handle_reconnected(t(20)); // a new session: the assigner forgot the lease
    m.end(t(30)).unwrap();
    assert_eq!(drain(&mut m), vec![Action::SwapOut { lease: LeaseId(1) }]);
    assert_eq!(m.state(), State::Idle);
}

#[test]
fn a_lease_swapped_out_at_the_disconnect_is_not_claimed_and_a_kept_one_is_given_back() {
    let mut m = active();
    m.end(t(5)).unwrap();
    drain(&mut m); // IdleHeld
    m.handle_disconnect(t(10));
    assert_eq!(drain(&mut m), vec![Action::SwapOut { lease: LeaseId(1) }]);
    assert!(m.wants_resume(), "the assigner should hear at once that the lease is free");
    assert_eq!(m.resume_claim(), None);
    m.handle_reconnected(t(20));
    // An assigner that kept it anyway is told to free it.
    m.handle_resumed(&[LeaseId(1)], t(20));
    assert_eq!(drain(&mut m), vec![Action::SendRelease { lease: LeaseId(1) }]);
}

#[test]
fn a_phase_that_ended_while_disconnected_claims_nothing() {
    let mut m = active();
    m.handle_disconnect(t(10));
    m.end(t(15)).unwrap();
    assert_eq!(drain(&mut m), vec![Action::SwapOut { lease: LeaseId(1) }]);
    assert!(m.wants_resume());
    assert_eq!(m.resume_claim(), None);
}
