'use strict';
// nodeserver: the interop matrix's node HTTP/2 server (tests/interop/servers.py, "node").
//
//   node nodeserver.js --port=N --host=127.0.0.1 --root=DIR --cert=PEM --key=PEM --mode=default
//
// --mode=default: respondWithFile with node's default settings.
// --mode=stingy: SETTINGS max concurrent streams --streams and initial window 16 KiB,
// PADDING_STRATEGY_MAX (every frame padded as much as nghttp2 allows), the file streamed in
// --chunk byte reads, and after every --goaway'th stream of a session: session.goaway() (GOAWAY
// NO_ERROR naming the last stream it took) then session.close() (ends once those streams finish).

const fs = require('node:fs');
const http2 = require('node:http2');
const path = require('node:path');

function options(argv) {
  const out = {};
  for (const arg of argv) {
    const match = /^--([a-z]+)=(.*)$/.exec(arg);
    if (!match) throw new Error(`bad argument ${arg}`);
    out[match[1]] = match[2];
  }
  return out;
}

const opt = options(process.argv.slice(2));
const stingy = opt.mode === 'stingy';
const root = path.resolve(opt.root);
const goawayEvery = Number(opt.goaway || 3);
const chunk = Number(opt.chunk || 4096);

const serverOptions = {
  key: fs.readFileSync(opt.key),
  cert: fs.readFileSync(opt.cert),
  allowHTTP1: false,
};
if (stingy) {
  serverOptions.settings = {
    maxConcurrentStreams: Number(opt.streams || 2),
    initialWindowSize: 16384,
  };
  serverOptions.paddingStrategy = http2.constants.PADDING_STRATEGY_MAX;
}

const server = http2.createSecureServer(serverOptions);
const counts = new WeakMap();

server.on('stream', (stream, headers) => {
  const session = stream.session;
  // A stream the client resets, or one a closing session drops, must not take the server down.
  stream.on('error', (err) => console.error(`stream ${stream.id}: ${err.message}`));
  const name = path.normalize(decodeURIComponent((headers[':path'] || '/').split('?')[0]));
  const file = path.join(root, name);
  let info;
  try {
    info = file.startsWith(root + path.sep) ? fs.statSync(file) : null;
  } catch {
    info = null;
  }
  if (!info || !info.isFile()) {
    stream.respond({ ':status': 404 }, { endStream: true });
    return;
  }
  if (!stingy) {
    stream.respondWithFile(file, { 'content-type': 'video/mp4' });
    return;
  }
  const n = (counts.get(session) || 0) + 1;
  counts.set(session, n);
  stream.respond({
    ':status': 200,
    'content-type': 'video/mp4',
    'content-length': String(info.size),
  });
  const body = fs.createReadStream(file, { highWaterMark: chunk });
  body.on('error', (err) => stream.destroy(err));
  body.pipe(stream);
  if (n % goawayEvery === 0 && !session.closed && !session.destroyed) {
    session.goaway(http2.constants.NGHTTP2_NO_ERROR); // last stream id: the last one taken
    session.close(); // graceful: the streams it took finish, then the connection closes
  }
});
server.on('sessionError', (err) => console.error('session error', err.message));
server.on('session', (session) => {
  session.on('error', (err) => console.error('session error', err.message));
});
server.listen(Number(opt.port), opt.host || '127.0.0.1', () => {
  console.log(`serving ${root} on ${opt.host}:${opt.port} (${opt.mode})`);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => process.exit(0));
}
