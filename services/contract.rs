//! The generated gRPC contract (`proto/pas/v1`) and its descriptor set for reflection.

#![allow(clippy::all, missing_docs)]

/// `pas.v1`: messages and the `Programmer` / `ProgrammerPool` services.
pub mod v1 {
    tonic::include_proto!("pas.v1");
}

use crate::money::Usd;

/// How many bytes a gRPC call's encode and decode buffers start with (tonic's default is 8 KiB,
/// allocated up front for every call, each way). Our messages are mostly a few hundred bytes or
/// less (an event is ~100 bytes encoded), and a manager holds such a buffer for each running
/// task's programmer stream (it decodes) and each open caller stream (it encodes), for as long
/// as they live. 8 KiB → 1 KiB gave back 1.3 MiB of RSS with 560 tasks running, 1 KiB → 256
/// bytes a further share (BENCHMARKS.md, "Overload", runs 3 and 5). A larger message grows the
/// buffer as it needs (in steps of this size, amortised by `BytesMut`).
pub const CODEC_BUFFER_BYTES: usize = 256;

/// How much a server stream batches into one send when several messages are ready (tonic's
/// default).
const CODEC_YIELD_THRESHOLD: usize = 32 * 1024;

/// The protobuf codec of every `pas.v1` service, client and server (`build.rs` names it): prost's,
/// with [`CODEC_BUFFER_BYTES`] buffers.
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(std::marker::PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <tonic_prost::ProstCodec<T, U> as tonic::codec::Codec>::Encoder;
    type Decoder = <tonic_prost::ProstCodec<T, U> as tonic::codec::Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstCodec::<T, U>::raw_encoder(buffer_settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstCodec::<T, U>::raw_decoder(buffer_settings())
    }
}

fn buffer_settings() -> tonic::codec::BufferSettings {
    tonic::codec::BufferSettings::new(CODEC_BUFFER_BYTES, CODEC_YIELD_THRESHOLD)
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

/// Money on the contract: each cost travels as exact `uint64 …_nanousd` plus a derived
/// `double …_usd` for display. These keep the two together, and read the exact one.
impl v1::TaskResult {
    /// What the task cost, as the ledger counts it: `cost_nanousd`; from a programmer older than
    /// that field (it is 0 there while `cost_usd` is not), the double, converted once. `None`
    /// when that double is not money (negative, NaN, infinite): the cost is unknown.
    pub fn cost(&self) -> Option<Usd> {
        if self.cost_nanousd != 0 || self.cost_usd == 0.0 {
            return Some(Usd::from_contract(self.cost_nanousd));
        }
        Usd::from_usd(self.cost_usd).ok()
    }

    /// Sets `cost_nanousd` and its display twin `cost_usd`.
    pub fn set_cost(&mut self, cost: Usd) {
        self.cost_nanousd = cost.to_contract();
        self.cost_usd = cost.as_usd_f64();
    }
}

impl v1::Attempt {
    /// Sets `cost_nanousd` and its display twin `cost_usd`.
    pub fn set_cost(&mut self, cost: Usd) {
        self.cost_nanousd = cost.to_contract();
        self.cost_usd = cost.as_usd_f64();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_cost_reads_the_integer_and_falls_back_to_an_old_programmers_double() {
        let mut r = v1::TaskResult::default();
        assert_eq!(r.cost(), Some(Usd::ZERO));
        r.set_cost(Usd::from_nanos(12_345_678_901));
        assert_eq!((r.cost_nanousd, r.cost_usd), (12_345_678_901, 12.345678901));
        assert_eq!(r.cost(), Some(Usd::from_nanos(12_345_678_901)));
        // An older programmer sends only the double.
        let old = v1::TaskResult {
            cost_usd: 0.25,
            ..Default::default()
        };
        assert_eq!(old.cost(), Some(Usd::from_nanos(250_000_000)));
        let bad = v1::TaskResult {
            cost_usd: f64::NAN,
            ..Default::default()
        };
        assert_eq!(
            bad.cost(),
            None,
            "unknown: the manager keeps the whole hold"
        );
    }
}
