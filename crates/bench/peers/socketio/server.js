// Bench-only Socket.IO server for `switchboard-bench fanout` and `switchboard-bench transports`
// (crates/bench).
//
// Clients connect over WebSocket only by default (/socket.io/?EIO=4&transport=websocket);
// `--transports polling` forces Engine.IO's HTTP long-polling instead (what a client falls back to
// where WebSocket does not get through). A subscriber emits `sub` with a room name (and an ack); a
// publisher either emits `pub` with a room name and a payload, or POSTs the payload (JSON) to
// `/publish?room=ROOM`, the way a backend would; either is broadcast to the room as `pub` (encoded
// once by socket.io for all its members).
//
//   node server.js --listen 127.0.0.1:9000 [--transports websocket|polling|websocket,polling]
"use strict";

const http = require("http");
const { Server } = require("socket.io");

const args = process.argv.slice(2);
const arg = (name, fallback) => {
  const at = args.indexOf(name);
  return at >= 0 ? args[at + 1] : fallback;
};
const listen = arg("--listen", "127.0.0.1:9000");
const transports = arg("--transports", "websocket").split(",");
const colon = listen.lastIndexOf(":");
const host = listen.slice(0, colon);
const port = Number(listen.slice(colon + 1));

// Largest publish body read; the bench's payloads are tiny.
const MAX_PUBLISH_BYTES = 64 * 1024;

let io;
// Engine.IO takes the requests under /socket.io/ before this handler sees them.
const server = http.createServer((req, res) => {
  const url = new URL(req.url, "http://bench");
  if (req.method !== "POST" || url.pathname !== "/publish") {
    res.writeHead(404);
    res.end();
    return;
  }
  const chunks = [];
  let size = 0;
  req.on("data", (chunk) => {
    size += chunk.length;
    if (size > MAX_PUBLISH_BYTES) req.destroy();
    else chunks.push(chunk);
  });
  req.on("end", () => {
    let data;
    try {
      data = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch {
      res.writeHead(400);
      res.end("bad JSON\n");
      return;
    }
    io.to(String(url.searchParams.get("room"))).emit("pub", data);
    res.writeHead(200, { "Content-Type": "application/json" });
    res.end("{}");
  });
});
io = new Server(server, {
  transports,
  serveClient: false,
  perMessageDeflate: false,
});

io.on("connection", (socket) => {
  socket.on("sub", (room, ack) => {
    socket.join(String(room));
    if (typeof ack === "function") ack();
  });
  socket.on("pub", (room, data) => {
    io.to(String(room)).emit("pub", data);
  });
});

server.listen({ host, port, backlog: 1024 }, () => {
  console.error(`socket.io server (${transports.join(", ")}) listening on ${host}:${port}`);
});
