// The platform package: scripts/build-edge-package.sh packs ISOLA_EDGE_BIN as
// @isola/edge-linux-x64-gnu; installed into a project, `isola dev` finds the
// binary there with no ISOLA_EDGE_BIN and no isola-edge on PATH.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { CLI, PKG_DIR, Proc, cleanup, freePort, get, poll, tempDir, write } from "./helpers.js";

const EDGE = process.env["ISOLA_EDGE_BIN"];
const skip = EDGE ? false : "ISOLA_EDGE_BIN is not set; build it (cargo build -p isola-edge) and point the variable at it";
const linuxX64 = process.platform === "linux" && process.arch === "x64";

test("the edge platform package: built, packed, installed, found by isola dev", { skip: skip || (!linuxX64 && "linux-x64 only"), timeout: 300_000 }, async () => {
  const dir = tempDir();
  let dev: Proc | undefined;
  try {
    const out = join(dir, "dist-platform");
    const printed = execFileSync("bash", [join(PKG_DIR, "scripts", "build-edge-package.sh"), "--binary", EDGE!, "--out", out], {
      stdio: ["ignore", "pipe", "pipe"],
    })
      .toString()
      .trim()
      .split("\n");
    const tarball = printed[printed.length - 1]!;
    assert.ok(tarball.endsWith(".tgz") && existsSync(tarball), printed.join("\n"));
    const version = (JSON.parse(readFileSync(join(PKG_DIR, "package.json"), "utf8")) as { version: string }).version;
    const manifest = JSON.parse(readFileSync(join(out, "edge-linux-x64-gnu", "package.json"), "utf8")) as Record<string, unknown>;
    assert.equal(manifest["name"], "@isola/edge-linux-x64-gnu");
    assert.equal(manifest["version"], version);
    assert.deepEqual([manifest["os"], manifest["cpu"], manifest["libc"]], [["linux"], ["x64"], ["glibc"]]);

    const app = join(dir, "app");
    write(app, "package.json", JSON.stringify({ name: "app", private: true }));
    write(app, "isola.toml", `name = "platform"\nmain = "index.js"\n`);
    write(app, "index.js", `export default { fetch() { return new Response("from the package") } };\n`);
    execFileSync("npm", ["install", "--no-audit", "--no-fund", "--offline", tarball], { cwd: app, stdio: "pipe", timeout: 240_000 });
    const installed = join(app, "node_modules", "@isola", "edge-linux-x64-gnu", "bin", "isola-edge");
    assert.ok(statSync(installed).mode & 0o111, "the installed binary is executable");

    // Only node's own directory and the system's on PATH; none has isola-edge.
    const path = [dirname(process.execPath), "/usr/bin", "/bin"];
    for (const d of path) assert.equal(existsSync(join(d, "isola-edge")), false, `${d} has an isola-edge`);
    const env: NodeJS.ProcessEnv = { ...process.env, PATH: path.join(":") };
    delete env["ISOLA_EDGE_BIN"];
    const port = await freePort();
    dev = new Proc(process.execPath, [CLI, "dev", "--port", String(port)], { cwd: app, env });
    await dev.waitFor(/Ready on http:/);
    assert.match(dev.output, new RegExp(`Using isola-edge at ${installed.replace(/[.]/g, "\\.")}`));
    const r = await poll(10_000, async () => {
      const res = await get(port, "/");
      return res?.status === 200 ? res : undefined;
    });
    assert.equal(r?.body, "from the package");
  } finally {
    await dev?.stop();
    cleanup(dir);
  }
});
