// The user's path: the packed tarball installed into a new project (hono template),
// its bin, a dry-run bundle, the types, and `isola dev` serving the Hono app.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { PKG_DIR, Proc, cleanup, freePort, get, poll, tempDir } from "./helpers.js";

const EDGE = process.env["ISOLA_EDGE_BIN"];
const npm = process.platform === "win32" ? "npm.cmd" : "npm";

test("packed tarball → init --template hono → npm install → dry run, tsc, dev", { timeout: 300_000 }, async () => {
  const dir = tempDir();
  let dev: Proc | undefined;
  try {
    execFileSync(npm, ["pack", "--ignore-scripts", "--pack-destination", dir], { cwd: PKG_DIR, stdio: "pipe" });
    const tarball = readdirSync(dir).find((f) => f.endsWith(".tgz"));
    assert.ok(tarball, "npm pack wrote a tarball");
    const env = { ...process.env, ISOLA_SDK_TARBALL: join(dir, tarball) };
    execFileSync(process.execPath, [join(PKG_DIR, "dist", "cli.js"), "init", "app", "--template", "hono", "-y"], { cwd: dir, env, stdio: "pipe" });
    const app = join(dir, "app");
    try {
      execFileSync(npm, ["install", "--no-audit", "--no-fund", "--prefer-offline"], { cwd: app, stdio: "pipe", timeout: 240_000 });
    } catch (e) {
      const err = e as { stderr?: Buffer };
      assert.fail(`npm install in the new project failed (the npm registry must be reachable):\n${err.stderr?.toString() ?? String(e)}`);
    }
    const bin = join(app, "node_modules", ".bin", "isola");
    assert.ok(existsSync(bin), "the isola bin is linked");
    assert.match(execFileSync(bin, ["--version"], { cwd: app }).toString(), /^\d+\.\d+\.\d+/);
    const dry = execFileSync(bin, ["deploy", "--dry-run", "--outdir", join(dir, "out")], { cwd: app }).toString();
    assert.match(dry, /index\.js/);
    execFileSync(bin, ["types"], { cwd: app, env: { ...process.env, XDG_CONFIG_HOME: dir, ISOLA_API_URL: "", ISOLA_API_TOKEN: "" } });
    execFileSync(process.execPath, [join(app, "node_modules", "typescript", "bin", "tsc"), "-p", app], { stdio: "pipe" });
    if (!EDGE) {
      console.log("ISOLA_EDGE_BIN is not set: skipping the dev part");
      return;
    }
    const port = await freePort();
    dev = new Proc(bin, ["dev", "--port", String(port)], { cwd: app });
    await dev.waitFor(/Ready on http:/);
    const root = await poll(10_000, async () => {
      const r = await get(port, "/");
      return r?.status === 200 ? r : undefined;
    });
    assert.equal(root?.body, "Hello from Hono\n");
    assert.deepEqual(JSON.parse((await get(port, "/json/isola"))?.body ?? "null"), { hello: "isola" });
  } finally {
    await dev?.stop();
    cleanup(dir);
  }
});
