// `isola init`: a new worker project.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export type Template = "hello" | "scheduled" | "hono";
export const TEMPLATES: Template[] = ["hello", "scheduled", "hono"];

export interface InitOptions {
  dir: string;
  template: Template;
  ts: boolean;
  /** Overwrite nothing unless true; without it existing files are an error. */
  force?: boolean;
}

function ownVersion(): string {
  const pkg = join(dirname(fileURLToPath(import.meta.url)), "..", "package.json");
  try {
    return (JSON.parse(readFileSync(pkg, "utf8")) as { version?: string }).version ?? "latest";
  } catch {
    return "latest";
  }
}

function workerName(dir: string): string {
  const name = basename(resolve(dir))
    .toLowerCase()
    .replace(/[^a-z0-9_-]+/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, 40);
  return name || "worker";
}

function source(template: Template, ts: boolean): string {
  const envType = ts ? "\n\nexport interface Env {\n  GREETING: string;\n}\n" : "\n";
  const sig = ts ? "(request: Request, env: Env, ctx: ExecutionContext): Promise<Response>" : "(request, env, ctx)";
  const satisfies = ts ? " satisfies ExportedHandler<Env>" : "";
  if (template === "hono") {
    const generic = ts ? "<{ Bindings: { GREETING: string } }>" : "";
    return `// A Hono app as an Isola worker (npm install first: the bundle includes hono).
import { Hono } from "hono";

const app = new Hono${generic}();

app.get("/", (c) => c.text(\`\${c.env.GREETING} from Hono\\n\`));
app.get("/json/:name", (c) => c.json({ hello: c.req.param("name") }));

export default app;
`;
  }
  if (template === "scheduled") {
    const ssig = ts ? "(controller: ScheduledController, env: Env, ctx: ExecutionContext): Promise<void>" : "(controller, env, ctx)";
    return `// A worker with a fetch handler and a scheduled (cron) handler.
// \`isola dev --test-scheduled\`, then GET /__scheduled?cron=*/5+*+*+*+* runs it locally.${envType}
export default {
  async fetch${sig} {
    return new Response(\`\${env.GREETING} from \${new URL(request.url).pathname}\\n\`);
  },

  async scheduled${ssig} {
    console.log("cron fired", controller.cron, controller.scheduledTime);
  },
}${satisfies};
`;
  }
  return `// An Isola worker: Cloudflare-Workers-style module syntax.${envType}
export default {
  async fetch${sig} {
    const url = new URL(request.url);
    return new Response(\`\${env.GREETING} from \${url.pathname}\\n\`);
  },
}${satisfies};
`;
}

/** Writes the project; returns the files written (relative). */
export function init(o: InitOptions): string[] {
  const dir = resolve(o.dir);
  const name = workerName(dir);
  const ext = o.ts ? "ts" : "js";
  const localTarball = process.env["ISOLA_SDK_TARBALL"];
  const files: Record<string, string> = {
    "isola.toml": `name = "${name}"
main = "src/index.${ext}"
compatibility_date = "${new Date().toISOString().slice(0, 10)}"
# routes = ["${name}.example.com/*"]
${o.template === "scheduled" ? '\n# `isola deploy` (or `isola triggers deploy`) applies these; an empty list clears them.\n[triggers]\ncrons = ["*/5 * * * *"]\n' : ""}
[vars]
GREETING = "Hello"

# [limits]
# cpu_ms = 50
# memory_mb = 128
`,
    [`src/index.${ext}`]: source(o.template, o.ts),
    "package.json":
      JSON.stringify(
        {
          name,
          version: "0.0.0",
          private: true,
          type: "module",
          ...(o.template === "hono" ? { dependencies: { hono: "^4.13.19" } } : {}),
          scripts: { dev: "isola dev", deploy: "isola deploy", types: "isola types" },
          devDependencies: {
            isola: localTarball ? `file:${resolve(localTarball)}` : `^${ownVersion()}`,
            ...(o.ts ? { typescript: "^5.9.3" } : {}),
          },
        },
        null,
        2,
      ) + "\n",
    ".gitignore": "node_modules/\n.isola/\n.dev.vars*\ndist/\n",
  };
  if (o.ts) {
    files["tsconfig.json"] =
      JSON.stringify(
        {
          compilerOptions: {
            target: "ES2022",
            module: "ES2022",
            moduleResolution: "Bundler",
            lib: ["ES2022", "WebWorker"],
            types: ["isola"],
            strict: true,
            noEmit: true,
            skipLibCheck: true,
          },
          include: ["src/**/*.ts", "worker-configuration.d.ts"],
        },
        null,
        2,
      ) + "\n";
  }
  const existing = Object.keys(files).filter((f) => existsSync(join(dir, f)));
  if (existing.length > 0 && !o.force) {
    throw new Error(`${dir} already has ${existing.join(", ")}; pick an empty folder (or pass --force to overwrite)`);
  }
  for (const [f, text] of Object.entries(files)) {
    const p = join(dir, f);
    mkdirSync(dirname(p), { recursive: true });
    writeFileSync(p, text);
  }
  return Object.keys(files);
}
