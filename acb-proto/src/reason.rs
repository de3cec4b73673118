//! Machine-readable error reasons. Every error status the assigner returns carries a
//! `google.rpc.ErrorInfo` (gRPC's rich error model, in the `grpc-status-details-bin` trailer)
//! with `domain` [`DOMAIN`] and `reason` the name of an [`ErrorReason`]. Any gRPC client can read
//! it; Rust clients use [`reason_of`]. The message text is for people and may change.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub use crate::v1::ErrorReason;

/// The `ErrorInfo.domain` of acb's errors.
pub const DOMAIN: &str = "acb.v1";

/// A status with `code`, `message` and the [`ErrorReason`] in its details.
pub fn status_with_reason(code: Code, message: impl Into<String>, reason: ErrorReason) -> Status {
    let details = ErrorDetails::with_error_info(reason.as_str_name(), DOMAIN, std::collections::HashMap::new());
    Status::with_error_details(code, message, details)
}

/// The reason a status carries, if it comes from an acb assigner and names one this crate knows
/// (a newer assigner's new reason is `None`, as is a status from anything else).
pub fn reason_of(status: &Status) -> Option<ErrorReason> {
    let info = status.get_details_error_info()?;
    if info.domain != DOMAIN {
        return None;
    }
    ErrorReason::from_str_name(&info.reason).filter(|r| *r != ErrorReason::Unspecified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_survives_the_trailer_encoding() {
        let s = status_with_reason(Code::PermissionDenied, "some words", ErrorReason::UnknownToken);
        // What a peer receives: the status rebuilt from its wire headers.
        let mut headers = tonic::codegen::http::HeaderMap::new();
        assert!(s.add_header(&mut headers).is_ok());
        let back = Status::from_header_map(&headers).unwrap_or_else(|| Status::internal("no status in the headers"));
        assert_eq!(back.code(), Code::PermissionDenied);
        assert_eq!(reason_of(&back), Some(ErrorReason::UnknownToken));
        assert_eq!(reason_of(&Status::permission_denied("client token not recognised")), None);
        let foreign = Status::with_error_details(
            Code::NotFound,
            "x",
            ErrorDetails::with_error_info("UNKNOWN_TOKEN", "other.domain", std::collections::HashMap::new()),
        );
        assert_eq!(reason_of(&foreign), None);
    }
}
