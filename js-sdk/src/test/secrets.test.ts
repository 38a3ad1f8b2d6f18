import { test } from "node:test";
import assert from "node:assert/strict";
import { parseSecretsFile, SecretsFileError } from "../secrets.js";

test("secret files: a JSON object", () => {
  assert.deepEqual(parseSecretsFile(' {"A": "1", "B_2": "two words"}\n', "s.json"), { A: "1", B_2: "two words" });
  assert.throws(() => parseSecretsFile('{"A": 1}', "s.json"), /value of A is not a string/);
  assert.throws(() => parseSecretsFile("{nope", "s.json"), SecretsFileError);
});

test("secret files: .env lines", () => {
  const text = [
    "# a comment",
    "",
    "PLAIN=abc=def",
    "export EXPORTED = spaced ",
    'DOUBLE="line one\\nline two"',
    "SINGLE='kept \\n as is'",
    "EMPTY=",
  ].join("\n");
  assert.deepEqual(parseSecretsFile(text, ".env"), {
    PLAIN: "abc=def",
    EXPORTED: "spaced",
    DOUBLE: "line one\nline two",
    SINGLE: "kept \\n as is",
    EMPTY: "",
  });
  assert.throws(() => parseSecretsFile("A=1\nno equals sign\n", ".env"), /\.env:2: expected KEY=VALUE/);
});
