//! The generated gRPC code for `proto/tiering/v1/tiering.proto` (package `tiering.v1`): messages,
//! the `Tiering` server trait and client, and the encoded descriptor set for server reflection.
//! The server ([`crate::serve`]) and the CLI clients both use it from here; conversion between
//! these types and the domain types happens in `serve::convert` only.
//!
//! It also holds the range of `google.protobuf.Timestamp`, a fact of the wire format that the
//! request conversion and the page tokens both check against.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod generated {
    tonic::include_proto!("tiering.v1");
}

pub use generated::*;

/// Encoded descriptor set, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tiering_descriptor.bin"));

/// Proto timestamps are defined for years 0001..=9999 (Unix seconds of 0001-01-01T00:00:00Z);
/// every time the server computes with stays in this range, so differences of times cannot
/// overflow.
pub const MIN_SECONDS: i64 = -62_135_596_800;
/// Unix seconds of 9999-12-31T23:59:59Z, the last valid proto timestamp.
pub const MAX_SECONDS: i64 = 253_402_300_799;

/// The two `google.rpc` messages the server puts in an error's `grpc-status-details-bin`: a
/// [`rpc_status::Status`] whose details hold a [`rpc_status::RequestInfo`] naming the request id.
/// Clients decode them from here too.
pub mod rpc_status {
    /// `google.rpc.Status`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(int32, tag = "1")]
        pub code: i32,
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(message, repeated, tag = "3")]
        pub details: Vec<prost_types::Any>,
    }

    /// `google.rpc.RequestInfo`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RequestInfo {
        #[prost(string, tag = "1")]
        pub request_id: String,
        #[prost(string, tag = "2")]
        pub serving_data: String,
    }
}
