//! What the service checks in a request before the driver sees it: job names, affinity lists,
//! token lengths, a session's first message. Pure functions of the decoded message, so the fuzz
//! targets (`fuzz/`) run exactly what the daemon runs.

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

/// A job name: at most [`MAX_JOB`] bytes, no control characters (`acb_proto::check_job_name`,
/// the rule libacb checks at config time).
pub fn check_job(job: &str) -> Result<(), Status> {
    acb_proto::check_job_name(job).map_err(|e| invalid(e.to_string()))
}

/// A session's first message: it must be a `Hello` with a valid job name.
pub fn hello(first: proto::SessionRequest) -> Result<proto::Hello, Status> {
    let Some(Msg::Hello(hello)) = first.msg else {
        return Err(invalid("the first message of a session must be Hello"));
    };
    check_job(&hello.job)?;
    Ok(hello)
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
    Ok(())
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
