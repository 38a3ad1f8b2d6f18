// The dashboard end to end: a real isola-control and isola-edge on loopback (ISOLA_CONTROL_BIN,
// ISOLA_EDGE_BIN), traffic sent by the test, and the page driven in headless Chromium
// (/usr/bin/chromium, or CHROMIUM). Screenshots go to $ISOLA_ARTIFACTS/dashboard/ (default:
// target/artifacts/dashboard/ in the repository).
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { createSocket } from "node:dgram";
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { request } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const CONTROL = process.env.ISOLA_CONTROL_BIN;
const EDGE = process.env.ISOLA_EDGE_BIN;
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const SHOTS = process.env.ISOLA_ARTIFACTS ? join(process.env.ISOLA_ARTIFACTS, "dashboard") : join(REPO, "target", "artifacts", "dashboard");
const skip = CONTROL && EDGE ? false : "ISOLA_CONTROL_BIN and ISOLA_EDGE_BIN are not set; build them (cargo build -p isola-control -p isola-edge) and point the variables at them";
const HOST = "shop.test";

/** A child process whose output is kept; `stop()` ends its group. */
class Proc {
  constructor(cmd, args) {
    this.output = "";
    this.child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], detached: true });
    const on = (d) => (this.output += d.toString());
    this.child.stdout.on("data", on);
    this.child.stderr.on("data", on);
    this.exited = new Promise((r) => this.child.once("exit", r));
  }

  /** The address a JSON `listening` event gives for `listener`. */
  async listening(listener) {
    return poll(30_000, () => {
      for (const line of this.output.split("\n")) {
        if (!line.includes('"listening"')) continue;
        try {
          const f = JSON.parse(line).fields;
          if (f.listener === listener && f.addr) return f.addr.replace(/^https?:\/\//, "");
        } catch {
          // a partial line
        }
      }
      return undefined;
    }, () => `no listening event for ${listener}:\n${this.output}`);
  }

  async stop() {
    try {
      process.kill(-this.child.pid, "SIGTERM");
    } catch {
      return;
    }
    const t = setTimeout(() => {
      try {
        process.kill(-this.child.pid, "SIGKILL");
      } catch {
        // gone
      }
    }, 3000);
    await this.exited;
    clearTimeout(t);
  }
}

/** Calls `f` until it returns something other than undefined, for at most `ms`. */
async function poll(ms, f, what = () => "condition") {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function freeUdp() {
  return new Promise((res) => {
    const s = createSocket("udp4");
    s.bind(0, "127.0.0.1", () => {
      const port = s.address().port;
      s.close(() => res(port));
    });
  });
}

/** GET `path` on the edge with Host `shop.test`: the body, or undefined on a refused connection. */
function edgeGet(port, path) {
  return new Promise((res) => {
    const req = request({ host: "127.0.0.1", port, path, headers: { host: HOST } }, (r) => {
      let body = "";
      r.on("data", (d) => (body += d));
      r.on("end", () => res({ status: r.statusCode, body }));
    });
    req.on("error", () => res(undefined));
    req.end();
  });
}

async function api(base, token, method, path, body) {
  const res = await fetch(base + path, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body && !(body instanceof FormData) ? { "content-type": "application/json" } : {}) },
    body: body instanceof FormData ? body : body ? JSON.stringify(body) : undefined,
  });
  const json = await res.json();
  assert.ok(res.ok, `${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

async function upload(base, token, text) {
  const form = new FormData();
  form.append("metadata", JSON.stringify({ main_module: "worker.js", message: `answers ${text}` }));
  const code = `export default {
  async fetch(request) {
    console.log("served", new URL(request.url).pathname, "by ${text}");
    return new Response("${text}");
  },
};
`;
  form.append("worker.js", new Blob([code], { type: "application/javascript+module" }), "worker.js");
  return api(base, token, "POST", "/v1/workers/shop/versions", form);
}

async function startCluster(dir) {
  const data = join(dir, "cp");
  execFileSync(CONTROL, ["init", "--data-dir", data], { stdio: "pipe" });
  const token = readFileSync(join(data, "admin-token"), "utf8").trim();
  const quic = await freeUdp();
  const procs = [];
  const stop = async () => {
    for (const p of procs.reverse()) await p.stop();
  };
  try {
    const control = new Proc(CONTROL, ["--log-format", "json", "serve", "--data-dir", data, "--api", "127.0.0.1:0", "--quic", `127.0.0.1:${quic}`]);
    procs.push(control);
    const base = `http://${await control.listening("api")}`;
    const edgeDir = join(dir, "edge-1");
    execFileSync(CONTROL, ["enroll-edge", "--data-dir", data, "--name", "edge-1", "--out", edgeDir, "--control-address", `127.0.0.1:${quic}`], { stdio: "pipe" });
    appendFileSync(join(edgeDir, "edge.toml"), `\n[server]\nlisten = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\nthreads = 1\n`);
    const edge = new Proc(EDGE, ["--log-format", "json", "serve", "--config", join(edgeDir, "edge.toml")]);
    procs.push(edge);
    const edgeHttp = Number((await edge.listening("http")).split(":").pop());
    return { base, token, edgeHttp, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

async function signIn(page, base, token) {
  await page.goto(`${base}/`);
  await page.getByLabel("API token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
}

test("the dashboard shows a worker's traffic, deploys a split, rolls back and tails, in Chromium", { skip, timeout: 300_000 }, async () => {
  mkdirSync(SHOTS, { recursive: true });
  const dir = mkdtempSync(join(tmpdir(), "isola-dash-"));
  const cluster = await startCluster(dir);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking"],
  });
  try {
    const { base, token, edgeHttp } = cluster;
    const v1 = await upload(base, token, "v1");
    const v2 = await upload(base, token, "v2");
    await api(base, token, "POST", "/v1/workers/shop/deployments", { versions: [{ id: v1.id, percentage: 100 }] });
    await api(base, token, "POST", "/v1/routes", { pattern: `${HOST}/*`, worker: "shop" });

    // Traffic: every answer the worker gave is one request the chart must count.
    let sent = 0;
    await poll(30_000, async () => ((await edgeGet(edgeHttp, "/probe"))?.body === "v1" ? true : undefined), () => "the edge to serve v1");
    sent++;
    const N = 25;
    for (let i = 0; i < N; i++) {
      const r = await edgeGet(edgeHttp, `/r${i}`);
      assert.equal(r?.body, "v1");
      sent++;
    }

    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    const cspViolations = [];
    page.on("console", (m) => {
      if (/Content Security Policy/i.test(m.text())) cspViolations.push(m.text());
    });
    page.on("dialog", (d) => void d.accept());

    // Sign in: the worker list.
    await page.goto(`${base}/`);
    await page.screenshot({ path: join(SHOTS, "signin.png") });
    await signIn(page, base, token);
    const link = page.getByRole("link", { name: "shop" });
    await link.waitFor();
    await page.getByRole("link", { name: "Fleet" }).waitFor();
    await poll(30_000, async () => {
      const t = await page.getByTestId("requests-24h-shop").textContent();
      if (t === String(sent)) return true;
      await page.reload();
      await link.waitFor();
      return undefined;
    }, () => `the worker list to count ${sent} requests`);
    await page.screenshot({ path: join(SHOTS, "workers.png"), fullPage: true });

    // The worker's page: the request chart's total is what was sent.
    await link.click();
    await page.getByRole("heading", { name: "shop", level: 1 }).waitFor();
    const total = page.getByTestId("requests-total");
    await poll(30_000, async () => {
      if ((await total.textContent().catch(() => null)) === `${sent} requests in range`) return true;
      await page.getByRole("button", { name: "Refresh" }).click();
      return undefined;
    }, () => `the chart's total to read ${sent}`);
    assert.match(await page.getByTestId("requests-chart").textContent(), new RegExp(`all: ${sent} requests`));
    await page.getByRole("button", { name: "Deploy split" }).waitFor();
    await page.screenshot({ path: join(SHOTS, "worker.png"), fullPage: true });
    // Every control has a label.
    const unlabeled = await page.evaluate(() =>
      [...document.querySelectorAll("input, select, button")].filter((e) => !(e.labels?.length || e.getAttribute("aria-label") || e.textContent.trim())).map((e) => e.outerHTML),
    );
    assert.deepEqual(unlabeled, []);

    // A 50/50 split from the page: both versions answer.
    await page.locator("#split-a").selectOption(v1.id);
    await page.locator("#split-b").selectOption(v2.id);
    await page.locator("#split-pct").fill("50");
    await page.getByRole("button", { name: "Deploy split" }).click();
    await page.getByText(/^Deployed version .* at 50% and version .* at 50%/).waitFor();
    const seen = new Set();
    await poll(30_000, async () => {
      const r = await edgeGet(edgeHttp, "/split");
      if (r) seen.add(r.body);
      return seen.has("v1") && seen.has("v2") ? true : undefined;
    }, () => `both versions to answer (seen ${[...seen]})`);
    assert.deepEqual([...seen].sort(), ["v1", "v2"]);

    // Rollback from the page (confirmed): v1 alone again.
    await page.getByRole("button", { name: "Roll back" }).click();
    await page.getByText(/^Rolled back: version .* at 100% is active\./).waitFor();
    await page.getByTestId("active-deployment").filter({ hasText: `Active deployment: version ${v1.id.slice(0, 8)} at 100%` }).waitFor();
    let run = 0;
    await poll(30_000, async () => {
      const r = await edgeGet(edgeHttp, "/after-rollback");
      run = r?.body === "v1" ? run + 1 : 0;
      return run >= 20 ? true : undefined;
    }, () => "20 answers in a row from v1 after the rollback");

    // The live tail: a request's log line shows within 2 s; pausing holds lines.
    await page.getByRole("button", { name: "Start" }).click();
    await page.getByTestId("tail-state").getByText("Live: connected.").waitFor();
    const lines = page.getByTestId("tail-lines");
    const t0 = Date.now();
    await edgeGet(edgeHttp, "/tailed-1");
    await lines.getByText("(log) served /tailed-1 by v1").waitFor({ timeout: 2000 });
    const tailMs = Date.now() - t0;
    console.log(`tail line shown ${tailMs} ms after the request was sent`);
    await page.getByRole("button", { name: "Pause" }).click();
    await edgeGet(edgeHttp, "/tailed-2");
    await page.getByTestId("tail-state").getByText("Paused: 1 event(s) held.").waitFor({ timeout: 10_000 });
    assert.equal(await lines.getByText("served /tailed-2").count(), 0);
    await page.getByRole("button", { name: "Resume" }).click();
    await lines.getByText("(log) served /tailed-2 by v1").waitFor();
    await page.screenshot({ path: join(SHOTS, "worker-tail.png"), fullPage: true });

    // Invocation logs search.
    await page.locator("#logs-search").fill("/tailed-1");
    await page.getByRole("button", { name: "Search", exact: true }).click();
    await poll(30_000, async () => {
      if (await page.locator("#logs table").getByText("served /tailed-1 by v1").count()) return true;
      await page.getByRole("button", { name: "Search", exact: true }).click();
      return undefined;
    }, () => "the logs search to find /tailed-1");

    // The fleet page (admin).
    await page.getByRole("link", { name: "Fleet" }).click();
    await page.locator("#edges table").getByText("edge-1").waitFor();
    await page.screenshot({ path: join(SHOTS, "fleet.png"), fullPage: true });
    assert.deepEqual(cspViolations, []);

    // Phone width.
    const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true });
    const small = await phone.newPage();
    await signIn(small, base, token);
    await small.getByRole("link", { name: "shop" }).click();
    await small.getByTestId("requests-total").waitFor();
    await small.screenshot({ path: join(SHOTS, "worker-phone.png"), fullPage: true });
    const width = await small.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 390, `the phone page scrolls sideways (${width} px wide)`);

    // Another account sees none of this one's workers, and no fleet.
    const other = await api(base, token, "POST", "/v1/accounts", { name: "other" });
    const otherCtx = await browser.newContext();
    const otherPage = await otherCtx.newPage();
    await signIn(otherPage, base, other.token);
    await otherPage.getByText("No workers yet").waitFor();
    assert.equal(await otherPage.getByRole("link", { name: "Fleet" }).count(), 0);

    // A bad token: a clear error, and nothing stored.
    const bad = await browser.newContext();
    const badPage = await bad.newPage();
    // By keyboard: the token field has the focus, Enter signs in.
    await badPage.goto(`${base}/`);
    await badPage.keyboard.type("isola_not-a-token");
    await badPage.keyboard.press("Enter");
    await badPage.getByRole("alert").getByText("This token was not accepted by the control plane (401)").waitFor();
    assert.equal(await badPage.evaluate(() => sessionStorage.length), 0);
    await badPage.screenshot({ path: join(SHOTS, "bad-token.png") });
  } finally {
    await browser.close();
    await cluster.stop();
    rmSync(dir, { recursive: true, force: true });
  }
});
