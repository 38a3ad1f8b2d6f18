// A stand-in for isola-control's REST API (the endpoints deploy, triggers and secrets call),
// recording each request, for tests of the exact shapes the CLI sends.
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";

export interface Recorded {
  method: string;
  path: string;
  /** JSON bodies parsed; for an upload, `{ metadata, modules }`. */
  body: unknown;
}

export interface FakeApi {
  url: string;
  requests: Recorded[];
  close(): Promise<void>;
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

function send(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

/** Cron expressions containing "bad" are refused the way the server does (400 invalid). */
export async function fakeApi(): Promise<FakeApi> {
  const requests: Recorded[] = [];
  let n = 0;
  const server = createServer((req, res) => {
    void (async () => {
      const raw = await readBody(req);
      const path = (req.url ?? "/").split("?")[0]!;
      const method = req.method ?? "GET";
      let body: unknown = undefined;
      const type = req.headers["content-type"] ?? "";
      if (type.startsWith("multipart/form-data")) {
        const form = await new Request("http://x/", { method: "POST", headers: { "content-type": type }, body: raw }).formData();
        const metadata = JSON.parse(await (form.get("metadata") as Blob).text()) as unknown;
        const modules = [...form.keys()].filter((k) => k !== "metadata");
        body = { metadata, modules };
      } else if (raw.length > 0) {
        body = JSON.parse(raw.toString("utf8")) as unknown;
      }
      requests.push({ method, path, body });
      if (req.headers.authorization !== "Bearer t0ken") return send(res, 401, { error: { code: "unauthorized", message: "bad token" } });
      let m: RegExpExecArray | null;
      if (method === "GET" && path === "/v1/workers") return send(res, 200, { workers: [] });
      if (method === "POST" && (m = /^\/v1\/workers\/([^/]+)\/versions$/.exec(path))) {
        n += 1;
        return send(res, 201, { id: `v${n}`, hash: "h".repeat(64), worker: decodeURIComponent(m[1]!), created_at: 0, main_module: "index.js", modules: [], message: null });
      }
      if (method === "POST" && (m = /^\/v1\/workers\/([^/]+)\/deployments$/.exec(path))) {
        const versions = (body as { versions: { id: string; percentage: number }[] }).versions.map((v) => ({ ...v, hash: "h" }));
        return send(res, 201, { id: n, worker: decodeURIComponent(m[1]!), versions, created_at: 0, rolled_back: false, active: true });
      }
      if (method === "POST" && path === "/v1/routes") return send(res, 201, body);
      if (method === "PUT" && /^\/v1\/workers\/[^/]+\/schedules$/.test(path)) {
        const crons = (body as { crons: string[] }).crons;
        const bad = crons.find((c) => c.includes("bad"));
        if (bad) return send(res, 400, { error: { code: "invalid", message: `cron expression "${bad}" is not valid: expected 5 fields` } });
        return send(res, 200, { crons });
      }
      if (method === "PUT" && (m = /^\/v1\/workers\/[^/]+\/secrets\/([^/]+)$/.exec(path))) {
        return send(res, 200, { key: decodeURIComponent(m[1]!), revision: 7 });
      }
      return send(res, 404, { error: { code: "not_found", message: `no ${method} ${path} in the fake API` } });
    })().catch((e: unknown) => send(res, 500, { error: { code: "fake", message: String(e) } }));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}
