// uWebSockets.js baseline servers for scripts/bench.sh, the pattern of its
// examples, run on one Node 16 process (one core; the script pins it):
//
//   node server.js KIND ADDR [--max-seconds N]
//
// | KIND      | what |
// |-----------|------|
// | uws-echo  | every message sent back on its socket (`ws.send`) |
// | uws-chat  | every socket subscribed to one topic; each message published to it (`ws.publish`: every other member) |
//
// Prints `listening on ADDR pid PID` once bound, like bench-server, and
// exits after --max-seconds (default 900). No compression; messages up to
// 16 MiB; backpressure allowed up to 64 MiB per socket (the echo runs keep
// 10 messages of 64 KiB in flight; uWS drops what goes past the limit).
'use strict';

const uWS = require('@based/uws');

const [kind, addr] = process.argv.slice(2);
const at = process.argv.indexOf('--max-seconds');
const maxSeconds = at > 0 ? Number(process.argv[at + 1]) : 900;
const colon = addr ? addr.lastIndexOf(':') : -1;
if (!['uws-echo', 'uws-chat'].includes(kind) || colon < 0) {
  console.error('usage: node server.js uws-echo|uws-chat HOST:PORT [--max-seconds N]');
  process.exit(2);
}
const host = addr.slice(0, colon);
const port = Number(addr.slice(colon + 1));

const handlers = kind === 'uws-echo'
  ? { message: (ws, message, isBinary) => { ws.send(message, isBinary); } }
  : {
      open: (ws) => { ws.subscribe('chat'); },
      message: (ws, message, isBinary) => { ws.publish('chat', message, isBinary); },
    };

uWS.App()
  .ws('/*', {
    compression: uWS.DISABLED,
    maxPayloadLength: 16 * 1024 * 1024,
    maxBackpressure: 64 * 1024 * 1024,
    idleTimeout: 960,
    ...handlers,
  })
  .listen(host, port, (token) => {
    if (!token) {
      console.error(`cannot listen on ${addr}`);
      process.exit(1);
    }
    console.log(`listening on ${host}:${uWS.us_socket_local_port(token)} pid ${process.pid}`);
  });

setTimeout(() => process.exit(0), maxSeconds * 1000).unref();
