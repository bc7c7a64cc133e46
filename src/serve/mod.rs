//! The gRPC service. Proto types stop here: [`proto`] is the generated code, and conversions
//! between it and the domain types live in this module only.

/// Generated from `proto/tiering/v1/tiering.proto`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    tonic::include_proto!("tiering.v1");

    /// Encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tiering_descriptor.bin"));
}
