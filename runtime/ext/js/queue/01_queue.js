// Queues: `env.Q` is a producer whose `send`/`sendBatch` serialize bodies
// per content type and hand them to the node's queue service; a consumer
// run gets a MessageBatch whose `ack()`/`retry()` calls are recorded in
// Rust as they happen. Limits are checked in Rust, with isola_proto's
// wording.
import { core, primordials } from "ext:core/mod.js";

const {
  ArrayBufferIsView,
  ArrayBufferPrototype,
  ArrayIsArray,
  ArrayPrototypePush,
  Date,
  JSONParse,
  JSONStringify,
  Number,
  NumberIsInteger,
  ObjectDefineProperty,
  ObjectFreeze,
  ObjectPrototypeIsPrototypeOf,
  String,
  Symbol,
  TypeError,
  Uint8Array,
} = primordials;
const {
  op_isola_queue_bindings,
  op_isola_queue_send,
  op_isola_queue_batch,
  op_isola_queue_decide,
} = core.ops;
const { TextDecoder, TextEncoder } = core.loadExtScript("ext:deno_web/08_text_encoding.js");

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Only this module makes producers, batches and messages. */
const INTERNAL = Symbol("INTERNAL");

function currentId() {
  const id = core.getAsyncContext();
  return typeof id === "number" ? id : -1;
}

/** A copy of the bytes of an ArrayBuffer or view, or null. */
function copyBytes(body) {
  if (ObjectPrototypeIsPrototypeOf(ArrayBufferPrototype, body)) {
    return new Uint8Array(body).slice();
  }
  if (ArrayBufferIsView(body)) {
    return new Uint8Array(body.buffer, body.byteOffset, body.byteLength).slice();
  }
  return null;
}

/** `body` serialized as `contentType` says; TypeError if it does not fit. */
function encode(body, contentType) {
  switch (contentType) {
    case "json": {
      const text = JSONStringify(body);
      if (text === undefined) {
        throw new TypeError(`A message with contentType "json" needs a JSON-serializable body, got ${typeof body}`);
      }
      return encoder.encode(text);
    }
    case "text":
      if (typeof body !== "string") {
        throw new TypeError(`A message with contentType "text" needs a string body, got ${typeof body}`);
      }
      return encoder.encode(body);
    case "bytes": {
      const bytes = copyBytes(body);
      if (bytes === null) {
        throw new TypeError(
          `A message with contentType "bytes" needs an ArrayBuffer or ArrayBufferView body, got ${typeof body}`,
        );
      }
      return bytes;
    }
    case "v8":
      try {
        return core.serialize(body);
      } catch (err) {
        throw new TypeError(`A message with contentType "v8" needs a structured-cloneable body: ${err?.message ?? err}`);
      }
    default:
      throw new TypeError(
        `Unknown contentType "${String(contentType)}": use "json", "text", "bytes" or "v8"`,
      );
  }
}

function decodeBody(bytes, contentType) {
  switch (contentType) {
    case "json":
      return JSONParse(decoder.decode(bytes));
    case "text":
      return decoder.decode(bytes);
    case "bytes":
      return bytes.slice().buffer;
    default:
      return core.deserialize(bytes);
  }
}

/** `delaySeconds` as given, or `fallback` when unset. */
function delayOf(options, fallback) {
  if (options === undefined || options === null || options.delaySeconds === undefined) {
    return fallback;
  }
  const n = Number(options.delaySeconds);
  if (!NumberIsInteger(n) || n < 0) {
    throw new TypeError(
      `delaySeconds must be a non-negative whole number of seconds, got ${String(options.delaySeconds)}`,
    );
  }
  return n;
}

function outgoing(body, options, batchDelay) {
  const contentType = options?.contentType ?? "json";
  return {
    body: encode(body, contentType),
    contentType,
    delaySeconds: delayOf(options, batchDelay),
  };
}

class Queue {
  #binding;

  constructor(key, binding) {
    if (key !== INTERNAL) throw new TypeError("Illegal constructor");
    this.#binding = binding;
  }

  async send(body, options = undefined) {
    const id = currentId();
    const message = outgoing(body, options, 0);
    await op_isola_queue_send(id, this.#binding, [message]);
  }

  async sendBatch(messages, options = undefined) {
    const id = currentId();
    if (messages === null || typeof messages !== "object" || typeof messages[Symbol.iterator] !== "function") {
      throw new TypeError("sendBatch() takes an iterable of messages ({ body, contentType?, delaySeconds? })");
    }
    const batchDelay = delayOf(options, 0);
    const list = [];
    for (const m of (ArrayIsArray(messages) ? messages : [...messages])) {
      if (m === null || typeof m !== "object") {
        throw new TypeError("each message of sendBatch() is an object { body, contentType?, delaySeconds? }");
      }
      ArrayPrototypePush(list, outgoing(m.body, m, batchDelay));
    }
    await op_isola_queue_send(id, this.#binding, list);
  }
}

/** `retry()`'s delay as the op takes it: -1 is the queue's own. */
function retryDelay(options) {
  return delayOf(options, -1);
}

class Message {
  #run;
  #index;

  constructor(key, run, index, raw) {
    if (key !== INTERNAL) throw new TypeError("Illegal constructor");
    this.#run = run;
    this.#index = index;
    const body = decodeBody(raw.body, raw.contentType);
    ObjectDefineProperty(this, "id", { value: raw.id, enumerable: true });
    ObjectDefineProperty(this, "timestamp", { value: new Date(raw.timestamp), enumerable: true });
    ObjectDefineProperty(this, "body", { value: body, enumerable: true });
    ObjectDefineProperty(this, "attempts", { value: raw.attempts, enumerable: true });
  }

  ack() {
    op_isola_queue_decide(this.#run, this.#index, false, -1);
  }

  retry(options = undefined) {
    op_isola_queue_decide(this.#run, this.#index, true, retryDelay(options));
  }
}

class MessageBatch {
  #run;

  constructor(key, run, raw) {
    if (key !== INTERNAL) throw new TypeError("Illegal constructor");
    this.#run = run;
    const messages = [];
    for (let i = 0; i < raw.messages.length; i++) {
      ArrayPrototypePush(messages, new Message(INTERNAL, run, i, raw.messages[i]));
    }
    ObjectDefineProperty(this, "queue", { value: raw.queue, enumerable: true });
    ObjectDefineProperty(this, "messages", { value: ObjectFreeze(messages), enumerable: true });
  }

  ackAll() {
    op_isola_queue_decide(this.#run, -1, false, -1);
  }

  retryAll(options = undefined) {
    op_isola_queue_decide(this.#run, -1, true, retryDelay(options));
  }
}

/** The batch of consumer run `id`, its bodies deserialized (this throws if one does not parse). */
function messageBatch(id) {
  const raw = op_isola_queue_batch(id);
  if (raw === null) throw new TypeError("this consumer run has no batch");
  return new MessageBatch(INTERNAL, id, raw);
}

/** Adds this isolate's queue producer bindings to `env`.
 * Parenthesized: compiled into the startup snapshot (01_worker.js, `warm`).
 */
const addQueueBindings = (function addQueueBindings(env) {
  const names = op_isola_queue_bindings();
  for (let i = 0; i < names.length; i++) {
    env[names[i]] = new Queue(INTERNAL, names[i]);
  }
});

export { addQueueBindings, messageBatch };
