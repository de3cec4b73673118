//! The generated gRPC types and services of `acb.v1`. Never used by the core: conversions live
//! in [`crate::convert`].
#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

tonic::include_proto!("acb.v1");

/// The encoded file descriptor set, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("acb_v1_descriptor");
