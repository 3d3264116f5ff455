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

/// Lower-case task state name (`succeeded`, `timed_out`, …; `unknown` for an unset or unknown
/// value): the one name JSON output, logs, span attributes and metric labels all use.
pub fn state_name(state: i32) -> &'static str {
    match v1::TaskState::try_from(state).unwrap_or(v1::TaskState::Unspecified) {
        v1::TaskState::Succeeded => "succeeded",
        v1::TaskState::Failed => "failed",
        v1::TaskState::Cancelled => "cancelled",
        v1::TaskState::TimedOut => "timed_out",
        v1::TaskState::Queued => "queued",
        v1::TaskState::Running => "running",
        v1::TaskState::Unspecified => "unknown",
    }
}

/// Lower-case error class name (`none`, `rate_limit`, `edit_failed`, …; `unknown` for a value
/// this build does not know), as [`state_name`] is for states.
pub fn error_class_name(class: i32) -> String {
    let Ok(class) = v1::ErrorClass::try_from(class) else {
        return "unknown".into();
    };
    let name = class.as_str_name();
    name.strip_prefix("ERROR_CLASS_")
        .unwrap_or(name)
        .to_ascii_lowercase()
}

/// Lower-case circuit breaker state name, as the JSON routes and tables show it.
pub fn circuit_name(state: v1::CircuitState) -> &'static str {
    match state {
        v1::CircuitState::Closed => "closed",
        v1::CircuitState::Open => "open",
        v1::CircuitState::HalfOpen => "half_open",
        v1::CircuitState::Unspecified => "unknown",
    }
}
