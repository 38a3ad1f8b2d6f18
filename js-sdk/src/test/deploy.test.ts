// deploy, secrets, versions, rollback end to end with the real isola-control and one
// isola-edge (ISOLA_CONTROL_BIN, ISOLA_EDGE_BIN).
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync, statSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { startCluster, skipWithoutBinaries as skip, type Cluster } from "./cluster.js";
import { cleanup, get, poll, runCli, tempDir, write } from "./helpers.js";

const worker = (tag: string): string => `export default {
  async fetch(request: Request, env: { SECRET?: string }): Promise<Response> {
    return new Response("${tag} " + (env.SECRET ?? "none"));
  },
};
`;

test("deploy end to end: routes, secrets (one and bulk), messages, a 10/90 split, rollback, dry run", { skip, timeout: 240_000 }, async () => {
  const dir = tempDir();
  let cluster: Cluster | undefined;
  try {
    cluster = await startCluster(dir);
    const { api, token, edgeHttp, edgeAdmin } = cluster;

    const home = join(dir, "home");
    const env = { ...process.env, XDG_CONFIG_HOME: home, ISOLA_API_URL: "", ISOLA_API_TOKEN: "" };
    const app = join(dir, "app");
    write(app, "isola.toml", `name = "e2e"\nmain = "src/index.ts"\nroutes = ["e2e.test/*"]\n`);
    write(app, "src/index.ts", worker("v1"));
    const isola = (args: string[], input?: string) => runCli(args, { cwd: app, env, ...(input !== undefined ? { input } : {}) });

    // Not logged in yet: a clear error.
    const anon = await isola(["whoami"]);
    assert.equal(anon.code, 1);
    assert.match(anon.stderr, /isola login/);

    // login stores {api, token} with mode 0600; whoami proves the token works.
    const login = await isola(["login", "--api", api, "--token", token]);
    assert.equal(login.code, 0, login.stderr);
    const credFile = join(home, "isola", "credentials.json");
    assert.equal(statSync(credFile).mode & 0o777, 0o600);
    assert.deepEqual(JSON.parse(readFileSync(credFile, "utf8")), { api, token });
    const who = await isola(["whoami"]);
    assert.equal(who.code, 0, who.stderr);
    assert.match(who.stdout, new RegExp(`API ${api.replace(/[.]/g, "\\.")}`));

    // A wrong token: code: message, the status and a hint.
    const bad = await runCli(["whoami"], { cwd: app, env: { ...env, ISOLA_API_URL: api, ISOLA_API_TOKEN: "wrong" } });
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /unauthorized: .*\(HTTP 401\)/);
    assert.match(bad.stderr, /hint: .*isola login/);

    // An unknown worker: 404 with a hint.
    const other = join(dir, "other");
    write(other, "isola.toml", `name = "nosuch"\nmain = "index.js"\n`);
    const nf = await runCli(["versions", "list"], { cwd: other, env });
    assert.equal(nf.code, 1);
    assert.match(nf.stderr, /not_found: .*\(HTTP 404\)/);
    assert.match(nf.stderr, /hint: check the worker name/);

    // deploy → the edge serves it on its route.
    const d1 = await isola(["deploy"]);
    assert.equal(d1.code, 0, d1.stderr);
    const idA = /version ([0-9a-zA-Z-]+)/.exec(d1.stdout)?.[1];
    assert.ok(idA, d1.stdout);
    assert.match(d1.stdout, /Route e2e\.test\/\*/);
    const served = await poll(30_000, async () => {
      const r = await get(edgeHttp, "/", "e2e.test");
      return r?.status === 200 && r.body === "v1 none" ? r : undefined;
    });
    assert.ok(served, "the edge never served v1");

    // secret put (from stdin) → env.SECRET after propagation (or a redeploy).
    const sp = await isola(["secret", "put", "SECRET"], "s3cr3t\n");
    assert.equal(sp.code, 0, sp.stderr);
    let secretSeen = await poll(10_000, async () => ((await get(edgeHttp, "/", "e2e.test"))?.body === "v1 s3cr3t" ? true : undefined));
    console.log(`secret: ${secretSeen ? "visible by propagation alone" : "needed a redeploy"}`);
    if (!secretSeen) {
      assert.equal((await isola(["deploy"])).code, 0);
      secretSeen = await poll(30_000, async () => ((await get(edgeHttp, "/", "e2e.test"))?.body === "v1 s3cr3t" ? true : undefined));
    }
    assert.ok(secretSeen, "env.SECRET never arrived");
    const sl = await isola(["secret", "list", "--json"]);
    assert.deepEqual((JSON.parse(sl.stdout) as { key: string }[]).map((s) => s.key), ["SECRET"]);

    // A second version, and a second deploy leaves the route alone ("already there").
    write(app, "src/index.ts", worker("v2"));
    const d2 = await isola(["deploy", "--message", "second cut"]);
    assert.equal(d2.code, 0, d2.stderr);
    assert.match(d2.stdout, /already there/);
    assert.match(d2.stdout, /Message: second cut/);
    const idB = /version ([0-9a-zA-Z-]+)/.exec(d2.stdout)?.[1];
    assert.ok(idB && idB !== idA);
    const vl = await isola(["versions", "list", "--json"]);
    const listed = JSON.parse(vl.stdout) as { id: string; message: string | null }[];
    const ids = listed.map((v) => v.id);
    assert.ok(ids.includes(idA) && ids.includes(idB!), vl.stdout);
    assert.equal(listed.find((v) => v.id === idB)?.message, "second cut");
    assert.equal(listed.find((v) => v.id === idA)?.message, null);

    // versions view: the message, modules with sizes, vars' names.
    const vj = await isola(["versions", "view", idB!, "--json"]);
    assert.equal(vj.code, 0, vj.stderr);
    const view = JSON.parse(vj.stdout) as { id: string; message: string; main_module: string; modules: { name: string; size: number }[]; vars: string[] };
    assert.equal(view.id, idB);
    assert.equal(view.message, "second cut");
    assert.equal(view.main_module, "index.js");
    assert.equal(view.modules[0]?.name, "index.js");
    assert.ok((view.modules[0]?.size ?? 0) > 0, vj.stdout);
    assert.deepEqual(view.vars, []);
    const vt = await isola(["versions", "view", idB!]);
    assert.equal(vt.code, 0, vt.stderr);
    assert.match(vt.stdout, /Message: +second cut/);
    assert.match(vt.stdout, /index\.js \(\d+ bytes\)/);
    const vn = await isola(["versions", "view", "no-such-id"]);
    assert.equal(vn.code, 1);
    assert.match(vn.stderr, /not_found: .*\(HTTP 404\)/);

    // 10/90 split: ~90 % v2 over 200 requests.
    const split = await isola(["versions", "deploy", `${idA}@10`, `${idB}@90`, "-y"]);
    assert.equal(split.code, 0, split.stderr);
    const both = await poll(30_000, async () => {
      const r = await get(edgeAdmin, "/admin/state", "admin");
      if (!r) return undefined;
      const state = JSON.parse(r.body) as { workers?: Record<string, { versions?: unknown[] }> };
      return Object.values(state.workers ?? {}).some((w) => (w.versions ?? []).length === 2) ? true : undefined;
    });
    assert.ok(both, "the edge never applied the split");
    let b = 0;
    for (let i = 0; i < 200; i++) {
      const r = await get(edgeHttp, "/", "e2e.test");
      if (r?.body.startsWith("v2")) b++;
      else assert.equal(r?.body, "v1 s3cr3t");
    }
    console.log(`split: ${b}/200 answers from B (90 % asked)`);
    assert.ok(b >= 150 && b <= 196, `${b}/200 from B`);

    // rollback → back to the deployment before (B at 100 %).
    const rb = await isola(["rollback"]);
    assert.equal(rb.code, 0, rb.stderr);
    assert.match(rb.stdout, new RegExp(`${idB}@100%`));
    const dl = JSON.parse((await isola(["deployments", "list", "--json"])).stdout) as { active: boolean; versions: { id: string; percentage: number }[] }[];
    const active = dl.find((d) => d.active);
    assert.deepEqual(active?.versions.map((v) => [v.id, v.percentage]), [[idB, 100]]);
    const onlyB = await poll(30_000, async () => {
      for (let i = 0; i < 30; i++) if (!(await get(edgeHttp, "/", "e2e.test"))?.body.startsWith("v2")) return undefined;
      return true;
    });
    assert.ok(onlyB, "after the rollback some answers still came from A");

    // secret delete
    assert.equal((await isola(["secret", "delete", "SECRET"])).code, 0);
    assert.deepEqual(JSON.parse((await isola(["secret", "list", "--json"])).stdout), []);

    // versions upload stores a version with its message and deploys nothing.
    const vu = await isola(["versions", "upload", "--message", "staged, not live"]);
    assert.equal(vu.code, 0, vu.stderr);
    assert.match(vu.stdout, /Not deployed/);
    const idC = /version ([0-9a-zA-Z-]+)/.exec(vu.stdout)?.[1];
    assert.ok(idC, vu.stdout);
    const staged = JSON.parse((await isola(["versions", "view", idC, "--json"])).stdout) as { message: string };
    assert.equal(staged.message, "staged, not live");
    const stillB = JSON.parse((await isola(["deployments", "list", "--json"])).stdout) as { active: boolean; versions: { id: string }[] }[];
    assert.deepEqual(stillB.find((d) => d.active)?.versions.map((v) => v.id), [idB]);

    // secret bulk: a JSON object from stdin, then a .env file; a bad key sets nothing.
    const bj = await isola(["secret", "bulk", "-"], JSON.stringify({ SECRET: "from-bulk", OTHER: "x" }));
    assert.equal(bj.code, 0, bj.stderr);
    assert.match(bj.stdout, /2 secret\(s\) set on e2e: OTHER, SECRET/);
    const fromBulk = async (): Promise<true | undefined> => ((await get(edgeHttp, "/", "e2e.test"))?.body === "v2 from-bulk" ? true : undefined);
    let bulkSeen = await poll(10_000, fromBulk);
    if (!bulkSeen) {
      assert.equal((await isola(["deploy"])).code, 0);
      bulkSeen = await poll(30_000, fromBulk);
    }
    assert.ok(bulkSeen, "the bulk secret never reached the edge");
    write(app, "prod.env", `# from a file\nA_ONE=1\nexport B_TWO="two words"\n`);
    const be = await isola(["secret", "bulk", "prod.env"]);
    assert.equal(be.code, 0, be.stderr);
    const badBulk = await isola(["secret", "bulk", "-"], JSON.stringify({ C_THREE: "3", "9bad": "x" }));
    assert.equal(badBulk.code, 1);
    assert.match(badBulk.stderr, /invalid_request: .*\(HTTP 400\)/);
    const keys = (JSON.parse((await isola(["secret", "list", "--json"])).stdout) as { key: string }[]).map((s) => s.key);
    assert.deepEqual(keys, ["A_ONE", "B_TWO", "OTHER", "SECRET"]);

    // --dry-run contacts nothing: a listener that counts connections stays at 0.
    let connections = 0;
    const trap = createServer((s) => {
      connections++;
      s.destroy();
    });
    await new Promise<void>((r) => trap.listen(0, "127.0.0.1", () => r()));
    const trapPort = (trap.address() as { port: number }).port;
    const outdir = join(dir, "dry");
    try {
      const dry = await runCli(["deploy", "--dry-run", "--outdir", outdir], {
        cwd: app,
        env: { ...env, ISOLA_API_URL: `http://127.0.0.1:${trapPort}`, ISOLA_API_TOKEN: "x" },
      });
      assert.equal(dry.code, 0, dry.stderr);
      const dry1 = await runCli(["deploy", "--dry-run", "--outdir", join(dir, "dry1")], {
        cwd: app,
        env: { ...env, ISOLA_API_URL: "http://127.0.0.1:1", ISOLA_API_TOKEN: "x" },
      });
      assert.equal(dry1.code, 0, dry1.stderr);
    } finally {
      trap.close();
    }
    assert.equal(connections, 0);
    assert.ok(existsSync(join(outdir, "index.js")));
    assert.deepEqual(JSON.parse(readFileSync(join(outdir, "metadata.json"), "utf8")), { main_module: "index.js", vars: {}, limits: {} });

    // logout forgets the credentials.
    assert.equal((await isola(["logout"])).code, 0);
    assert.equal(existsSync(credFile), false);
  } finally {
    await cluster?.stop();
    cleanup(dir);
  }
});
