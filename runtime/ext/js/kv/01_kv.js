// Workers KV bindings: `env.NS` is a KvNamespace whose methods call the
// node's KV service through ops. Limits are checked in Rust, with
// isola_proto's wording; this file only converts values.
import { core, primordials } from "ext:core/mod.js";

const {
  ArrayBufferIsView,
  ArrayBufferPrototype,
  ArrayBufferPrototypeGetByteLength,
  ArrayBufferPrototypeSlice,
  ArrayPrototypePush,
  JSONParse,
  JSONStringify,
  Number,
  NumberIsFinite,
  ObjectPrototypeIsPrototypeOf,
  String,
  Symbol,
  TypeError,
  TypedArrayPrototypeGetBuffer,
  TypedArrayPrototypeGetByteLength,
  TypedArrayPrototypeGetByteOffset,
  TypedArrayPrototypeSet,
  Uint8Array,
} = primordials;
const {
  op_isola_kv_bindings,
  op_isola_kv_value_too_large,
  op_isola_kv_get,
  op_isola_kv_put,
  op_isola_kv_delete,
  op_isola_kv_list,
} = core.ops;
const { TextDecoder, TextEncoder } = core.loadExtScript("ext:deno_web/08_text_encoding.js");
const { ReadableStream, isReadableStream } = core.loadExtScript("ext:deno_web/06_streams.js");

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Only `bindings()` makes namespaces. */
const INTERNAL = Symbol("INTERNAL");

/** The invocation whose handler is running, or -1. */
function currentId() {
  const id = core.getAsyncContext();
  return typeof id === "number" ? id : -1;
}

function readType(options) {
  let type = "text";
  let cacheTtl = -1;
  if (typeof options === "string") {
    type = options;
  } else if (options !== undefined && options !== null) {
    if (options.type !== undefined) type = options.type;
    if (options.cacheTtl !== undefined) cacheTtl = seconds(options.cacheTtl, "cacheTtl");
  }
  if (type !== "text" && type !== "json" && type !== "arrayBuffer" && type !== "stream") {
    throw new TypeError(
      `Unknown response type "${String(type)}". Possible types are "text", "arrayBuffer", "json", and "stream".`,
    );
  }
  return { type, cacheTtl };
}

/** A number of seconds: finite and not negative. */
function seconds(value, name) {
  const n = Number(value);
  if (!NumberIsFinite(n) || n < 0) {
    throw new TypeError(`KV ${name} must be a non-negative number of seconds, got ${String(value)}`);
  }
  return n;
}

/** The ArrayBuffer of exactly these bytes. */
function bufferOf(bytes) {
  const buffer = TypedArrayPrototypeGetBuffer(bytes);
  if (
    TypedArrayPrototypeGetByteOffset(bytes) === 0 &&
    ArrayBufferPrototypeGetByteLength(buffer) === TypedArrayPrototypeGetByteLength(bytes)
  ) {
    return buffer;
  }
  const offset = TypedArrayPrototypeGetByteOffset(bytes);
  return ArrayBufferPrototypeSlice(buffer, offset, offset + TypedArrayPrototypeGetByteLength(bytes));
}

function decode(bytes, type) {
  switch (type) {
    case "text":
      return decoder.decode(bytes);
    case "json":
      return JSONParse(decoder.decode(bytes));
    case "arrayBuffer":
      return bufferOf(bytes);
    default:
      return new ReadableStream({
        start(controller) {
          if (TypedArrayPrototypeGetByteLength(bytes) > 0) controller.enqueue(bytes);
          controller.close();
        },
      });
  }
}

/** A view of `value`'s bytes, for the types `put` takes. */
async function bytesOf(value) {
  if (typeof value === "string") return encoder.encode(value);
  if (ObjectPrototypeIsPrototypeOf(ArrayBufferPrototype, value)) return new Uint8Array(value);
  if (ArrayBufferIsView(value)) {
    return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  }
  if (isReadableStream(value)) return await collect(value);
  throw new TypeError(
    "KV put() accepts only strings, ArrayBuffers, ArrayBufferViews, and ReadableStreams as values.",
  );
}

/** Reads a stream whole, stopping as soon as it is too large for a value. */
async function collect(stream) {
  const reader = stream.getReader();
  const chunks = [];
  let total = 0;
  while (true) {
    const { value, done } = await reader.read();
    if (done) break;
    if (!ArrayBufferIsView(value)) {
      await reader.cancel();
      throw new TypeError("KV put() streams must carry Uint8Array chunks");
    }
    total += value.byteLength;
    const tooLarge = op_isola_kv_value_too_large(total);
    if (tooLarge !== null) {
      await reader.cancel();
      throw new TypeError(tooLarge);
    }
    ArrayPrototypePush(chunks, new Uint8Array(value.buffer, value.byteOffset, value.byteLength));
  }
  if (chunks.length === 1) return chunks[0];
  const whole = new Uint8Array(total);
  let at = 0;
  for (let i = 0; i < chunks.length; i++) {
    TypedArrayPrototypeSet(whole, chunks[i], at);
    at += TypedArrayPrototypeGetByteLength(chunks[i]);
  }
  return whole;
}

function metadataOf(text) {
  return text === null ? null : JSONParse(text);
}

class KvNamespace {
  #binding;

  constructor(key, binding) {
    if (key !== INTERNAL) throw new TypeError("Illegal constructor");
    this.#binding = binding;
  }

  async get(key, options = undefined) {
    const { type, cacheTtl } = readType(options);
    const found = await op_isola_kv_get(currentId(), this.#binding, String(key), cacheTtl);
    return found === null ? null : decode(found.value, type);
  }

  async getWithMetadata(key, options = undefined) {
    const { type, cacheTtl } = readType(options);
    const found = await op_isola_kv_get(currentId(), this.#binding, String(key), cacheTtl);
    if (found === null) return { value: null, metadata: null, cacheStatus: null };
    return {
      value: decode(found.value, type),
      metadata: metadataOf(found.metadata),
      cacheStatus: null,
    };
  }

  async put(key, value, options = undefined) {
    const id = currentId();
    key = String(key);
    const opts = { metadata: null, expiration: null, expirationTtl: null };
    if (options !== undefined && options !== null) {
      if (options.metadata !== undefined && options.metadata !== null) {
        opts.metadata = JSONStringify(options.metadata);
      }
      if (options.expiration !== undefined) {
        opts.expiration = seconds(options.expiration, "expiration");
      }
      if (options.expirationTtl !== undefined) {
        opts.expirationTtl = seconds(options.expirationTtl, "expirationTtl");
      }
    }
    const bytes = await bytesOf(value);
    await op_isola_kv_put(id, this.#binding, key, bytes, opts);
  }

  async delete(key) {
    await op_isola_kv_delete(currentId(), this.#binding, String(key));
  }

  async list(options = undefined) {
    const opts = { prefix: null, limit: null, cursor: null };
    if (options !== undefined && options !== null) {
      if (options.prefix !== undefined && options.prefix !== null) opts.prefix = String(options.prefix);
      if (options.limit !== undefined && options.limit !== null) opts.limit = Number(options.limit);
      if (options.cursor !== undefined && options.cursor !== null) opts.cursor = String(options.cursor);
    }
    const page = await op_isola_kv_list(currentId(), this.#binding, opts);
    const keys = [];
    for (let i = 0; i < page.keys.length; i++) {
      const k = page.keys[i];
      const key = { name: k.name };
      if (k.expiration !== null) key.expiration = k.expiration;
      if (k.metadata !== null) key.metadata = JSONParse(k.metadata);
      ArrayPrototypePush(keys, key);
    }
    const result = { keys, list_complete: page.list_complete, cacheStatus: null };
    if (page.cursor !== null) result.cursor = page.cursor;
    return result;
  }
}

/** Adds this isolate's KV bindings to `env`.
 * Parenthesized: compiled into the startup snapshot (01_worker.js, `warm`).
 */
const addKvBindings = (function addKvBindings(env) {
  const names = op_isola_kv_bindings();
  for (let i = 0; i < names.length; i++) {
    env[names[i]] = new KvNamespace(INTERNAL, names[i]);
  }
});

export { addKvBindings };
