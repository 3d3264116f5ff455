"""Writes the gRPC request bodies h2load sends (scripts/bench-peers.sh).

A gRPC message on the wire is a 5-byte prefix (0 = not compressed, then the big-endian length)
followed by the serialized protobuf. The messages are built with the protobuf runtime from the
classes protoc generates from proto/pas/v1, so they follow the contract as it is.

Usage: python grpc_body.py PROTO_ROOT OUT_DIR
Writes OUT_DIR/dispatch.bin (pas.v1.DispatchRequest, for the manager) and OUT_DIR/execute.bin
(pas.v1.TaskRequest, for one programmer): a dry run of one file in the workspace `sample`.
"""

import pathlib
import struct
import sys
import tempfile

from grpc_tools import protoc


def frame(message) -> bytes:
    payload = message.SerializeToString()
    return struct.pack(">BI", 0, len(payload)) + payload


def main() -> None:
    proto_root, out_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    with tempfile.TemporaryDirectory() as gen:
        protos = sorted(str(p.relative_to(proto_root)) for p in (proto_root / "pas" / "v1").glob("*.proto"))
        if protoc.main(["protoc", f"-I{proto_root}", f"--python_out={gen}", *protos]) != 0:
            sys.exit("protoc failed")
        sys.path.insert(0, gen)
        from pas.v1 import pool_pb2, programmer_pb2  # noqa: E402 (generated above)

    fields = dict(task_description="bench", files=["src/module.py"], workspace="sample", run_id="bench-peers", dry_run=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dispatch.bin").write_bytes(frame(pool_pb2.DispatchRequest(**fields)))
    (out_dir / "execute.bin").write_bytes(frame(programmer_pb2.TaskRequest(**fields)))


if __name__ == "__main__":
    main()
