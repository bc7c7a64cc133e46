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
