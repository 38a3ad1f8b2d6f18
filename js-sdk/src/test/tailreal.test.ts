// `isola tail` against the real isola-control and one isola-edge: a deployed worker's
// requests, with their log lines and exceptions, reach the tail from the edge through the
// control plane.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { startCluster, skipWithoutBinaries as skip, type Cluster } from "./cluster.js";
import { CLI, cleanup, get, poll, Proc, runCli, tempDir, write } from "./helpers.js";

test("isola tail streams a deployed worker's events from the edge, filtered at open time", { skip, timeout: 180_000 }, async () => {
  const dir = tempDir();
  let cluster: Cluster | undefined;
  let tail: Proc | undefined;
  let errors: Proc | undefined;
  try {
    cluster = await startCluster(dir);
    const { api, token, edgeHttp } = cluster;
    const env = { ...process.env, XDG_CONFIG_HOME: join(dir, "home"), ISOLA_API_URL: api, ISOLA_API_TOKEN: token };
    const app = join(dir, "app");
    write(app, "isola.toml", `name = "tailed"\nmain = "src/index.ts"\nroutes = ["tailed.test/*"]\n`);
    write(
      app,
      "src/index.ts",
      `export default {
  async fetch(request: Request): Promise<Response> {
    const url = new URL(request.url);
    console.log("hello from", url.pathname);
    if (url.pathname === "/boom") throw new TypeError("it broke");
    return new Response("ok");
  },
};
`,
    );
    const deployed = await runCli(["deploy"], { cwd: app, env });
    assert.equal(deployed.code, 0, deployed.stderr);
    assert.ok(await poll(10_000, async () => ((await get(edgeHttp, "/", "tailed.test"))?.body === "ok" ? true : undefined)));

    tail = new Proc(process.execPath, [CLI, "tail", "--format", "json"], { cwd: app, env });
    errors = new Proc(process.execPath, [CLI, "tail", "--status", "error", "--format", "json"], { cwd: app, env });
    // Requests until the tails are open and see one (they may open after the first).
    const seen = await poll(20_000, async () => {
      await get(edgeHttp, "/first", "tailed.test");
      return /hello from/.test(tail!.output) ? true : undefined;
    });
    assert.ok(seen, `no event reached the tail:\n${tail.output}`);
    await get(edgeHttp, "/boom", "tailed.test");
    await errors.waitFor(/it broke/, 20_000);
    await tail.waitFor(/"outcome":"exception"/, 20_000);
    const events = tail.output
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as { outcome: string; event: { request?: { url: string } }; logs: { message: unknown[] }[] });
    const boom = events.find((e) => e.event.request?.url.endsWith("/boom"));
    assert.ok(boom, tail.output);
    assert.equal(boom.outcome, "exception");
    assert.match(JSON.stringify(boom.logs), /hello from \/boom/);
    // The error-only tail saw no ok request.
    assert.doesNotMatch(errors.output, /"outcome":"ok"/);
  } finally {
    await tail?.stop();
    await errors?.stop();
    await cluster?.stop();
    cleanup(dir);
  }
});
