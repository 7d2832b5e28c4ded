// The benchmark contract on Socket.IO's Node server with @socket.io/redis-adapter:
// namespace "/", each socket joins the room named in its handshake auth.room; on
// `publish {room, data}` the server emits `msg` with `data` to that room, cluster-wide.
//
// Usage: node server.js <port> <redis-url>
import { createServer } from "node:http";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";

const [port, redisUrl] = process.argv.slice(2);
const pubClient = createClient({ url: redisUrl });
const subClient = pubClient.duplicate();
await Promise.all([pubClient.connect(), subClient.connect()]);

const httpServer = createServer();
const io = new Server(httpServer, { adapter: createAdapter(pubClient, subClient) });
io.on("connection", (socket) => {
  const room = socket.handshake.auth && socket.handshake.auth.room;
  if (room) socket.join(room);
  socket.on("publish", ({ room, data }) => {
    io.to(room).emit("msg", data);
  });
});
httpServer.listen(Number(port), "127.0.0.1", () => console.log(`listening on ${port}`));
