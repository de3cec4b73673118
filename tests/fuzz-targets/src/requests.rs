//! The daemon's request decoding and validation: the bytes as each request message of
//! `acb.v1.Assigner` (prost), then the checks `AssignerService` runs before its driver sees a
//! request (`acb_assigner::validate`).

use std::fmt::Debug;

use acb_assigner::validate;
use acb_proto::v1 as proto;
use prost::Message;

/// Decodes `data` as a `SessionRequest` (as a session's first message, and a swap report as a
/// later one), an `AllocateRequest`, a `ReleaseRequest`, a `StatusRequest` and a `WatchRequest`,
/// validating the first two as the daemon does. Accepted: a `Hello` or an `AllocateRequest`
/// passed validation.
pub fn requests(data: &[u8]) -> bool {
    let mut accepted = false;
    if let Some(message) = decode::<proto::SessionRequest>(data) {
        if let Some(proto::session_request::Msg::Swap(report)) = &message.msg
            && let Ok((bytes_in, bytes_out)) = validate::check_swap(report)
        {
            assert!(bytes_in.max(bytes_out) <= validate::MAX_SWAP_REPORT, "an unbelievable swap report passed");
        }
        accepted |= validate::hello(message).is_ok();
    }
    if let Some(alloc) = decode::<proto::AllocateRequest>(data) {
        accepted |= validate::validate_alloc(&alloc).is_ok();
    }
    if let Some(release) = decode::<proto::ReleaseRequest>(data) {
        assert!(release.encoded_len() <= data.len(), "a release grew when re-encoded");
    }
    decode::<proto::StatusRequest>(data);
    decode::<proto::WatchRequest>(data);
    accepted
}

/// Decodes a message and checks that encoding it again gives the same message back.
fn decode<M: Message + Default + PartialEq + Debug>(data: &[u8]) -> Option<M> {
    let m = M::decode(data).ok()?;
    let again = M::decode(m.encode_to_vec().as_slice());
    assert_eq!(again.as_ref().ok(), Some(&m), "a message changed when encoded and decoded again");
    Some(m)
}
