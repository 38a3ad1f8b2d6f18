// A stand-in for the control plane's live tail endpoint (GET /v1/workers/{name}/tail, upgraded
// to a WebSocket), for the CLI's tests until isola-control has it. It speaks the endpoint's
// protocol: the bearer token, the filters as query parameters, one JSON event per text frame,
// a close reason when it drops a client, and `{"error":{"code","message"}}` bodies for the
// upgrades it refuses. The integrator replaces it with the real control plane once the
// endpoint lands (see tail.test.ts).
import { createServer, type IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { WebSocketServer, type WebSocket } from "ws";

export interface TailRequest {
  path: string;
  authorization: string | undefined;
  query: URLSearchParams;
}

export interface TailStandIn {
  /** The API URL (http://127.0.0.1:PORT). */
  api: string;
  token: string;
  /** Every upgrade request that reached it, refused or not. */
  requests: TailRequest[];
  /** What to do with each accepted tail: send events, close it. */
  onTail: (conn: WebSocket, req: TailRequest) => void;
  close(): Promise<void>;
}

/** Workers it knows; others get a 404 as the control plane gives one. */
const WORKERS = new Set(["hello", "hello-staging"]);

function refuse(socket: Duplex, status: number, reason: string, code: string, message: string): void {
  const body = JSON.stringify({ error: { code, message } });
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
  );
}

export async function startTailStandIn(token = "test-token"): Promise<TailStandIn> {
  const wss = new WebSocketServer({ noServer: true });
  const http = createServer((req, res) => {
    res.writeHead(404, { "content-type": "application/json" });
    res.end(JSON.stringify({ error: { code: "not_found", message: `no endpoint ${req.method} ${req.url}` } }));
  });
  const standIn: TailStandIn = {
    api: "",
    token,
    requests: [],
    onTail: (conn) => conn.close(1000, "no events"),
    close: async () => {
      for (const c of wss.clients) c.terminate();
      wss.close();
      await new Promise<void>((r) => http.close(() => r()));
    },
  };
  http.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const url = new URL(req.url ?? "/", "http://stand-in");
    const tailReq: TailRequest = { path: url.pathname, authorization: req.headers.authorization, query: url.searchParams };
    standIn.requests.push(tailReq);
    const m = /^\/v1\/workers\/([^/]+)\/tail$/.exec(url.pathname);
    if (!m || req.method !== "GET") return refuse(socket, 404, "Not Found", "not_found", `no endpoint ${req.method} ${url.pathname}`);
    if (req.headers.authorization !== `Bearer ${token}`) return refuse(socket, 401, "Unauthorized", "unauthorized", "missing or invalid bearer token");
    const worker = decodeURIComponent(m[1]!);
    if (!WORKERS.has(worker)) return refuse(socket, 404, "Not Found", "not_found", `no worker named ${worker}`);
    if (url.searchParams.get("search") === "REFUSE") return refuse(socket, 400, "Bad Request", "invalid_request", "search is refused here");
    wss.handleUpgrade(req, socket, head, (conn) => standIn.onTail(conn, tailReq));
  });
  await new Promise<void>((r) => http.listen(0, "127.0.0.1", () => r()));
  const addr = http.address();
  standIn.api = `http://127.0.0.1:${typeof addr === "object" && addr ? addr.port : 0}`;
  return standIn;
}
