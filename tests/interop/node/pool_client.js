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
//   node pool_client.js --proto-dir proto --addr HOST:PORT dispatch --request JSON
//   node pool_client.js --proto-dir proto --addr HOST:PORT status
// Exit status: 0 when the call completed (whatever the task's outcome), 1 on a gRPC error, 2 on usage.
'use strict';

const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function usage(message) {
  process.stderr.write(`${message}\nusage: pool_client.js --proto-dir DIR --addr HOST:PORT ` +
    '[--timeout S] (dispatch --request JSON | status)\n');
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
  const client = new pas.ProgrammerPool(values.addr, grpc.credentials.createInsecure());
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
