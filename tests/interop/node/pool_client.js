#!/usr/bin/env node
// A Node client of pas.v1.ProgrammerPool built with @grpc/grpc-js + @grpc/proto-loader straight from
// proto/ (no code generation step), driven by tests/interop_node.rs.
//
// Every stdout line is one JSON object:
//   {"seq": N, "kind": "assigned", "event": {...}}   one TaskEvent, in arrival order
//   {"end": "OK"}                                     the stream ended normally
//   {"error": {"code": "UNAVAILABLE", "details": ...}} the call ended with a gRPC error status
//   {"pool_status": {...}}                            status: the GetPoolStatus response
//
// Usage:
//   node pool_client.js --proto-dir proto --addr HOST:PORT [TLS] dispatch --request JSON
//   node pool_client.js --proto-dir proto --addr HOST:PORT [TLS] status
// Without TLS options the channel is plaintext (h2c). TLS: --cacert CA.pem verifies the server
// (grpc.credentials.createSsl), --cert/--key present a client certificate, and --token TOKEN sends
// `authorization: Bearer TOKEN` with every call (call credentials combined with the channel's).
// Exit status: 0 when the call completed (whatever the task's outcome), 1 on a gRPC error, 2 on usage.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function usage(message) {
  process.stderr.write(`${message}\nusage: pool_client.js --proto-dir DIR --addr HOST:PORT ` +
    '[--timeout S] [--cacert CA.pem [--cert CERT.pem --key KEY.pem] [--token TOKEN]] ' +
    '(dispatch --request JSON | status)\n');
  process.exit(2);
}

// Keeps field names as written in the .proto, 64-bit integers as strings (no precision loss),
// enums as their names, unset fields with their defaults, and the oneof's case in `kind`.
function loadPool(protoDir) {
  const definition = protoLoader.loadSync(path.join(protoDir, 'pas/v1/pool.proto'), {
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
    includeDirs: [protoDir],
  });
  return grpc.loadPackageDefinition(definition).pas.v1;
}

// Plaintext, or TLS with the CA, the optional client certificate and the optional bearer token.
function credentials(values) {
  if (!values.cacert) {
    if (values.cert || values.key || values.token) usage('--cert, --key and --token need --cacert (TLS)');
    return grpc.credentials.createInsecure();
  }
  if (Boolean(values.cert) !== Boolean(values.key)) usage('--cert and --key go together');
  const read = (file) => (file ? fs.readFileSync(file) : null);
  const tls = grpc.credentials.createSsl(read(values.cacert), read(values.key), read(values.cert));
  if (!values.token) return tls;
  const bearer = grpc.credentials.createFromMetadataGenerator((_params, callback) => {
    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${values.token}`);
    callback(null, metadata);
  });
  return grpc.credentials.combineChannelCredentials(tls, bearer);
}

function errorLine(err) {
  const name = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code) || String(err.code);
  return { error: { code: name, details: err.details } };
}

function deadline(timeoutS) {
  return new Date(Date.now() + timeoutS * 1000);
}

function dispatch(client, requestJson, timeoutS) {
  let request;
  try {
    request = JSON.parse(requestJson);
  } catch (e) {
    usage(`--request is not JSON: ${e.message}`);
  }
  return new Promise((resolve) => {
    const call = client.Dispatch(request, { deadline: deadline(timeoutS) });
    let failed = false;
    call.on('data', (event) => {
      emit({ seq: Number(event.seq), kind: event.kind, event });
    });
    call.on('error', (err) => {
      failed = true;
      emit(errorLine(err));
      resolve(1);
    });
    call.on('end', () => {
      // grpc-js emits 'end' after 'error' too; report only the clean end.
      if (!failed) {
        emit({ end: 'OK' });
        resolve(0);
      }
    });
  });
}

function status(client, timeoutS) {
  return new Promise((resolve) => {
    client.GetPoolStatus({}, { deadline: deadline(timeoutS) }, (err, reply) => {
      if (err) {
        emit(errorLine(err));
        resolve(1);
      } else {
        emit({ pool_status: reply });
        resolve(0);
      }
    });
  });
}

async function main() {
  let parsed;
  try {
    parsed = parseArgs({
      allowPositionals: true,
      options: {
        'proto-dir': { type: 'string' },
        addr: { type: 'string' },
        timeout: { type: 'string', default: '120' },
        request: { type: 'string' },
        cacert: { type: 'string' },
        cert: { type: 'string' },
        key: { type: 'string' },
        token: { type: 'string' },
      },
    });
  } catch (e) {
    usage(e.message);
  }
  const { values, positionals } = parsed;
  if (!values['proto-dir'] || !values.addr || positionals.length !== 1) {
    usage('--proto-dir, --addr and one command are required');
  }
  const timeoutS = Number(values.timeout);
  const pas = loadPool(path.resolve(values['proto-dir']));
  const client = new pas.ProgrammerPool(values.addr, credentials(values));
  let code;
  switch (positionals[0]) {
    case 'dispatch':
      if (!values.request) usage('dispatch needs --request JSON');
      code = await dispatch(client, values.request, timeoutS);
      break;
    case 'status':
      code = await status(client, timeoutS);
      break;
    default:
      usage(`unknown command ${positionals[0]}`);
  }
  client.close();
  process.exitCode = code;
}

main();
