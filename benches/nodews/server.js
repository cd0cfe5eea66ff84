// Node `ws` baseline servers with permessage-deflate for scripts/bench.sh,
// the pattern of the package's README, run on one Node 16 process (one
// core; the script pins it, zlib's thread pool included):
//
//   node server.js KIND ADDR [--max-seconds N]
//
// | KIND                | what |
// |---------------------|------|
// | nodews-deflate-echo | every message sent back on its socket (`ws.send`) |
// | nodews-deflate-chat | every message sent to every other open client (`client.send` in a loop over `wss.clients`) |
//
// permessage-deflate with settings comparable to switchboard's
// `Deflate::new()`: no context takeover on either side, messages of 256
// bytes or more compressed, zlib level 1 (the other zlib settings and the
// concurrency limit of 10 are ws's defaults). The options, as passed:
//
//   perMessageDeflate: {
//     serverNoContextTakeover: true,
//     clientNoContextTakeover: true,
//     threshold: 256,
//     zlibDeflateOptions: { level: 1 },
//   }
//
// Prints `listening on ADDR pid PID` once bound, like bench-server, and
// exits after --max-seconds (default 900). Messages up to 16 MiB. ws sets
// TCP_NODELAY on every socket itself.
'use strict';

const { WebSocketServer, WebSocket } = require('ws');

const [kind, addr] = process.argv.slice(2);
const at = process.argv.indexOf('--max-seconds');
const maxSeconds = at > 0 ? Number(process.argv[at + 1]) : 900;
const colon = addr ? addr.lastIndexOf(':') : -1;
if (!['nodews-deflate-echo', 'nodews-deflate-chat'].includes(kind) || colon < 0) {
  console.error('usage: node server.js nodews-deflate-echo|nodews-deflate-chat HOST:PORT [--max-seconds N]');
  process.exit(2);
}
const host = addr.slice(0, colon);
const port = Number(addr.slice(colon + 1));

const wss = new WebSocketServer({
  host,
  port,
  maxPayload: 16 * 1024 * 1024,
  perMessageDeflate: {
    serverNoContextTakeover: true,
    clientNoContextTakeover: true,
    threshold: 256,
    zlibDeflateOptions: { level: 1 },
  },
});

wss.on('connection', (ws) => {
  if (kind === 'nodews-deflate-echo') {
    ws.on('message', (data, isBinary) => {
      ws.send(data, { binary: isBinary });
    });
  } else {
    ws.on('message', (data, isBinary) => {
      for (const client of wss.clients) {
        if (client !== ws && client.readyState === WebSocket.OPEN) {
          client.send(data, { binary: isBinary });
        }
      }
    });
  }
  ws.on('error', () => {});
});

wss.on('listening', () => {
  console.log(`listening on ${host}:${wss.address().port} pid ${process.pid}`);
});
wss.on('error', (err) => {
  console.error(`cannot listen on ${addr}: ${err.message}`);
  process.exit(1);
});

setTimeout(() => process.exit(0), maxSeconds * 1000).unref();
