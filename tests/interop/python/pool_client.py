#!/usr/bin/env python3
"""A Python client of pas.v1.ProgrammerPool, generated from proto/ with grpcio-tools at run time.

It is what a user in another language would write from our .proto files alone, and it is driven by
tests/interop_python.rs. Every line it prints on stdout is one JSON object, so the Rust test can
assert on the exact sequence of what the server sent:

    {"generated": [...]}                              generate: the modules grpc_tools.protoc wrote
    {"event": {...}, "seq": N, "kind": "assigned"}    dispatch / cancel: one TaskEvent, in arrival order
    {"cancel": {...}}                                 cancel: the CancelTask response
    {"end": "OK"}                                     the stream ended normally
    {"error": {"code": "CANCELLED", "details": ...}}  the call ended with a gRPC error status
    {"pool_status": {...}}                            status: the GetPoolStatus response

Usage:
    pool_client.py generate --proto-dir proto --out DIR
    pool_client.py --gen DIR --addr HOST:PORT [TLS] dispatch --request JSON
    pool_client.py --gen DIR --addr HOST:PORT [TLS] cancel --request JSON [--after assigned|output]
    pool_client.py --gen DIR --addr HOST:PORT [TLS] status

Without TLS options the channel is plaintext (h2c). TLS: --cacert CA.pem verifies the server
(grpc.ssl_channel_credentials), --cert/--key present a client certificate, and --token TOKEN sends
`authorization: Bearer TOKEN` with every call (grpc.access_token_call_credentials).

Exit status: 0 when the call(s) completed (whatever the task's outcome), 1 on a gRPC error, 2 on a
usage or generation error.
"""

import argparse
import json
import sys
from pathlib import Path

import grpc


def emit(obj):
    """Prints one JSON line and flushes, so a reader sees events as they arrive."""
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def generate(proto_dir, out):
    """Compiles every .proto under proto_dir into Python modules under out (message + gRPC stubs)."""
    from grpc_tools import protoc
    import grpc_tools

    proto_dir = Path(proto_dir).resolve()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(proto_dir)) for p in proto_dir.rglob("*.proto"))
    if not protos:
        print(f"no .proto files under {proto_dir}", file=sys.stderr)
        return 2
    # grpc_tools ships the well-known types (google/protobuf/*.proto) beside itself.
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    code = protoc.main(args)
    if code != 0:
        print(f"protoc failed with exit code {code}: {' '.join(args)}", file=sys.stderr)
        return 2
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.py"))
    emit({"generated": written})
    return 0


def load_stubs(gen_dir):
    """Imports the generated modules (pas/v1/*_pb2*.py, a namespace package under gen_dir)."""
    sys.path.insert(0, str(Path(gen_dir).resolve()))
    from pas.v1 import pool_pb2, pool_pb2_grpc  # noqa: E402  (generated at test time)

    return pool_pb2, pool_pb2_grpc


def to_dict(message):
    from google.protobuf import json_format

    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )


def emit_event(event):
    emit({"seq": int(event.seq), "kind": event.WhichOneof("kind"), "event": to_dict(event)})


def emit_rpc_error(err):
    emit({"error": {"code": err.code().name, "details": err.details()}})


def build_request(pool_pb2, text):
    from google.protobuf import json_format

    return json_format.Parse(text, pool_pb2.DispatchRequest())


def cmd_dispatch(stub, pool_pb2, args):
    request = build_request(pool_pb2, args.request)
    try:
        for event in stub.Dispatch(request, timeout=args.timeout):
            emit_event(event)
    except grpc.RpcError as err:
        emit_rpc_error(err)
        return 1
    emit({"end": "OK"})
    return 0


def cmd_cancel(stub, pool_pb2, args):
    """Dispatches a task and cancels it through CancelTask once it is running (an `assigned` event,
    or with --after output the first `output` event), then reads the stream to its end."""
    request = build_request(pool_pb2, args.request)
    cancelled = False
    code = 0
    try:
        for event in stub.Dispatch(request, timeout=args.timeout):
            emit_event(event)
            if not cancelled and event.WhichOneof("kind") == args.after:
                cancelled = True
                reply = stub.CancelTask(pool_pb2.CancelTaskRequest(task_id=event.task_id), timeout=30)
                emit({"cancel": to_dict(reply)})
    except grpc.RpcError as err:
        emit_rpc_error(err)
        code = 1
    else:
        emit({"end": "OK"})
    if not cancelled:
        print(f"the stream ended before an {args.after!r} event: nothing was cancelled", file=sys.stderr)
        return 1
    return code


def cmd_status(stub, pool_pb2, args):
    try:
        reply = stub.GetPoolStatus(pool_pb2.GetPoolStatusRequest(), timeout=args.timeout)
    except grpc.RpcError as err:
        emit_rpc_error(err)
        return 1
    emit({"pool_status": to_dict(reply)})
    return 0


def open_channel(args, parser):
    """A plaintext channel, or a TLS channel with the CA, the optional client certificate and the
    optional bearer token as call credentials."""
    if not args.cacert:
        if args.cert or args.key or args.token:
            parser.error("--cert, --key and --token need --cacert (TLS)")
        return grpc.insecure_channel(args.addr)
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")

    def read(path):
        return Path(path).read_bytes() if path else None

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(args.cacert),
        private_key=read(args.key),
        certificate_chain=read(args.cert),
    )
    if args.token:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(args.token)
        )
    return grpc.secure_channel(args.addr, credentials)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gen", help="directory holding the generated modules")
    parser.add_argument("--addr", help="the manager, HOST:PORT")
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline of each call, seconds")
    parser.add_argument("--cacert", help="TLS: the CA certificate (PEM) the server's must be signed by")
    parser.add_argument("--cert", help="TLS: a client certificate (PEM) to present")
    parser.add_argument("--key", help="TLS: the client certificate's private key (PEM)")
    parser.add_argument("--token", help="bearer token sent as `authorization: Bearer TOKEN` (needs TLS)")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--proto-dir", required=True)
    g.add_argument("--out", required=True)
    d = sub.add_parser("dispatch")
    d.add_argument("--request", required=True, help="DispatchRequest as proto JSON")
    c = sub.add_parser("cancel")
    c.add_argument("--request", required=True, help="DispatchRequest as proto JSON")
    c.add_argument("--after", choices=["assigned", "output"], default="assigned")
    sub.add_parser("status")
    args = parser.parse_args(argv)

    if args.command == "generate":
        return generate(args.proto_dir, args.out)
    if not args.gen or not args.addr:
        parser.error("--gen and --addr are required for this command")

    channel = open_channel(args, parser)
    pool_pb2, pool_pb2_grpc = load_stubs(args.gen)
    with channel:
        stub = pool_pb2_grpc.ProgrammerPoolStub(channel)
        handler = {"dispatch": cmd_dispatch, "cancel": cmd_cancel, "status": cmd_status}[args.command]
        return handler(stub, pool_pb2, args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
