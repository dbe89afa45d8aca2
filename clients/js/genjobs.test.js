// The client against a real local HTTP server (node:http) speaking the API's SSE contract.
// Run: node --test clients/js/

import assert from "node:assert/strict";
import { once } from "node:events";
import http from "node:http";
import { test } from "node:test";

import { createClient, GenJobsError, parseRetryAfter, SSEParser } from "./genjobs.js";

const TOKEN = "token-of-user-a";
const JOB_ID = "0b6f3c52-5d7e-4a4e-9a51-3f7f3d4d9a10";

function jobView(status, extra = {}) {
  return {
    id: JOB_ID,
    task: "summarize",
    status,
    input: { text: "hello" },
    metadata: null,
    result: null,
    error: null,
    usage: null,
    attempts: 1,
    created_at: "2026-01-01T00:00:00Z",
    started_at: null,
    finished_at: null,
    ...extra,
  };
}

function problem(res, status, type, detail, { headers = {}, ...extra } = {}) {
  res.writeHead(status, { "Content-Type": "application/problem+json", ...headers });
  res.end(JSON.stringify({ type, title: http.STATUS_CODES[status], status, detail, ...extra }));
}

/** An SSE event as the API writes it; multi-line JSON data becomes several data: lines. */
function frame({ id, event, data }, eol = "\n", multiline = false) {
  const json = multiline ? JSON.stringify(data, null, 1) : JSON.stringify(data);
  const lines = json.split("\n").map((line) => `data: ${line}`);
  return [`id: ${id}`, `event: ${event}`, ...lines, "", ""].join(eol);
}

/** The event log of a job that streams `texts` per attempt and succeeds. */
function eventLog(attempts) {
  const events = [{ event: "status", data: { status: "processing" } }];
  attempts.forEach((texts, index) => {
    const attempt = index + 1;
    if (attempt > 1) events.push({ event: "reset", data: { attempt } });
    texts.forEach((text, seq) => events.push({ event: "delta", data: { attempt, seq, text } }));
  });
  const result = { text: attempts.at(-1).join("") };
  events.push({ event: "usage", data: { prompt_tokens: 5, completion_tokens: 7 } });
  events.push({ event: "succeeded", data: jobView("succeeded", { result }) });
  // Opaque ids: the client must not assume numbers.
  return events.map((e, i) => ({ ...e, id: `${JOB_ID.slice(0, 8)}-${i + 1}` }));
}

/**
 * A fake genjobs API: POST /v1/generations, GET …/{id}, POST …/cancel and GET …/events that
 * resumes after Last-Event-ID. `plan` scripts per-request deviations (errors, drops).
 */
class FakeApi {
  constructor({ events = eventLog([["Hello", ", world"]]), plan = {} } = {}) {
    this.events = events;
    this.plan = { eol: "\n", multiline: false, pieces: 0, heartbeat: true, paceMs: 0, ...plan };
    this.requests = [];
    this.closed = []; // event-stream connections the client closed
    this.server = http.createServer((req, res) => this.handle(req, res));
  }

  async start() {
    this.server.listen(0, "127.0.0.1");
    await once(this.server, "listening");
    this.url = `http://127.0.0.1:${this.server.address().port}`;
    return this;
  }

  async stop() {
    this.server.closeAllConnections();
    this.server.close();
    await once(this.server, "close");
  }

  count(method, suffix) {
    return this.requests.filter((r) => r.method === method && r.url.endsWith(suffix)).length;
  }

  async handle(req, res) {
    let body = "";
    for await (const chunk of req) body += chunk;
    const entry = { method: req.method, url: req.url, headers: req.headers, body, at: Date.now() };
    this.requests.push(entry);
    const nth = this.requests.filter((r) => r.method === req.method && r.url === req.url).length;
    const scripted = this.plan.respond?.(entry, nth, res);
    if (scripted) return;
    if (req.headers.authorization !== `Bearer ${TOKEN}`) {
      return problem(res, 401, "https://genjobs.dev/problems/unauthorized", "Missing token.");
    }
    const path = req.url;
    if (req.method === "POST" && path === "/v1/generations") {
      res.writeHead(202, {
        "Content-Type": "application/json",
        Location: `/v1/generations/${JOB_ID}`,
      });
      return res.end(JSON.stringify(jobView("queued")));
    }
    if (!path.startsWith(`/v1/generations/${JOB_ID}`)) {
      return problem(res, 404, "https://genjobs.dev/problems/not-found", "No such generation.");
    }
    if (req.method === "GET" && path.endsWith("/events")) return this.stream(req, res, nth);
    if (req.method === "POST" && path.endsWith("/cancel")) {
      res.writeHead(200, { "Content-Type": "application/json" });
      return res.end(JSON.stringify(jobView("cancelled")));
    }
    res.writeHead(200, { "Content-Type": "application/json" });
    res.end(JSON.stringify(jobView("processing")));
  }

  async stream(req, res, nth) {
    const { eol, multiline, pieces, heartbeat, paceMs, dropAfter, endAfter, silentFirst } =
      this.plan;
    const last = req.headers["last-event-id"];
    const start = last ? this.events.findIndex((e) => e.id === last) + 1 : 0;
    res.writeHead(200, { "Content-Type": "text/event-stream", "Cache-Control": "no-cache" });
    res.on("close", () => this.closed.push(nth));
    const write = async (text) => {
      if (res.destroyed) return;
      if (!pieces) return void res.write(text);
      for (let i = 0; i < text.length; i += pieces) {
        res.write(text.slice(i, i + pieces)); // split lines and CRLFs across network chunks
        await new Promise((r) => setImmediate(r));
      }
    };
    if (silentFirst && nth === 1) return; // headers, then nothing at all
    await write(`retry: 50${eol}${eol}`);
    let sent = 0;
    for (const event of this.events.slice(start)) {
      if (res.destroyed) return;
      if (heartbeat) await write(`: heartbeat${eol}${eol}`);
      const text = frame(event, eol, multiline);
      if (dropAfter && nth === 1 && sent === dropAfter) {
        await write(text.slice(0, Math.floor(text.length / 2))); // half an event, then gone
        res.socket.destroy();
        return;
      }
      if (endAfter && nth === 1 && sent === endAfter) return void res.end(); // no terminal
      await write(text);
      sent += 1;
      if (paceMs) await new Promise((r) => setTimeout(r, paceMs));
    }
    if (this.plan.holdOpen) return; // never ends: for abort tests
    res.end();
  }
}

async function withApi(options, body) {
  const api = await new FakeApi(options).start();
  try {
    return await body(api);
  } finally {
    await api.stop();
  }
}

function client(api, options = {}) {
  return createClient({
    baseUrl: `${api.url}/`,
    getToken: async () => TOKEN,
    backoff: { baseMs: 20, maxMs: 200 },
    ...options,
  });
}

function recorder() {
  const seen = {
    status: [],
    deltas: [],
    texts: [],
    resets: [],
    usage: [],
    events: [],
    submitted: [],
  };
  const handlers = {
    onStatus: (d) => seen.status.push(d),
    onDelta: (d, text) => {
      seen.deltas.push(d);
      seen.texts.push(text);
    },
    onReset: (d) => seen.resets.push(d),
    onUsage: (d) => seen.usage.push(d),
    onEvent: (e) => seen.events.push(e),
    onSubmit: (job) => seen.submitted.push(job),
  };
  return { seen, handlers };
}

// ---------------------------------------------------------------- the SSE parser

test("parser: fields, multi-line data, comments, CR/LF/CRLF split anywhere, BOM", () => {
  const stream =
    '\uFEFF: hello\r\nevent: delta\r\nid: a1\r\ndata: {"x":\r\ndata:  1}\r\n\r\n' +
    "retry: 750\rdata: plain\r\rid: b2\nevent: status\ndata\n\n: tail\nid: lost\ndata: half";
  for (const size of [1, 2, 3, 7, stream.length]) {
    const events = [];
    const comments = [];
    const parser = new SSEParser(
      (e) => events.push(e),
      (c) => comments.push(c),
    );
    const bytes = new TextEncoder().encode(stream);
    for (let i = 0; i < bytes.length; i += size) parser.push(bytes.slice(i, i + size));
    parser.end();
    assert.deepEqual(events, [
      { event: "delta", id: "a1", data: '{"x":\n 1}' },
      { event: "message", id: "a1", data: "plain" },
      { event: "status", id: "b2", data: "" },
    ]);
    assert.deepEqual(comments, ["hello", "tail"]);
    assert.equal(parser.retryMs, 750);
    assert.equal(parser.lastEventId, "b2", "an id without its blank line is not the last id");
  }
});

test("parser: multi-byte characters split across chunks", () => {
  const events = [];
  const parser = new SSEParser((e) => events.push(e));
  const bytes = new TextEncoder().encode("data: héllo 👋\n\n");
  for (const byte of bytes) parser.push(new Uint8Array([byte]));
  assert.deepEqual(events, [{ event: "message", id: "", data: "héllo 👋" }]);
});

test("Retry-After: seconds or an HTTP date", () => {
  assert.equal(parseRetryAfter("3"), 3000);
  assert.equal(parseRetryAfter(new Date(10_000).toUTCString(), 4_000), 6000);
  assert.equal(parseRetryAfter("soon"), null);
  assert.equal(parseRetryAfter(null), null);
});

// ---------------------------------------------------------------- against the fake API

test("generate: submit then follow assembles the deltas and resolves the final job", async () => {
  await withApi({ plan: { multiline: true } }, async (api) => {
    const { seen, handlers } = recorder();
    const job = await client(api).generate("summarize", { text: "hello" }, handlers, {
      metadata: { page: "home" },
    });
    assert.equal(job.status, "succeeded");
    assert.deepEqual(job.result, { text: "Hello, world" });
    assert.deepEqual(seen.texts, ["Hello", "Hello, world"]);
    assert.deepEqual(seen.status, [{ status: "processing" }]);
    assert.deepEqual(seen.usage, [{ prompt_tokens: 5, completion_tokens: 7 }]);
    assert.equal(seen.submitted[0].status, "queued");
    assert.deepEqual(
      seen.events.map((e) => e.id),
      api.events.map((e) => e.id),
    );
    const [post, get] = api.requests;
    assert.deepEqual(JSON.parse(post.body), {
      task: "summarize",
      input: { text: "hello" },
      metadata: { page: "home" },
    });
    assert.equal(post.headers["content-type"], "application/json");
    assert.match(post.headers["idempotency-key"], /^[0-9a-f-]{36}$/);
    assert.equal(get.url, `/v1/generations/${JOB_ID}/events`);
    assert.equal(get.headers.accept, "text/event-stream");
    assert.equal(get.headers["last-event-id"], undefined);
    assert.equal(get.headers["cache-control"], "no-cache", "from cache: no-store");
    assert.equal(api.requests.length, 2, "heartbeats and retry: never cause a reconnect");
  });
});

test("reset drops the partial text of the failed attempt", async () => {
  const events = eventLog([
    ["Partial ", "answer"],
    ["Fresh", " answer"],
  ]);
  await withApi({ events, plan: { eol: "\r\n", pieces: 3 } }, async (api) => {
    const { seen, handlers } = recorder();
    const job = await client(api).follow(JOB_ID, handlers);
    assert.equal(job.status, "succeeded");
    assert.deepEqual(seen.resets, [{ attempt: 2 }]);
    assert.deepEqual(seen.texts, ["Partial ", "Partial answer", "Fresh", "Fresh answer"]);
    assert.deepEqual(job.result, { text: "Fresh answer" });
  });
});

test("a dropped connection resumes with Last-Event-ID: no gap, no duplicate", async () => {
  const words = ["The ", "quick ", "brown ", "fox ", "jumps ", "over ", "the ", "dog"];
  const events = eventLog([words]);
  await withApi({ events, plan: { dropAfter: 4, pieces: 5 } }, async (api) => {
    const { seen, handlers } = recorder();
    const job = await client(api).follow(JOB_ID, handlers);
    assert.equal(job.status, "succeeded");
    assert.equal(seen.texts.at(-1), words.join(""));
    assert.deepEqual(
      seen.deltas.map((d) => d.text),
      words,
      "each delta once, in order",
    );
    assert.deepEqual(
      seen.events.map((e) => e.id),
      events.map((e) => e.id),
    );
    const streams = api.requests.filter((r) => r.url.endsWith("/events"));
    assert.equal(streams.length, 2);
    // The fourth event was complete, the fifth half written when the socket died.
    assert.equal(streams[1].headers["last-event-id"], events[3].id);
  });
});

test("a stream that ends before the terminal event (proxy, stream limit) is resumed", async () => {
  const events = eventLog([["one", " two", " three"]]);
  await withApi({ events, plan: { endAfter: 2 } }, async (api) => {
    const { seen, handlers } = recorder();
    const job = await client(api).follow(JOB_ID, handlers, { lastEventId: events[0].id });
    assert.equal(job.status, "succeeded");
    assert.equal(seen.texts.at(-1), "one two three");
    const streams = api.requests.filter((r) => r.url.endsWith("/events"));
    assert.equal(streams[0].headers["last-event-id"], events[0].id, "the caller's lastEventId");
    assert.equal(streams[1].headers["last-event-id"], events[2].id);
    assert.ok(seen.status.length === 0, "events before lastEventId are not replayed");
  });
});

test("a silent stream (not even heartbeats) is reconnected after idleTimeoutMs", async () => {
  await withApi({ plan: { silentFirst: true } }, async (api) => {
    const started = Date.now();
    const job = await client(api, { idleTimeoutMs: 300 }).follow(JOB_ID, {});
    assert.equal(job.status, "succeeded");
    assert.ok(Date.now() - started >= 300);
    assert.equal(api.count("GET", "/events"), 2);
  });
});

test("429 + Retry-After on submit: waits, then retries with the same Idempotency-Key", async () => {
  const plan = {
    respond(req, nth, res) {
      if (req.method !== "POST" || nth > 1) return false;
      problem(res, 429, "https://genjobs.dev/problems/rate-limited", "Slow down.", {
        headers: { "Retry-After": "1" },
      });
      return true;
    },
  };
  await withApi({ plan }, async (api) => {
    const job = await client(api).submit("summarize", { text: "hello" });
    assert.equal(job.status, "queued");
    const [first, second] = api.requests;
    assert.ok(second.at - first.at >= 950, `waited ${second.at - first.at} ms`);
    assert.equal(first.headers["idempotency-key"], second.headers["idempotency-key"]);
  });
});

test("503 with Retry-After on the event stream waits, then follows", async () => {
  const plan = {
    respond(req, nth, res) {
      if (!req.url.endsWith("/events") || nth > 1) return false;
      problem(res, 503, "https://genjobs.dev/problems/database-unavailable", "Try later.", {
        headers: { "Retry-After": "1" },
      });
      return true;
    },
  };
  await withApi({ plan }, async (api) => {
    const started = Date.now();
    const job = await client(api).follow(JOB_ID);
    assert.equal(job.status, "succeeded");
    assert.ok(Date.now() - started >= 950);
    assert.equal(api.count("GET", "/events"), 2);
  });
});

test("problem+json errors become GenJobsError, not retried", async () => {
  const plan = {
    respond(req, nth, res) {
      if (req.method !== "POST" || req.url !== "/v1/generations") return false;
      problem(res, 422, "https://genjobs.dev/problems/validation-error", "Invalid input.", {
        errors: [{ field: "input.text", message: "Field required" }],
      });
      return true;
    },
  };
  await withApi({ plan }, async (api) => {
    const jobs = client(api);
    const invalid = await jobs.submit("summarize", {}).catch((e) => e);
    assert.ok(invalid instanceof GenJobsError);
    assert.equal(invalid.status, 422);
    assert.equal(invalid.type, "https://genjobs.dev/problems/validation-error");
    assert.equal(invalid.detail, "Invalid input.");
    assert.deepEqual(invalid.errors, [{ field: "input.text", message: "Field required" }]);
    const missing = await jobs.follow("someone-elses-job").catch((e) => e);
    assert.equal(missing.status, 404);
    assert.equal(missing.detail, "No such generation.");
    const signedOut = await client(api, { getToken: async () => null })
      .get(JOB_ID)
      .catch((e) => e);
    assert.equal(signedOut.status, 401);
    assert.equal(api.requests.length, 3, "client errors are never retried");
  });
});

test("get and cancel; a 409 once the job has ended", async () => {
  const plan = {
    respond(req, nth, res) {
      if (!req.url.endsWith("/cancel") || nth < 2) return false;
      problem(res, 409, "https://genjobs.dev/problems/conflict", "The job has already ended.");
      return true;
    },
  };
  await withApi({ plan }, async (api) => {
    const jobs = client(api);
    assert.equal((await jobs.get(JOB_ID)).status, "processing");
    assert.equal((await jobs.cancel(JOB_ID)).status, "cancelled");
    const again = await jobs.cancel(JOB_ID).catch((e) => e);
    assert.equal(again.status, 409);
    assert.equal(api.requests[1].method, "POST");
  });
});

test("abort via signal ends follow() and closes the connection", async () => {
  const events = eventLog([["a", "b", "c", "d", "e"]]);
  await withApi({ events, plan: { paceMs: 100, holdOpen: true } }, async (api) => {
    const controller = new AbortController();
    const { seen, handlers } = recorder();
    handlers.onDelta = (d, text) => {
      seen.texts.push(text);
      if (text === "ab") controller.abort();
    };
    const error = await client(api)
      .follow(JOB_ID, handlers, { signal: controller.signal })
      .catch((e) => e);
    assert.equal(error.name, "AbortError");
    assert.deepEqual(seen.texts, ["a", "ab"]);
    const deadline = Date.now() + 2000;
    while (api.closed.length === 0 && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(api.closed, [1], "the server saw the stream closed");
    assert.equal(api.count("GET", "/events"), 1, "no reconnect after an abort");
  });
});

test("abort during a Retry-After wait", async () => {
  const plan = {
    respond(req, nth, res) {
      problem(res, 429, "https://genjobs.dev/problems/rate-limited", "Slow down.", {
        headers: { "Retry-After": "30" },
      });
      return true;
    },
  };
  await withApi({ plan }, async (api) => {
    const started = Date.now();
    const error = await client(api)
      .submit("summarize", { text: "x" }, { signal: AbortSignal.timeout(200) })
      .catch((e) => e);
    assert.equal(error.name, "TimeoutError");
    assert.ok(Date.now() - started < 2000);
    assert.equal(api.requests.length, 1);
  });
});

test("a handler's exception ends follow() and is not mistaken for a network error", async () => {
  await withApi({}, async (api) => {
    const boom = new Error("render failed");
    const error = await client(api)
      .follow(JOB_ID, {
        onDelta() {
          throw boom;
        },
      })
      .catch((e) => e);
    assert.equal(error, boom);
    assert.equal(api.count("GET", "/events"), 1);
  });
});

test("the token is asked for on every request", async () => {
  await withApi({}, async (api) => {
    let calls = 0;
    const jobs = client(api, {
      getToken: async () => {
        calls += 1;
        return TOKEN;
      },
    });
    await jobs.generate("summarize", { text: "hello" });
    assert.equal(calls, 2);
  });
});

test("a submit lost on the network is retried with the same Idempotency-Key", async () => {
  const plan = {
    respond(req, nth, res) {
      if (req.method !== "POST" || nth > 1) return false;
      res.socket.destroy(); // the answer never arrives
      return true;
    },
  };
  await withApi({ plan }, async (api) => {
    const job = await client(api).submit("summarize", { text: "hello" }, { idempotencyKey: "k-1" });
    assert.equal(job.status, "queued");
    assert.deepEqual(
      api.requests.map((r) => r.headers["idempotency-key"]),
      ["k-1", "k-1"],
    );
  });
});

test("a network failure that outlasts the retries is a GenJobsError with status 0", async () => {
  const api = await new FakeApi().start();
  await api.stop(); // nothing listens there any more
  const error = await client(api, { maxRetries: 1 })
    .get(JOB_ID)
    .catch((e) => e);
  assert.ok(error instanceof GenJobsError);
  assert.equal(error.status, 0);
  assert.equal(error.type, "network");
});

test("an ended job answers its terminal event at once", async () => {
  const events = [
    { id: "9", event: "failed", data: jobView("failed", { error: { code: "x", message: "m" } }) },
  ];
  await withApi({ events }, async (api) => {
    const job = await client(api).follow(JOB_ID, {});
    assert.equal(job.status, "failed");
    assert.deepEqual(job.error, { code: "x", message: "m" });
  });
});

test("idempotency keys are UUIDs where crypto.randomUUID is missing (plain http)", async () => {
  const randomUUID = globalThis.crypto.randomUUID;
  globalThis.crypto.randomUUID = undefined;
  try {
    await withApi({}, async (api) => {
      await client(api).submit("summarize", { text: "hello" });
      const key = api.requests[0].headers["idempotency-key"];
      assert.match(key, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    });
  } finally {
    globalThis.crypto.randomUUID = randomUUID;
  }
});
