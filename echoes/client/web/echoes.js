// echoes in the browser: one ES module, no build step.
//
//   import { Echoes } from "./echoes.js";
//   const me = new Echoes("https://echoes.example", "josé");
//   await me.send(["李"], { text: "hola" }, { ack: true, key: "k1" });
//   await me.status("k1", ["李"]); // [{ destination: "李", state: "waiting" }]
//   for await (const record of me.follow()) console.log(record);
//
// follow() does what echoes.client does in Python: every batch is taken under an attempt
// token, so a lost response or a restarted server neither drops nor repeats a record; it
// honours Retry-After and backs off with jitter on 503 and network errors. Given a storage
// (localStorage), the token of the batch in flight survives a reload of the page, which then
// gets that batch again instead of losing it.
//
// Names travel as their UTF-8 bytes in the From header (echoes decodes header bytes as UTF-8):
// fetch sends each character below 256 as one byte, so "josé" and "李" arrive as typed.
// The page's origin must be in echoes' --cors-origins. Behind a proxy that authenticates,
// pass { user, password } (HTTP Basic) or its credentials in `headers`
// (e.g. { Authorization: "Bearer ..." }).
//
// Nothing the server says is taken on trust, as in echoes.client: Retry-After is seconds
// or an HTTP-date, waited at most MAX_DELAY (60 s) and at least MIN_DELAY (0.5 s); anything
// else in it falls back to the backoff. A 200 must be a batch of records with a whole
// Echoes-Remaining (or a send's whole count, or a status's copies, each with a known state),
// else BadAnswer; a redirection is not followed
// (BadAnswer); an answer is read up to `maxAnswerBytes` and within `timeout` seconds (plus
// the wait).

export const FOLLOW_WAIT = 45;
export const MAX_DELAY = 60;
export const MIN_DELAY = 0.5;
export const MAX_ANSWER_BYTES = 64 * 1024 * 1024;
const MAX_BACKOFF = 30;
const RECORD_FIELDS = {
  msg: { idempotencyKey: "string", origin: "string", expectsAck: "boolean", sentAt: "string" },
  ack: { idempotencyKey: "string", destination: "string", receivedAt: "string" },
};
// What /status says of a copy, as the server's schema names them.
const COPY_STATES = ["waiting", "consumed", "unknown"];
// What a 200 of each path must hold: a batch of records unless named here.
const EXPECTS = { "/send": "sent", "/status": "states" };

export class EchoesError extends Error {
  constructor(status, details) {
    super(`${status}: ${details.join("; ")}`);
    this.status = status;
    this.details = details;
  }
}

export class Unavailable extends Error {
  constructor(reason, retryAfter = null) {
    super(reason);
    this.retryAfter = retryAfter;
  }
}

/** The server's answer is not one echoes gives (not JSON, the wrong shape, too large, a
 * redirection): not retried, the URL may not be echoes'. */
export class BadAnswer extends Error {}

/** `name` as a header value: one character per UTF-8 byte. */
export function headerValue(name) {
  return String.fromCharCode(...new TextEncoder().encode(name));
}

/** A fresh idempotency key or attempt token (24 characters of base64url). */
export function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(18));
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_");
}

/** Seconds to wait from a Retry-After value (seconds, or an HTTP-date), at most MAX_DELAY;
 * null for anything else (negative, not finite, not a time): back off instead. */
export function retryAfter(value, now = Date.now()) {
  if (typeof value !== "string") return null;
  const text = value.trim();
  let seconds;
  if (/^\d+(\.\d+)?$/.test(text)) {
    seconds = Number(text);
  } else if (/^[A-Za-z]{3}, \d{2} [A-Za-z]{3} \d{4} \d{2}:\d{2}:\d{2} GMT$/.test(text)) {
    seconds = Math.max(0, (Date.parse(text) - now) / 1000);
  } else {
    return null;
  }
  return Number.isFinite(seconds) ? Math.min(seconds, MAX_DELAY) : null;
}

export class Echoes {
  /** A client of the echoes at `url`, calling as `name`. */
  constructor(
    url,
    name,
    {
      headers = {},
      user,
      password = "",
      fetch = globalThis.fetch.bind(globalThis),
      timeout = 30,
      maxAnswerBytes = MAX_ANSWER_BYTES,
    } = {},
  ) {
    this.url = url.replace(/\/+$/, "");
    this.name = name;
    this.headers = { ...headers };
    const named = (wanted) => Object.keys(this.headers).some((h) => h.toLowerCase() === wanted);
    if (named("from")) throw new TypeError("From is the caller's name: give it as `name`");
    if (user !== undefined) {
      if (named("authorization")) {
        throw new TypeError("give either a user and password or an Authorization header");
      }
      const token = String.fromCharCode(...new TextEncoder().encode(`${user}:${password}`));
      this.headers.Authorization = `Basic ${btoa(token)}`;
    }
    this.fetch = fetch;
    this.timeout = timeout;
    this.maxAnswerBytes = maxAnswerBytes;
  }

  /** Store one copy of `body` per destination; how many were stored. */
  async send(destinations, body, { key, ack = false } = {}) {
    const answer = await this.call("/send", {}, message(destinations, body, key, ack));
    return answer.sent;
  }

  /** Take the caller's waiting records (waiting up to `wait` s for one to come). */
  async receive({ limit, wait, attempt } = {}) {
    return (await this.call("/receive", { limit, wait, attempt })).records;
  }

  /** Send, then take the caller's records, in one request. */
  async exchange(destinations, body, { key, ack = false, limit, wait } = {}) {
    const query = { limit, wait };
    return (await this.call("/exchange", query, message(destinations, body, key, ack))).records;
  }

  /** What became of the copies of the caller's message `key` sent to `destinations`: for
   * each, { destination, state: "waiting" | "consumed" | "unknown" }, with consumedAt when
   * consumed (within the server's --dedup-window). */
  async status(key, destinations) {
    const query = { idempotencyKey: key, destination: destinations };
    return (await this.call("/status", {}, query)).states;
  }

  /** Every record for the caller, oldest first, until `signal` aborts. */
  async *follow({ wait = FOLLOW_WAIT, signal, onRetry = () => {}, storage, storageKey } = {}) {
    const slot = storageKey || `echoes-follow:${this.url}:${this.name}`;
    let token = (storage && storage.getItem(slot)) || newKey();
    let failures = 0;
    while (!(signal && signal.aborted)) {
      if (storage) storage.setItem(slot, token); // before the request: see the top of the file
      let answer;
      try {
        answer = await this.call("/receive", { wait, attempt: token }, undefined, signal);
      } catch (error) {
        if (!(error instanceof Unavailable) || (signal && signal.aborted)) throw error;
        failures += 1;
        const backoff = Math.min(MAX_BACKOFF, 0.5 * 2 ** Math.min(failures, 10));
        const jittered = (error.retryAfter ?? backoff) * (1 + Math.random() / 2);
        const delay = Math.max(MIN_DELAY, Math.min(MAX_DELAY, jittered));
        onRetry(error.message, delay);
        await sleep(delay, signal);
        continue;
      }
      failures = 0;
      for (const record of answer.records) yield record;
      if (storage) storage.removeItem(slot); // the whole batch was handed out
      token = newKey();
    }
  }

  /** One POST; the answer of a 200, else EchoesError (4xx), Unavailable or BadAnswer. */
  async call(path, query = {}, body = undefined, signal = undefined) {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(query)) {
      if (value !== undefined && value !== null) params.set(name, String(value));
    }
    const url = this.url + path + (params.size ? `?${params}` : "");
    const headers = { ...this.headers, From: headerValue(this.name) };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const seconds = this.timeout + (Number(query.wait) || 0);
    const deadline = bounded(signal, seconds);
    try {
      let response;
      try {
        response = await this.fetch(url, {
          method: "POST",
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
          signal: deadline.signal,
          redirect: "manual", // never followed: From and credentials stay with this origin
        });
      } catch (error) {
        throw unreachable(this.url, error, signal, deadline, seconds);
      }
      let text;
      try {
        text = await read(response, this.maxAnswerBytes);
      } catch (error) {
        if (error instanceof BadAnswer) throw error;
        throw unreachable(this.url, error, signal, deadline, seconds);
      }
      return answer(response, text, EXPECTS[path] || "batch");
    } finally {
      deadline.done();
    }
  }
}

function message(destinations, body, key, ack) {
  return { idempotencyKey: key || newKey(), destination: destinations, body, expectsAck: ack };
}

/** An AbortSignal that aborts with `signal` or after `seconds`; done() forgets both. */
function bounded(signal, seconds) {
  const controller = new AbortController();
  const abort = () => controller.abort();
  const timer = setTimeout(() => {
    controller.timedOut = true;
    controller.abort();
  }, Math.min(seconds, 2147483) * 1000);
  if (signal) {
    if (signal.aborted) controller.abort();
    else signal.addEventListener("abort", abort, { once: true });
  }
  return {
    signal: controller.signal,
    get timedOut() {
      return Boolean(controller.timedOut);
    },
    done() {
      clearTimeout(timer);
      if (signal) signal.removeEventListener("abort", abort);
    },
  };
}

function unreachable(url, error, signal, deadline, seconds) {
  if (signal && signal.aborted) return error;
  const why = deadline.timedOut ? `no whole answer within ${seconds} s` : error.message;
  return new Unavailable(`cannot reach ${url}: ${why}`);
}

/** The answer's text, read up to `limit` bytes (BadAnswer past it). */
async function read(response, limit) {
  const declared = Number(response.headers.get("Content-Length"));
  if (declared > limit) throw new BadAnswer(`the answer is ${declared} bytes, more than ${limit}`);
  if (!response.body) return "";
  const reader = response.body.getReader();
  const chunks = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      reader.cancel().catch(() => {});
      throw new BadAnswer(`the answer is longer than ${limit} bytes`);
    }
    chunks.push(value);
  }
  const whole = new Uint8Array(size);
  let at = 0;
  for (const chunk of chunks) {
    whole.set(chunk, at);
    at += chunk.byteLength;
  }
  return new TextDecoder().decode(whole);
}

function answer(response, text, expects) {
  const { status } = response;
  if (response.type === "opaqueredirect" || (status >= 300 && status < 400)) {
    const where = response.headers.get("Location") || "elsewhere";
    throw new BadAnswer(`${status}: the server redirects to ${where}, which is not followed`);
  }
  if (status === 200) return ok(response, text, expects);
  const details = errorDetails(status, text);
  const retry = response.headers.get("Retry-After");
  if (status >= 500 || (status === 429 && retry)) {
    throw new Unavailable(`${status}: ${details.join("; ")}`, retryAfter(retry));
  }
  throw new EchoesError(status, details);
}

function ok(response, text, expects) {
  const document = parse(text);
  const bad = (what) => new BadAnswer(`the server answered ${what}`);
  if (expects === "batch") {
    if (!Array.isArray(document)) throw bad(`${shown(text)}, not a batch of records`);
    const odd = document.find((record) => !isRecord(record));
    if (odd !== undefined) throw bad(`a batch holding ${shown(JSON.stringify(odd))}, not a record`);
    const remaining = response.headers.get("Echoes-Remaining") ?? "0";
    if (!/^\d+$/.test(remaining)) throw bad(`Echoes-Remaining: ${shown(remaining)}`);
    return { records: document, remaining: Number(remaining) };
  }
  if (expects === "states") {
    if (!Array.isArray(document)) throw bad(`${shown(text)}, not the copies' states`);
    const odd = document.find((copy) => !isCopyState(copy));
    if (odd !== undefined) throw bad(`a status holding ${shown(JSON.stringify(odd))}, not a copy's`);
    return { states: document };
  }
  const sent = document && typeof document === "object" ? document.sent : undefined;
  if (!Number.isSafeInteger(sent) || sent < 0) throw bad(`${shown(text)}, not a send's count`);
  return { sent };
}

function parse(text) {
  try {
    return JSON.parse(text);
  } catch {
    throw new BadAnswer(`the server answered ${shown(text)}, which is not JSON`);
  }
}

function isCopyState(copy) {
  if (!copy || typeof copy !== "object" || typeof copy.destination !== "string") return false;
  if (!COPY_STATES.includes(copy.state)) return false;
  return copy.consumedAt === undefined || typeof copy.consumedAt === "string";
}

function isRecord(record) {
  if (!record || typeof record !== "object" || !Object.hasOwn(RECORD_FIELDS, record.type)) {
    return false;
  }
  const fields = Object.entries(RECORD_FIELDS[record.type]);
  const typed = fields.every(([name, kind]) => typeof record[name] === kind);
  return typed && (record.type === "ack" || "body" in record);
}

function errorDetails(status, text) {
  let error = null;
  try {
    error = JSON.parse(text);
  } catch {
    // not JSON: its first characters below
  }
  const details = error && Array.isArray(error.details) ? error.details : null;
  if (details && details.length && details.every((d) => typeof d === "string")) {
    return details.slice(0, 20).map((d) => d.slice(0, 1000));
  }
  return [text.slice(0, 200) || `HTTP ${status}`];
}

function shown(text) {
  return text.length <= 80 ? JSON.stringify(text) : `${JSON.stringify(text.slice(0, 80))}...`;
}

/** Wait `seconds`, or until `signal` aborts; the abort listener is removed either way. */
function sleep(seconds, signal) {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      if (signal) signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, Math.min(seconds, MAX_DELAY) * 1000);
    if (signal) signal.addEventListener("abort", done, { once: true });
  });
}
