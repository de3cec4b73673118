//! Restoring a previous run's leases after a restart, as stories: the restored holder keeps
//! its GPU, a waiter gets it only after the release, and conflicts are refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod harness;

use std::time::Duration;

use acb_core::scheduler::RestoredLease;
use acb_core::{ClientId, Error, GpuId, LeaseId, Policy, YieldReason};
use harness::{GIB, Harness};

fn restored(lease: u64, client: ClientId, gpu: u32, gib: u64, idle: bool) -> RestoredLease {
    RestoredLease { lease: LeaseId(lease), client, gpus: vec![GpuId(gpu)], memory: vec![gib * GIB], priority: 0, idle }
}

#[test]
fn a_restored_busy_lease_keeps_its_gpu_until_released_and_ids_are_not_reused() {
    let mut h = Harness::new(Policy::Simple, &[80]);
    let a = h.client();
    let b = h.client();
    h.sched.restore_lease(restored(7, a, 0, 80, false), h.now).unwrap();
    h.check();
    h.ask(b, 1);
    h.nothing(); // the GPU is A's: B waits
    h.step(Duration::from_secs(5));
    h.nothing();
    h.release(a, LeaseId(7));
    let gb = h.granted(b);
    assert_eq!(gb.gpus, vec![GpuId(0)]);
    assert!(gb.lease.0 > 7, "a restored id is never given out again: {:?}", gb.lease);
}

#[test]
fn a_restored_idle_lease_is_asked_to_yield_to_a_waiter() {
    let mut h = Harness::new(Policy::Simple, &[80]);
    let a = h.client();
    let b = h.client();
    h.sched.restore_lease(restored(3, a, 0, 80, true), h.now).unwrap();
    h.ask(b, 1);
    h.yield_asked(a, LeaseId(3), YieldReason::Contended);
}

#[test]
fn conflicting_or_unknown_restores_are_refused_and_change_nothing() {
    let mut h = Harness::new(Policy::Simple, &[80]);
    let a = h.client();
    let b = h.client();
    h.sched.restore_lease(restored(1, a, 0, 80, false), h.now).unwrap();
    // The same exclusive GPU for another lease.
    assert_eq!(
        h.sched.restore_lease(restored(2, b, 0, 80, false), h.now),
        Err(Error::RestoreConflict { lease: LeaseId(2), gpu: GpuId(0) })
    );
    // The same id again.
    assert_eq!(h.sched.restore_lease(restored(1, b, 0, 80, false), h.now), Err(Error::LeaseExists(LeaseId(1))));
    // A GPU the pool does not have.
    assert_eq!(h.sched.restore_lease(restored(4, b, 9, 80, false), h.now), Err(Error::UnknownGpu(GpuId(9))));
    // A client that is not connected.
    assert_eq!(
        h.sched.restore_lease(restored(5, ClientId(99), 0, 80, false), h.now),
        Err(Error::UnknownClient(ClientId(99)))
    );
    h.check();
    assert_eq!(h.sched.leases().count(), 1);
    assert_eq!(h.sched.leases_of(b).count(), 0);
}

#[test]
fn shared_gpus_take_restored_leases_while_memory_lasts() {
    let mut h = Harness::new(Policy::GpuSharing, &[80]);
    let a = h.client();
    let b = h.client();
    h.sched.restore_lease(restored(1, a, 0, 50, false), h.now).unwrap();
    assert_eq!(
        h.sched.restore_lease(restored(2, b, 0, 40, false), h.now),
        Err(Error::RestoreConflict { lease: LeaseId(2), gpu: GpuId(0) })
    );
    h.sched.restore_lease(restored(2, b, 0, 30, false), h.now).unwrap();
    h.check();
    assert_eq!(h.sched.gpu_state(GpuId(0)).unwrap().granted, 80 * GIB);
}

#[test]
fn skipped_ids_are_never_granted() {
    let mut h = Harness::new(Policy::Simple, &[80]);
    h.sched.skip_lease_ids_to(LeaseId(100));
    let a = h.client();
    h.ask(a, 1);
    assert_eq!(h.granted(a).lease, LeaseId(100));
}

#[test]
fn restored_gang_members_are_linked_again() {
    let mut h = Harness::new(Policy::GpuAffinity, &[80, 80, 80]);
    let (a, b, c) = (h.client(), h.client(), h.client());
    h.sched.restore_lease(restored(1, a, 0, 80, false), h.now).unwrap();
    h.sched.restore_lease(restored(2, b, 1, 80, false), h.now).unwrap();
    h.sched.restore_lease(restored(3, c, 2, 80, false), h.now).unwrap();
    // Lease 9 was not restored (its GPU is gone, say): left out.
    h.sched.restore_gang("run-7", &[LeaseId(1), LeaseId(2), LeaseId(9)]).unwrap();
    assert_eq!(h.sched.gang_of(LeaseId(1)), Some(("run-7", [LeaseId(1), LeaseId(2)].as_slice())));
    assert_eq!(h.sched.gang_of(LeaseId(3)), None);
    // Named twice, or already in a gang: refused, nothing changed.
    assert_eq!(h.sched.restore_gang("x", &[LeaseId(3), LeaseId(3)]), Err(Error::LeaseExists(LeaseId(3))));
    assert_eq!(h.sched.restore_gang("x", &[LeaseId(3), LeaseId(2)]), Err(Error::LeaseExists(LeaseId(2))));
    assert_eq!(h.sched.gang_of(LeaseId(3)), None);
    h.check();
    // A member that goes away ends the other's lease, as for a gang granted in this run.
    h.sched.disconnect(a, h.now).unwrap();
    let out = h.outputs();
    assert!(
        out.iter().any(|o| matches!(o, acb_core::Output::GroupBroken { client, lease, gone, .. }
            if *client == b && *lease == LeaseId(2) && *gone == a)),
        "{out:?}"
    );
    assert!(h.sched.lease(LeaseId(2)).is_none());
    assert!(h.sched.lease(LeaseId(3)).is_some());
}
