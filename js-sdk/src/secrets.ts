// Reads the files `isola secret bulk` takes: a JSON object or .env lines.

export class SecretsFileError extends Error {
  override name = "SecretsFileError";
}

const KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * `{"KEY": "value", ...}` when the text is a JSON object, else `.env` lines:
 * `KEY=VALUE`, `export KEY=VALUE`, blank lines and `#` comments; a value in
 * matching single or double quotes loses them (double quotes also read `\n`).
 */
export function parseSecretsFile(text: string, source: string): Record<string, string> {
  const trimmed = text.trim();
  if (trimmed.startsWith("{")) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(trimmed);
    } catch (e) {
      throw new SecretsFileError(`${source}: not valid JSON (${(e as Error).message})`);
    }
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
      throw new SecretsFileError(`${source}: expected a JSON object of names to string values`);
    }
    const out: Record<string, string> = {};
    for (const [k, v] of Object.entries(parsed as Record<string, unknown>)) {
      if (typeof v !== "string") throw new SecretsFileError(`${source}: the value of ${k} is not a string`);
      out[k] = v;
    }
    return out;
  }
  const out: Record<string, string> = {};
  const lines = text.split(/\r?\n/);
  lines.forEach((raw, i) => {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) return;
    const body = line.replace(/^export\s+/, "");
    const eq = body.indexOf("=");
    const key = eq < 0 ? body : body.slice(0, eq).trim();
    if (eq < 0 || !KEY.test(key)) {
      throw new SecretsFileError(`${source}:${i + 1}: expected KEY=VALUE`);
    }
    let value = body.slice(eq + 1).trim();
    const q = value[0];
    if ((q === '"' || q === "'") && value.length >= 2 && value.endsWith(q)) {
      value = value.slice(1, -1);
      if (q === '"') value = value.replace(/\\n/g, "\n").replace(/\\"/g, '"').replace(/\\\\/g, "\\");
    }
    out[key] = value;
  });
  return out;
}
