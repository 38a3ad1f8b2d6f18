// A real isola-control and one isola-edge on loopback, for the end-to-end tests
// (ISOLA_CONTROL_BIN, ISOLA_EDGE_BIN).
import { execFileSync } from "node:child_process";
import { createSocket } from "node:dgram";
import { appendFileSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Proc } from "./helpers.js";

export const CONTROL = process.env["ISOLA_CONTROL_BIN"];
export const EDGE = process.env["ISOLA_EDGE_BIN"];
export const skipWithoutControl: string | false = CONTROL
  ? false
  : "ISOLA_CONTROL_BIN is not set; build it (cargo build -p isola-control) and point the variable at it";
export const skipWithoutBinaries: string | false =
  CONTROL && EDGE
    ? false
    : "ISOLA_CONTROL_BIN and ISOLA_EDGE_BIN are not set; build them (cargo build -p isola-control -p isola-edge) and point the variables at them";

async function freeUdp(): Promise<number> {
  return new Promise((res) => {
    const s = createSocket("udp4");
    s.bind(0, "127.0.0.1", () => {
      const port = s.address().port;
      s.close(() => res(port));
    });
  });
}

/** The address of `listener` from a JSON `listening` event. */
export async function listening(p: Proc, listener: string): Promise<string> {
  const re = new RegExp(`^.*"message":"listening".*$`, "gm");
  const deadline = Date.now() + 30_000;
  for (;;) {
    for (const line of p.output.match(re) ?? []) {
      try {
        const e = JSON.parse(line) as { fields: { listener?: string; addr?: string } };
        if (e.fields.listener === listener && e.fields.addr) return e.fields.addr.replace(/^https?:\/\//, "");
      } catch {
        // a partial line
      }
    }
    if (Date.now() > deadline) throw new Error(`no listening event for ${listener}:\n${p.output}`);
    await p.waitFor(/listening/, 1000, p.output.length).catch(() => undefined);
  }
}

export interface Cluster {
  /** http://127.0.0.1:PORT of the control plane's API. */
  api: string;
  token: string;
  edgeHttp: number;
  edgeAdmin: number;
  stop(): Promise<void>;
}

export interface Control {
  /** http://127.0.0.1:PORT of the control plane's API. */
  api: string;
  token: string;
  /** Its data folder and QUIC port, for enrolling edges. */
  data: string;
  quic: number;
  proc: Proc;
}

/** Starts isola-control alone (data in `dir`/cp): enough for the API-only commands (kv, secrets). */
export async function startControl(dir: string): Promise<Control> {
  const data = join(dir, "cp");
  execFileSync(CONTROL!, ["init", "--data-dir", data], { stdio: "pipe" });
  const token = readFileSync(join(data, "admin-token"), "utf8").trim();
  const quic = await freeUdp();
  const proc = new Proc(CONTROL!, ["--log-format", "json", "serve", "--data-dir", data, "--api", "127.0.0.1:0", "--quic", `127.0.0.1:${quic}`]);
  try {
    const api = `http://${await listening(proc, "api")}`;
    return { api, token, data, quic, proc };
  } catch (e) {
    await proc.stop();
    throw e;
  }
}

/** Starts isola-control (data in `dir`/cp) and one enrolled isola-edge (`dir`/edge-1). */
export async function startCluster(dir: string): Promise<Cluster> {
  const procs: Proc[] = [];
  const stop = async (): Promise<void> => {
    for (const p of procs.reverse()) await p.stop();
  };
  try {
    const { api, token, data, quic, proc: control } = await startControl(dir);
    procs.push(control);
    const edgeDir = join(dir, "edge-1");
    execFileSync(CONTROL!, ["enroll-edge", "--data-dir", data, "--name", "edge-1", "--out", edgeDir, "--control-address", `127.0.0.1:${quic}`], {
      stdio: "pipe",
    });
    appendFileSync(join(edgeDir, "edge.toml"), `\n[server]\nlisten = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\nthreads = 1\n`);
    const edge = new Proc(EDGE!, ["--log-format", "json", "serve", "--config", join(edgeDir, "edge.toml")]);
    procs.push(edge);
    const edgeHttp = Number((await listening(edge, "http")).split(":").pop());
    const edgeAdmin = Number((await listening(edge, "admin")).split(":").pop());
    return { api, token, edgeHttp, edgeAdmin, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}
