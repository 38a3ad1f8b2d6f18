// An existing wrangler project deploys unchanged: wrangler.toml (routes with a zone, vars,
// keys Isola does not support), TypeScript, an npm dependency, no isola.* file; real
// isola-control and one isola-edge on loopback.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { Client } from "../api.js";
import { startCluster, skipWithoutBinaries as skip, type Cluster } from "./cluster.js";
import { cleanup, get, poll, runCli, tempDir, write } from "./helpers.js";

const WRANGLER_TOML = `name = "legacy-shop"
main = "src/index.ts"
compatibility_date = "2026-11-01"
account_id = "0123456789abcdef0123456789abcdef"
workers_dev = false
routes = [
  { pattern = "shop.legacy.test/api/*", zone_name = "legacy.test" },
]

[vars]
GREETING = "hello from wrangler"
CURRENCY = "EUR"

[observability]
enabled = true
`;

/** A small pure-ESM npm package, as `npm install` leaves it; the workerd condition picks its worker build. */
function vendorPackage(app: string): void {
  const pkg = join(app, "node_modules", "tiny-slugger");
  write(
    pkg,
    "package.json",
    JSON.stringify(
      {
        name: "tiny-slugger",
        version: "1.2.0",
        type: "module",
        exports: { ".": { types: "./index.d.ts", workerd: "./worker.js", node: "./node.js", default: "./worker.js" } },
        sideEffects: false,
      },
      null,
      2,
    ),
  );
  const body = `export function slugify(text) {
  return text.normalize("NFKD").replace(/[\\u0300-\\u036f]/g, "").toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "");
}
`;
  write(pkg, "worker.js", `${body}export const flavor = "workerd";\n`);
  write(pkg, "node.js", `${body}export const flavor = "node";\n`);
  write(pkg, "index.d.ts", `export declare function slugify(text: string): string;\nexport declare const flavor: string;\n`);
}

const SOURCE = `import { slugify, flavor } from "tiny-slugger";
import { price } from "./price";

interface Env {
  GREETING: string;
  CURRENCY: string;
}

export default {
  async fetch(request: Request, env: Env): Promise<Response> {
    const url = new URL(request.url);
    return Response.json({
      greeting: env.GREETING,
      slug: slugify(decodeURIComponent(url.pathname)),
      flavor,
      price: price(1234, env.CURRENCY),
    });
  },
} satisfies ExportedHandler<Env>;
`;

test("an existing wrangler project (wrangler.toml, TypeScript, an npm package) deploys unchanged", { skip, timeout: 180_000 }, async () => {
  const dir = tempDir();
  let cluster: Cluster | undefined;
  try {
    cluster = await startCluster(dir);
    const { api, token, edgeHttp } = cluster;
    const app = join(dir, "legacy-shop");
    write(app, "wrangler.toml", WRANGLER_TOML);
    write(app, "package.json", JSON.stringify({ name: "legacy-shop", private: true, type: "module", dependencies: { "tiny-slugger": "^1.2.0" } }, null, 2));
    write(app, "src/price.ts", `export function price(cents: number, currency: string): string {\n  return (cents / 100).toFixed(2) + " " + currency;\n}\n`);
    write(app, "src/index.ts", SOURCE);
    vendorPackage(app);
    const before = readdirSync(app).sort();
    const env = { ...process.env, XDG_CONFIG_HOME: join(dir, "home"), ISOLA_API_URL: api, ISOLA_API_TOKEN: token };
    const isola = (args: string[]) => runCli(args, { cwd: app, env });

    const d = await isola(["deploy"]);
    assert.equal(d.code, 0, d.stderr);
    // One warning, naming exactly the keys Isola does not support.
    const warnings = d.stderr.split("\n").filter((l) => l.startsWith("warning:"));
    assert.deepEqual(warnings, ["warning: wrangler.toml: Isola ignores keys it does not support: account_id, workers_dev, observability"], d.stderr);
    assert.equal(d.stderr.match(/does not support/g)?.length, 1);
    for (const supported of ["name", "main", "compatibility_date", "routes", "vars", "GREETING", "zone_name"]) {
      assert.doesNotMatch(warnings[0]!, new RegExp(`\\b${supported}\\b`), `${supported} is supported`);
    }
    // Not a terminal: no progress text anywhere.
    assert.doesNotMatch(d.stderr + d.stdout, /Bundling|Uploading|\r/);
    assert.match(d.stdout, /Uploaded legacy-shop: version \S+/);
    assert.match(d.stdout, /Route shop\.legacy\.test\/api\/\*/);

    // The edge serves it on the route's host and path, with the vars and the package's worker build.
    const served = await poll(30_000, async () => {
      const r = await get(edgeHttp, encodeURI("/api/Crème Brûlée"), "shop.legacy.test");
      return r?.status === 200 ? r : undefined;
    });
    assert.ok(served, "the edge never served the wrangler project");
    assert.deepEqual(JSON.parse(served.body), { greeting: "hello from wrangler", slug: "api-creme-brulee", flavor: "workerd", price: "12.34 EUR" });
    const outside = await get(edgeHttp, "/other", "shop.legacy.test");
    assert.notEqual(outside?.status, 200, "a path outside the route was served");

    // Unchanged: no isola.* file, wrangler.toml as written; only build output (.isola) is new.
    assert.equal(readFileSync(join(app, "wrangler.toml"), "utf8"), WRANGLER_TOML);
    assert.deepEqual(readdirSync(app).filter((f) => !before.includes(f)), [".isola"]);
    assert.ok(!existsSync(join(app, "isola.toml")));

    // Cron triggers (wrangler's [triggers]) against the real server's schedules.
    write(app, "wrangler.toml", `${WRANGLER_TOML}\n[triggers]\ncrons = ["*/5 * * * *"]\n`);
    const tr = await isola(["triggers", "deploy", "--json"]);
    assert.equal(tr.code, 0, tr.stderr);
    assert.deepEqual(JSON.parse(tr.stdout), { worker: "legacy-shop", crons: ["*/5 * * * *"] });
    const d2 = await isola(["deploy"]);
    assert.equal(d2.code, 0, d2.stderr);
    assert.match(d2.stdout, /Route shop\.legacy\.test\/api\/\* \(already there\)\nSchedules: \*\/5 \* \* \* \*/);
    write(app, "wrangler.toml", `${WRANGLER_TOML}\n[triggers]\ncrons = ["not a cron"]\n`);
    const bad = await isola(["triggers", "deploy"]);
    assert.equal(bad.code, 1, bad.stdout);
    assert.match(bad.stderr, /invalid_request: crons\[0\]: cron "not a cron": .+\(HTTP 400\)/);
    assert.deepEqual((await new Client({ api, token }).request<{ crons: string[] }>("GET", "/v1/workers/legacy-shop/schedules")).crons, ["*/5 * * * *"]);
  } finally {
    await cluster?.stop();
    cleanup(dir);
  }
});
