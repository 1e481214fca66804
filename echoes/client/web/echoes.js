// echoes in the browser: one ES module, no build step.
//
//   import { Echoes } from "./echoes.js";
//   const me = new Echoes("https://echoes.example", "josé");
//   await me.send(["李"], { text: "hola" }, { ack: true });
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
// pass its credentials in `headers` (e.g. { Authorization: "Basic ..." }).

export const FOLLOW_WAIT = 45;
const MAX_BACKOFF = 30;

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

/** `name` as a header value: one character per UTF-8 byte. */
export function headerValue(name) {
  return String.fromCharCode(...new TextEncoder().encode(name));
}

/** A fresh idempotency key or attempt token (24 characters of base64url). */
export function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(18));
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_");
}

export class Echoes {
  /** A client of the echoes at `url`, calling as `name`. */
  constructor(url, name, { headers = {}, fetch = globalThis.fetch.bind(globalThis) } = {}) {
    this.url = url.replace(/\/+$/, "");
    this.name = name;
    this.headers = headers;
    this.fetch = fetch;
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
        const delay = (error.retryAfter ?? backoff) * (1 + Math.random() / 2);
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

  /** One POST; the answer of a 200, else EchoesError (4xx) or Unavailable. */
  async call(path, query = {}, body = undefined, signal = undefined) {
    const params = new URLSearchParams();
    for (const [name, value] of Object.entries(query)) {
      if (value !== undefined && value !== null) params.set(name, String(value));
    }
    const url = this.url + path + (params.size ? `?${params}` : "");
    const headers = { ...this.headers, From: headerValue(this.name) };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await this.fetch(url, {
        method: "POST",
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      });
    } catch (error) {
      if (signal && signal.aborted) throw error;
      throw new Unavailable(`cannot reach ${this.url}: ${error.message}`);
    }
    return answer(response);
  }
}

function message(destinations, body, key, ack) {
  return { idempotencyKey: key || newKey(), destination: destinations, body, expectsAck: ack };
}

async function answer(response) {
  const text = await response.text();
  if (response.status === 200) {
    const document = JSON.parse(text);
    if (Array.isArray(document)) {
      const remaining = Number(response.headers.get("Echoes-Remaining") || 0);
      return { records: document, remaining };
    }
    return { sent: document.sent };
  }
  let details;
  try {
    details = JSON.parse(text).details || [];
  } catch {
    details = [text.slice(0, 200) || `HTTP ${response.status}`];
  }
  const retry = response.headers.get("Retry-After");
  if (response.status >= 500 || (response.status === 429 && retry)) {
    throw new Unavailable(`${response.status}: ${details.join("; ")}`, retry ? Number(retry) : null);
  }
  throw new EchoesError(response.status, details);
}

function sleep(seconds, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, seconds * 1000);
    if (signal) signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); });
  });
}
