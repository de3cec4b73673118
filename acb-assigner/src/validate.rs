//! What the service checks in a request before the driver sees it: job names, affinity lists,
//! token lengths, a session's first message, swap reports. Pure functions of the decoded
//! message, so the fuzz targets (`fuzz/`) run exactly what the daemon runs.

use tonic::Status;

use crate::convert::{invalid, to_status};
use crate::driver::DomainError;
use crate::proto::{self, session_request::Msg};

/// The longest job name accepted: the clients' limit too (`acb_proto::MAX_JOB_BYTES`).
pub const MAX_JOB: usize = acb_proto::MAX_JOB_BYTES;
/// The most GPU ids in an affinity list.
pub const MAX_AFFINITY: usize = 4096;
/// The longest client token worth looking up: longer ones are unknown without a look.
pub const MAX_TOKEN: usize = 128;
/// The most leases a resuming session may claim.
pub const MAX_HELD_LEASES: usize = 64;
/// The most bytes one swap report may count, each way: 1 PiB, far beyond what a client moves
/// between two reports. Garbage above it once made `acb_swap_in_bytes_total` read 2^64 - 2.
pub const MAX_SWAP_REPORT: u64 = 1 << 50;

/// A job name: at most [`MAX_JOB`] bytes, no control characters (`acb_proto::check_job_name`,
/// the rule libacb checks at config time).
pub fn check_job(job: &str) -> Result<(), Status> {
    acb_proto::check_job_name(job).map_err(|e| invalid(e.to_string()))
}

/// A session's first message: it must be a `Hello` with a valid job name, a resume token of at
/// most [`MAX_TOKEN`] bytes and at most [`MAX_HELD_LEASES`] leases claimed.
pub fn hello(first: proto::SessionRequest) -> Result<proto::Hello, Status> {
    let Some(Msg::Hello(hello)) = first.msg else {
        return Err(invalid("the first message of a session must be Hello"));
    };
    check_job(&hello.job)?;
    if hello.resume_token.len() > MAX_TOKEN || hello.held_leases.len() > MAX_HELD_LEASES {
        return Err(invalid(format!(
            "a resume_token of at most {MAX_TOKEN} bytes and at most {MAX_HELD_LEASES} held_leases"
        )));
    }
    Ok(hello)
}

/// A swap report's figures, or why they are not believable (the session goes on; the report is
/// ignored).
pub fn check_swap(s: &proto::SwapReport) -> Result<(u64, u64), String> {
    if s.bytes_in > MAX_SWAP_REPORT || s.bytes_out > MAX_SWAP_REPORT {
        return Err(format!(
            "{} bytes in, {} bytes out: more than {MAX_SWAP_REPORT} (1 PiB) in one report",
            s.bytes_in, s.bytes_out
        ));
    }
    Ok((s.bytes_in, s.bytes_out))
}

/// An `AllocRequest`: its job name, affinity lists of at most [`MAX_AFFINITY`] ids, a token of
/// at most [`MAX_TOKEN`] bytes (a longer one is `UNKNOWN_TOKEN`, as an unknown one is).
pub fn validate_alloc(r: &proto::AllocateRequest) -> Result<(), Status> {
    check_job(&r.job)?;
    if r.required_gpus.len() > MAX_AFFINITY || r.preferred_gpus.len() > MAX_AFFINITY {
        return Err(invalid(format!("at most {MAX_AFFINITY} GPU ids in an affinity list")));
    }
    if r.client_token.len() > MAX_TOKEN {
        return Err(to_status(DomainError::UnknownToken));
    }
    group_of(r)?;
    Ok(())
}

/// The request's group, (name, size), if it names one.
pub fn group_of(r: &proto::AllocateRequest) -> Result<Option<(String, u32)>, Status> {
    if r.group.is_empty() {
        if r.group_size > 1 {
            return Err(invalid("group_size without a group name"));
        }
        return Ok(None);
    }
    if let Err(e) = acb_proto::check_job_name(&r.group) {
        return Err(invalid(format!("group: {e}")));
    }
    if r.group_size == 0 || r.group_size > acb_core::MAX_GROUP_SIZE {
        return Err(invalid(format!(
            "group {:?}: group_size must be 1 to {} (got {})",
            r.group,
            acb_core::MAX_GROUP_SIZE,
            r.group_size
        )));
    }
    Ok(Some((r.group.clone(), r.group_size)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn job_names_are_bounded_and_printable() {
        assert!(check_job("fold-1").is_ok());
        assert!(check_job(&"j".repeat(MAX_JOB)).is_ok());
        assert_eq!(check_job(&"j".repeat(MAX_JOB + 1)).unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(check_job("a\nb").unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn a_session_starts_with_hello() {
        let hello_msg = |job: &str| proto::SessionRequest {
            msg: Some(Msg::Hello(proto::Hello { job: job.into(), ..Default::default() })),
        };
        assert_eq!(hello(hello_msg("fold")).unwrap().job, "fold");
        assert!(hello(hello_msg("bad\u{7}")).is_err());
        assert!(hello(proto::SessionRequest { msg: None }).is_err());
        let phase = proto::SessionRequest { msg: Some(Msg::Phase(proto::PhaseReport::default())) };
        assert_eq!(hello(phase).unwrap_err().code(), tonic::Code::InvalidArgument);
        let resuming = |token: usize, leases: usize| proto::SessionRequest {
            msg: Some(Msg::Hello(proto::Hello {
                job: "fold".into(),
                resume_token: "t".repeat(token),
                held_leases: vec![1; leases],
                ..Default::default()
            })),
        };
        assert!(hello(resuming(MAX_TOKEN, MAX_HELD_LEASES)).is_ok());
        assert!(hello(resuming(MAX_TOKEN + 1, 0)).unwrap_err().message().contains("resume_token"));
        assert!(hello(resuming(0, MAX_HELD_LEASES + 1)).unwrap_err().message().contains("held_leases"));
    }

    #[test]
    fn swap_reports_above_a_pebibyte_are_not_believed() {
        let report = |bytes_in, bytes_out| proto::SwapReport { bytes_in, bytes_out };
        assert_eq!(check_swap(&report(MAX_SWAP_REPORT, 5)), Ok((MAX_SWAP_REPORT, 5)));
        assert!(check_swap(&report(u64::MAX - 1, 0)).unwrap_err().contains("1 PiB"));
        assert!(check_swap(&report(0, MAX_SWAP_REPORT + 1)).is_err());
    }

    #[test]
    fn alloc_requests_have_bounded_lists_and_tokens() {
        let ok = proto::AllocateRequest { job: "j".into(), gpus: 1, ..Default::default() };
        assert!(validate_alloc(&ok).is_ok());
        let long_list = proto::AllocateRequest { preferred_gpus: vec![0; MAX_AFFINITY + 1], ..ok.clone() };
        assert_eq!(validate_alloc(&long_list).unwrap_err().code(), tonic::Code::InvalidArgument);
        let long_token = proto::AllocateRequest { client_token: "t".repeat(MAX_TOKEN + 1), ..ok };
        assert_eq!(validate_alloc(&long_token).unwrap_err().code(), tonic::Code::PermissionDenied);
    }
}
