//! The generated gRPC contract (`proto/pas/v1`) and its descriptor set for reflection.

#![allow(clippy::all, missing_docs)]

/// `pas.v1`: messages and the `Programmer` / `ProgrammerPool` services.
pub mod v1 {
    tonic::include_proto!("pas.v1");
}

/// Encoded `FileDescriptorSet` of `proto/pas/v1`, registered with tonic-reflection so grpcurl can
/// list and describe the services.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pas_descriptor.bin"));
