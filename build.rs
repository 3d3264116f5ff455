//! Compiles `proto/pas/v1/*.proto` with protox (pure Rust, so no system `protoc` is needed),
//! writes the encoded descriptor set for gRPC reflection, and generates tonic/prost code.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/pas/v1/task.proto",
        "proto/pas/v1/programmer.proto",
        "proto/pas/v1/pool.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("pas_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // prost with small per-call buffers (`services/contract.rs`, `LeanCodec`).
        .codec_path("crate::contract::LeanCodec")
        // `prost::Name` on every message: the HTTP/JSON face finds a message's descriptor by its
        // full name (`services/manager/http/json.rs`).
        .compile_fds_with_config(fds, {
            let mut config = prost_build::Config::new();
            config.enable_type_names();
            // A task's events are held by value everywhere (its in-memory log, the relay's
            // locals, every follower's queue): the two large kinds are boxed so a `TaskEvent`
            // is ~130 bytes instead of 512, the size of its largest kind (BENCHMARKS.md,
            // "Overload", run 5: memory per running task).
            config.boxed(".pas.v1.TaskEvent.kind.result");
            config.boxed(".pas.v1.TaskEvent.kind.escalated");
            config
        })?;
    Ok(())
}
