//! The generated gRPC contract (`proto/pas/v1`) and its descriptor set for reflection.

#![allow(clippy::all, missing_docs)]

/// `pas.v1`: messages and the `Programmer` / `ProgrammerPool` services.
pub mod v1 {
    tonic::include_proto!("pas.v1");
}

/// Encoded `FileDescriptorSet` of `proto/pas/v1`, registered with tonic-reflection so grpcurl can
/// list and describe the services.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/pas_descriptor.bin"));

/// Lower-case circuit breaker state name, as the JSON routes and tables show it.
pub fn circuit_name(state: v1::CircuitState) -> &'static str {
    match state {
        v1::CircuitState::Closed => "closed",
        v1::CircuitState::Open => "open",
        v1::CircuitState::HalfOpen => "half_open",
        v1::CircuitState::Unspecified => "unknown",
    }
}
