// Bench-only Socket.IO fan-out server for `switchboard-bench fanout` (crates/bench).
//
// Clients connect over WebSocket only (/socket.io/?EIO=4&transport=websocket). A subscriber emits
// `sub` with a room name (and an ack); the publisher emits `pub` with a room name and a payload,
// which is broadcast to the room as `pub` (encoded once by socket.io for all its members).
//
//   node server.js --listen 127.0.0.1:9000
"use strict";

const http = require("http");
const { Server } = require("socket.io");

const args = process.argv.slice(2);
const at = args.indexOf("--listen");
const listen = at >= 0 ? args[at + 1] : "127.0.0.1:9000";
const colon = listen.lastIndexOf(":");
const host = listen.slice(0, colon);
const port = Number(listen.slice(colon + 1));

const server = http.createServer((req, res) => {
  res.writeHead(404);
  res.end();
});
const io = new Server(server, {
  transports: ["websocket"],
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
  console.error(`socket.io fan-out server listening on ${host}:${port}`);
});
