// Callstream supervisor dashboard: plain JavaScript, no build step, no dependencies.
//
// The page starts from GET /v1/calls (one read per state), then follows the live event feed
// (GET /v1/events, Server-Sent Events). The feed is read with fetch() and a small SSE parser
// rather than EventSource, because EventSource cannot send headers and the API key must never
// travel in a URL (URLs end up in logs and browser history). The key is kept in sessionStorage:
// it lives as long as the tab, and is not shared with other tabs or written to disk by us.
//
// Everything the server says goes into the page as text (textContent, title, dataset), never
// as HTML, so a call id or a transcript can never become markup or script.
"use strict";

const KEY_STORAGE = "callstream.apiKey";
const STATES = ["IN_PROGRESS", "COMPLETED", "PROCESSING_AI", "ARCHIVED", "FAILED"];
const LIVE_STATES = new Set(["IN_PROGRESS", "COMPLETED", "PROCESSING_AI"]);
// How many calls of each state the first read asks for (newest first).
const SNAPSHOT_LIMITS = {
  IN_PROGRESS: 500,
  COMPLETED: 200,
  PROCESSING_AI: 200,
  ARCHIVED: 100,
  FAILED: 200,
};
const KEEP_FINISHED = 200; // ARCHIVED calls kept in memory; older ones are forgotten
const MAX_ROWS = 300; // rows drawn per table: the rest is a search away
const SYSTEM_POLL_MS = 2000;
const RATE_WINDOW_S = 5; // packets/s is averaged over this window
const STALE_PACKET_S = 5; // a live call silent this long is marked
const FEED_SILENCE_S = 45; // the server pings every 15 s: this much silence means a dead link
const MAX_RETRY_MS = 30000;
const CALL_ID = /^[A-Za-z0-9._:-]{1,128}$/; // the API's own rule for a call id
const BADGES = new Set([...STATES, "positive", "neutral", "negative"]);

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------
// The model: what the page knows of each call, from the first read and then from events.

const calls = new Map(); // call id -> call (see newCall)

function newCall(id) {
  return {
    id,
    state: "IN_PROGRESS",
    createdAt: null, // epoch seconds (server clock)
    completedAt: null,
    finishedAt: null,
    // Counters: null until the page has read them. The feed's first event of a call carries
    // none, and progress events come at most once an interval, so a short call's counters
    // are known from a read of the call only (refreshCall), never shown as 0 meanwhile.
    received: null,
    duplicates: null,
    outOfOrder: null,
    missing: null,
    lastPacketAt: null,
    aiStep: null,
    aiAttempt: null,
    aiOutcome: null,
    aiError: null, // of the last attempt, shown on hover
    attempts: 0,
    completion: null, // explicit | idle | replay
    failure: null, // why it FAILED
    sentiment: null,
    excerpt: null,
    replaying: false,
    pinned: false, // looked up by a search: kept even if old
  };
}

function callFor(id) {
  let call = calls.get(id);
  if (!call) {
    call = newCall(id);
    calls.set(id, call);
  }
  return call;
}

const seconds = (iso) => (iso ? Date.parse(iso) / 1000 : null);
const excerptOf = (text) => (text ? text.slice(0, 140) : null);

// A call as GET /v1/calls or GET /v1/calls/{id} answers it (service/schemas.py CallStatus).
function applyRecord(record) {
  const call = callFor(record.call_id);
  Object.assign(call, {
    state: record.state,
    createdAt: seconds(record.created_at),
    completedAt: seconds(record.completed_at),
    finishedAt: seconds(record.finished_at),
    received: record.packets_received,
    duplicates: record.duplicate_packets,
    outOfOrder: record.out_of_order_packets,
    missing: record.missing_count,
    attempts: record.ai_attempts,
    completion: record.completion_reason,
    failure: record.state === "FAILED" ? record.last_error : null,
    sentiment: record.sentiment,
    excerpt: excerptOf(record.transcript),
  });
  return call;
}

// One event of the feed (notes: the events contract). Each carries absolute values, so
// applying one twice (the feed may repeat a final state) changes nothing.
function applyEvent(event) {
  if (typeof event.call_id !== "string") return;
  clock.sample(event.at);
  const call = callFor(event.call_id);
  if (event.type === "state") applyState(call, event);
  else if (event.type === "attempt") applyAttempt(call, event);
  else if (event.type === "progress") applyProgress(call, event);
}

function applyState(call, event) {
  call.state = event.state;
  if (event.state === "IN_PROGRESS") {
    // The call's first packet: its start, and its last packet so far.
    call.createdAt ??= event.at;
    call.lastPacketAt ??= event.at;
  } else if (event.state === "COMPLETED") {
    call.completion = event.reason;
    if (event.reason === "replay") {
      // A replay starts the AI over: the old failure and attempt no longer describe it.
      Object.assign(call, { failure: null, finishedAt: null, aiStep: null, aiAttempt: null,
        aiOutcome: null, aiError: null });
    } else {
      call.completedAt = event.at;
      // A short call sent no progress event: its counters are read now, not once it is ARCHIVED.
      if (call.received === null) refresh.soon(call.id);
    }
    call.replaying = false;
  } else if (event.state === "ARCHIVED") {
    call.finishedAt = event.at;
    call.sentiment = event.sentiment ?? call.sentiment;
    call.excerpt = excerptOf(event.transcript_excerpt) ?? call.excerpt;
    refresh.soon(call.id); // exact final counters (progress events are throttled)
  } else if (event.state === "FAILED") {
    call.finishedAt = event.at;
    call.failure = event.reason;
    refresh.soon(call.id);
  }
  if (call.createdAt === null) refresh.soon(call.id); // started before this page was looking
}

function applyAttempt(call, event) {
  if (call.state === "IN_PROGRESS" || call.state === "COMPLETED") call.state = "PROCESSING_AI";
  Object.assign(call, {
    aiStep: event.step,
    aiAttempt: event.attempt,
    aiOutcome: event.outcome,
    aiError: event.error ?? null,
  });
  call.attempts += 1;
}

function applyProgress(call, event) {
  // Progress only counts packets: it never moves a call that has already moved on.
  rate.add(Math.max(event.received - (call.received ?? 0), 0));
  Object.assign(call, {
    received: event.received,
    duplicates: event.duplicates,
    outOfOrder: event.out_of_order,
    missing: event.missing,
    lastPacketAt: event.last_packet_at,
  });
}

// Only the newest finished calls are kept, so a day-long session does not grow without bound.
function forgetOldFinished() {
  const finished = [...calls.values()].filter((c) => c.state === "ARCHIVED" && !c.pinned);
  if (finished.length <= KEEP_FINISHED) return;
  finished.sort((a, b) => (b.finishedAt ?? 0) - (a.finishedAt ?? 0));
  for (const call of finished.slice(KEEP_FINISHED)) calls.delete(call.id);
}

// The server's clock, estimated from event times: ages and durations are differences against
// server timestamps, and a laptop's clock may be seconds off. Network delay only makes an event
// look older, so the largest recent offset is the best estimate.
const clock = {
  samples: [],
  offset: 0,
  now() {
    return Date.now() / 1000 + this.offset;
  },
  sample(at) {
    if (typeof at !== "number") return;
    this.samples.push(at - Date.now() / 1000);
    if (this.samples.length > 20) this.samples.shift();
    this.offset = Math.max(...this.samples);
  },
};

// Packets a second across live calls, from the progress events' counters.
const rate = {
  added: [], // [local time s, packets]
  add(packets) {
    if (packets > 0) this.added.push([Date.now() / 1000, packets]);
  },
  perSecond() {
    const since = Date.now() / 1000 - RATE_WINDOW_S;
    this.added = this.added.filter(([at]) => at >= since);
    return this.added.reduce((sum, [, packets]) => sum + packets, 0) / RATE_WINDOW_S;
  },
};

// Re-reads of single calls at a bounded pace (at most 4 a second): counters at a call's end,
// final values, calls first seen mid-way. A burst of finishing calls must not turn into a burst
// of requests. A read that fails is tried again later, and one that an event overtook is read
// again: a row must not keep the values of a read that never landed.
const REFRESH_BATCH = 4;
const REFRESH_TRIES = 8; // then the call keeps what the feed said of it
const refresh = {
  due: new Map(), // call id -> { at: ms, tries }
  timer: null,
  running: false,
  soon(id, delayMs = 300) {
    const at = Date.now() + delayMs;
    const known = this.due.get(id);
    if (!known || known.at > at) this.due.set(id, { at, tries: known?.tries ?? 0 });
    if (this.due.size > 50) this.due.delete(this.due.keys().next().value);
    this.arm(0);
  },
  retry(id, tries) {
    if (tries + 1 >= REFRESH_TRIES) return;
    this.due.set(id, { at: Date.now() + Math.min(1000 * 2 ** tries, 30000), tries: tries + 1 });
    this.arm(0);
  },
  arm(minMs) {
    if (this.running || !this.due.size) return;
    const next = Math.min(...[...this.due.values()].map((entry) => entry.at));
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.drain(), Math.max(next - Date.now(), minMs));
  },
  async drain() {
    this.timer = null;
    this.running = true;
    const now = Date.now();
    const batch = [...this.due].filter(([, entry]) => entry.at <= now).slice(0, REFRESH_BATCH);
    batch.forEach(([id]) => this.due.delete(id));
    await Promise.all(batch.map(([id, entry]) => refreshCall(id, entry.tries)));
    this.running = false;
    scheduleRender();
    this.arm(batch.length ? 1000 : 0);
  },
};

async function refreshCall(id, tries = 0) {
  const before = calls.get(id);
  if (!before) return;
  const state = before.state;
  let record;
  try {
    record = await api(`/v1/calls/${encodeURIComponent(id)}`);
  } catch (error) {
    if (isAuthError(error)) askForKey(error);
    else if (error.status !== 404) refresh.retry(id, tries); // a network error, a 503...
    return;
  }
  if (calls.get(id) !== before) return; // forgotten, or the calls were read afresh meanwhile
  // An event that arrived meanwhile is newer than this answer: read the call again.
  if (before.state !== state) refresh.soon(id);
  else applyRecord(record);
}

// ---------------------------------------------------------------------------------------------
// The API: every request carries the key in a header; errors are problem details.

class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail);
    Object.assign(this, { status, code, detail });
  }
}

const isAuthError = (error) => error instanceof ApiError && [401, 403].includes(error.status);

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function apiError(response) {
  let code = `http_${response.status}`;
  let detail = response.statusText || `HTTP ${response.status}`;
  try {
    const body = await response.json();
    code = body.code ?? code;
    detail = body.detail ?? detail;
  } catch {
    // Not problem details (a proxy's page, say): the status says enough.
  }
  return new ApiError(response.status, code, detail);
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...authHeaders(), ...options.headers };
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) throw await apiError(response);
  return response.json();
}

// ---------------------------------------------------------------------------------------------
// The live feed: fetch + ReadableStream + an SSE parser; resumes with Last-Event-ID.

// A parser for the text/event-stream format (WHATWG HTML, "Server-sent events"), fed chunks of
// text as they arrive; a line or an event may be split across chunks.
function sseParser({ onEvent, onRetry }) {
  let pending = "";
  let skipLineFeed = false; // a CR ended the last chunk: a LF opening this one is the same break
  let data = [];
  let type = "";
  let lastId = null; // kept across events, as the spec says

  function field(line) {
    if (line === "") {
      if (data.length) onEvent({ type: type || "message", data: data.join("\n"), id: lastId });
      data = [];
      type = "";
      return;
    }
    if (line.startsWith(":")) return; // a comment: the server's keep-alive ping
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "data") data.push(value);
    else if (name === "event") type = value;
    else if (name === "id" && !value.includes("\0")) lastId = value;
    else if (name === "retry" && /^\d+$/.test(value)) onRetry(Number(value));
  }

  return (chunk) => {
    if (skipLineFeed && chunk.startsWith("\n")) chunk = chunk.slice(1);
    pending += chunk;
    skipLineFeed = pending.endsWith("\r");
    const lines = pending.split(/\r\n|\r|\n/);
    pending = lines.pop();
    lines.forEach(field);
  };
}

// Each start() opens a session and stop() ends it: the loops and timers of an ended session stop
// at their next step, so entering a key twice never leaves two feeds or two pollers running.
let session = 0;
const current = (id) => id === session;

const feed = {
  controller: null,
  lastEventId: null,
  retryMs: 2000, // the server's `retry:` replaces this
  failures: 0,
  lastHeardAt: 0,
  lastEventAt: null,
  stalled: false,
  lastError: "",
};

// Until the first read of the calls has landed, events wait here: applied on top of it, they
// bring it up to date (events are absolute values, so one it already reflects does no harm).
const snapshot = { generation: 0, loading: false, loadedOnce: false, buffer: [] };

async function runFeed(id) {
  while (current(id)) {
    try {
      await readFeed();
      feed.failures = 0; // the server ended a healthy stream (a restart, say): come right back
      feed.lastError = "the stream ended";
    } catch (error) {
      if (!current(id)) return;
      if (isAuthError(error)) return askForKey(error);
      feed.failures += 1;
      feed.lastError = feed.stalled ? "no data for a while" : error.message || String(error);
      // Without the feed the calls are still worth seeing: read them while it reconnects.
      if (!snapshot.loadedOnce && !snapshot.loading) loadSnapshot();
    }
    if (!current(id)) return;
    const wait = Math.min(feed.retryMs * 2 ** Math.max(feed.failures - 1, 0), MAX_RETRY_MS);
    const seconds = Math.max(Math.round(wait / 1000), 1);
    setFeedStatus("down", `Live feed lost (${feed.lastError}); reconnecting in ${seconds} s…`);
    await sleep(wait);
  }
}

async function readFeed() {
  setFeedStatus("connecting", "Connecting to the live feed…");
  feed.controller = new AbortController();
  feed.stalled = false;
  const headers = { Accept: "text/event-stream", ...authHeaders() };
  if (feed.lastEventId) headers["Last-Event-ID"] = feed.lastEventId;
  const response = await fetch("/v1/events", {
    headers,
    cache: "no-store",
    signal: feed.controller.signal,
  });
  if (!response.ok) throw await apiError(response);
  feed.lastHeardAt = Date.now();

  const push = sseParser({ onEvent: onFeedEvent, onRetry: (ms) => (feed.retryMs = ms) });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  for (let first = true; ; first = false) {
    const { value, done } = await reader.read();
    if (done) return;
    feed.lastHeardAt = Date.now();
    if (first) {
      // The server writes its first bytes (": connected") once it has subscribed us. With no
      // position to resume from, what happened before is unknown: read the calls now; events
      // from here on wait for that read (loadSnapshot starts buffering before it awaits).
      setFeedStatus("connected", "Live feed connected");
      if (!feed.lastEventId) loadSnapshot();
    }
    push(value);
  }
}

function onFeedEvent({ type, data, id }) {
  if (type === "reset") {
    // The resume position fell out of the feed's window: events were missed. Start over.
    loadSnapshot();
  } else if (type === "state" || type === "attempt" || type === "progress") {
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      return; // not an event of ours: skipped rather than stopping the feed
    }
    if (snapshot.loading) snapshot.buffer.push(event);
    else applyEvent(event);
    feed.lastEventAt = Date.now();
    scheduleRender();
  }
  if (id) feed.lastEventId = id;
}

// A connection can die without closing (a laptop's sleep, a proxy): the server pings every
// 15 s, so a long silence means the link is gone and the feed reconnects.
function watchFeed() {
  const silentS = (Date.now() - feed.lastHeardAt) / 1000;
  if (feed.controller && !feed.stalled && silentS > FEED_SILENCE_S) {
    feed.stalled = true;
    feed.controller.abort();
  }
}

async function loadSnapshot() {
  const id = session;
  const generation = ++snapshot.generation;
  snapshot.loading = true;
  snapshot.buffer = [];
  try {
    const pages = await Promise.all(
      STATES.map((state) => api(`/v1/calls?state=${state}&limit=${SNAPSHOT_LIMITS[state]}`)),
    );
    if (generation !== snapshot.generation) return; // a newer read is under way
    calls.clear();
    pages.forEach((page) => page.items.forEach(applyRecord));
    snapshot.loadedOnce = true;
  } catch (error) {
    if (generation !== snapshot.generation) return;
    if (isAuthError(error)) askForKey(error);
    else setTimeout(() => current(id) && loadSnapshot(), 5000);
  }
  snapshot.loading = false;
  snapshot.buffer.forEach(applyEvent);
  snapshot.buffer = [];
  scheduleRender();
}

// ---------------------------------------------------------------------------------------------
// The system strip: GET /v1/system every couple of seconds (service/routes/system.py).

let systemTimer = null;

async function pollSystem(id) {
  if (!document.hidden) {
    try {
      const system = await api("/v1/system");
      if (current(id)) showSystem(system);
    } catch (error) {
      if (!current(id)) return;
      if (isAuthError(error)) return askForKey(error);
      setStrip("sys-postgres", "?", "bad", `The status could not be read: ${error.message}`);
    }
  }
  if (current(id)) systemTimer = setTimeout(() => pollSystem(id), SYSTEM_POLL_MS);
}

function showSystem(system) {
  setStrip("sys-live", count(system.live_calls));
  setStrip("sys-backlog", count(system.awaiting_worker), system.awaiting_worker > 0 ? "warn" : "",
    `${system.awaiting_flush} completed calls not yet in PostgreSQL`);
  setStrip("sys-queue", count(system.queued_jobs));
  const oldest = system.oldest_waiting_s;
  setStrip("sys-oldest", oldest === null ? "–" : formatSeconds(oldest), oldest > 30 ? "warn" : "");
  const breaker = system.ai_breaker;
  const breakerClass = { closed: "ok", half_open: "warn", open: "bad" }[breaker.state] ?? "";
  setStrip("sys-breaker", breaker.state.replace("_", "-"), breakerClass,
    `${breaker.consecutive_failures} consecutive AI failures`);
  setStrip("sys-postgres", system.postgres_available ? "up" : "down",
    system.postgres_available ? "ok" : "bad");
  const heartbeat = system.worker_heartbeat;
  setStrip("sys-worker", heartbeat ? describeHeartbeat(heartbeat) : "no worker running",
    heartbeat ? "" : "bad", heartbeat ?? "");
}

// arq's health line: "Mar-03 12:00:01 j_complete=5 j_failed=0 j_retried=1 j_ongoing=2 queued=0".
function describeHeartbeat(line) {
  const fields = Object.fromEntries(line.match(/\w+=\d+/g)?.map((f) => f.split("=")) ?? []);
  const time = line.match(/\d\d:\d\d:\d\d/)?.[0];
  if (!time || fields.j_complete === undefined) return line;
  return `${time} · ${fields.j_ongoing} running · ${fields.j_complete} done · ` +
    `${fields.j_failed} failed`;
}

function setStrip(id, text, tone = "", title = "") {
  const element = $(id);
  element.textContent = text;
  element.className = tone;
  element.title = title;
}

// ---------------------------------------------------------------------------------------------
// Tables: columns, sorting, search, and keyed rows updated in place.

const count = (n) => (n ?? 0).toLocaleString("en");
const ageOf = (at, now) => (at === null ? null : Math.max(now - at, 0));
const ageText = (at, now) => (at === null ? "–" : `${formatSeconds(ageOf(at, now))} ago`);
const timeText = (at) => (at === null ? "" : new Date(at * 1000).toLocaleString());

function formatSeconds(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "–";
  if (s < 60) return `${Math.floor(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} m ${String(Math.floor(s % 60)).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} m`;
}

// A call's length: tenths under 10 s, where whole seconds would show a short call as "0 s".
function formatDuration(s) {
  if (s === null || s === undefined || Number.isNaN(s) || s >= 10) return formatSeconds(s);
  return `${(Math.floor(s * 10) / 10).toFixed(1)} s`;
}

// How long the call has lasted: still counting while it receives packets.
function callDuration(call, now) {
  if (call.createdAt === null) return null;
  const end = call.state === "IN_PROGRESS" ? now : call.completedAt;
  return end === null ? null : Math.max(end - call.createdAt, 0);
}

// The step of the last AI attempt the feed reported (an attempt is reported once it ends).
function aiStepText(call) {
  if (!call.aiStep) return { COMPLETED: "queued", PROCESSING_AI: "started" }[call.state] ?? "–";
  return call.aiOutcome && call.aiOutcome !== "ok" ? `${call.aiStep} (${call.aiOutcome})`
    : call.aiStep;
}

// The call id links to the call's page (a link: reached with Tab, followed with Enter).
const idColumn = { key: "id", label: "Call", value: (c) => c.id, text: (c) => c.id, cls: () => "id",
  link: true };
const known = (n) => (n === null || n === undefined ? "–" : count(n));
const numeric = (key, label, value) => ({ key, label, num: true, value, text: (c) => known(value(c)) });

const TABLES = {
  live: {
    includes: (c) => LIVE_STATES.has(c.state),
    sort: { key: "duration", descending: false },
    columns: [
      idColumn,
      { key: "state", label: "State", value: (c) => STATES.indexOf(c.state),
        text: (c) => c.state, badge: (c) => c.state },
      { key: "duration", label: "Duration", num: true, value: callDuration,
        text: (c, now) => formatDuration(callDuration(c, now)) },
      numeric("packets", "Packets", (c) => c.received),
      { ...numeric("gaps", "Gaps", (c) => c.missing), cls: (c) => (c.missing ? "gaps" : "") },
      numeric("duplicates", "Duplicates", (c) => c.duplicates),
      numeric("reordered", "Out of order", (c) => c.outOfOrder),
      { key: "last", label: "Last packet", num: true, value: (c, now) => ageOf(c.lastPacketAt, now),
        text: (c, now) => ageText(c.lastPacketAt, now),
        cls: (c, now) => (c.state === "IN_PROGRESS" && ageOf(c.lastPacketAt, now) > STALE_PACKET_S
          ? "stale" : "") },
      { key: "step", label: "AI step", value: aiStepText, text: aiStepText,
        title: (c) => c.aiError ?? "" },
      { key: "attempt", label: "Attempt", num: true, value: (c) => c.aiAttempt,
        text: (c) => (c.aiAttempt ?? "–") },
    ],
  },
  failed: {
    includes: (c) => c.state === "FAILED",
    sort: { key: "failed", descending: false },
    columns: [
      idColumn,
      { key: "failed", label: "Failed", num: true, value: (c, now) => ageOf(c.finishedAt, now),
        text: (c, now) => ageText(c.finishedAt, now), title: (c) => timeText(c.finishedAt) },
      { key: "reason", label: "Reason", value: (c) => c.failure ?? "", text: (c) => c.failure ?? "–",
        cls: () => "reason" },
      numeric("attempts", "Attempts", (c) => c.attempts),
      { key: "replay", label: "Replay", value: (c) => c.id, replay: true },
    ],
  },
  finished: {
    includes: (c) => c.state === "ARCHIVED",
    sort: { key: "finished", descending: false },
    columns: [
      idColumn,
      { key: "finished", label: "Finished", num: true, value: (c, now) => ageOf(c.finishedAt, now),
        text: (c, now) => ageText(c.finishedAt, now), title: (c) => timeText(c.finishedAt) },
      { key: "duration", label: "Duration", num: true, value: callDuration,
        text: (c, now) => formatDuration(callDuration(c, now)) },
      numeric("packets", "Packets", (c) => c.received),
      { key: "sentiment", label: "Sentiment", value: (c) => c.sentiment?.score ?? null,
        text: (c) => (c.sentiment ? `${c.sentiment.label} ${c.sentiment.score.toFixed(2)}` : "–"),
        badge: (c) => c.sentiment?.label ?? "" },
      { key: "transcript", label: "Transcript", value: (c) => c.excerpt ?? "",
        text: (c) => c.excerpt ?? "–", title: (c) => c.excerpt ?? "", cls: () => "text",
        clamp: true },
    ],
  },
};

const tableRows = { live: new Map(), failed: new Map(), finished: new Map() }; // id -> <tr>

function buildHeaders() {
  for (const [name, table] of Object.entries(TABLES)) {
    const row = document.createElement("tr");
    for (const column of table.columns) {
      const th = document.createElement("th");
      th.scope = "col";
      th.dataset.key = column.key;
      if (column.num) th.className = "num";
      if (column.replay) {
        th.textContent = column.label; // an action, not a value: nothing to sort by
        th.className = "action";
      } else {
        const button = document.createElement("button");
        button.type = "button";
        button.append(column.label, arrowSpan());
        button.addEventListener("click", () => sortBy(name, column.key));
        th.append(button);
      }
      row.append(th);
    }
    $(`${name}-table`).tHead.append(row);
    showSortState(name);
  }
}

function arrowSpan() {
  const arrow = document.createElement("span");
  arrow.className = "arrow";
  arrow.setAttribute("aria-hidden", "true");
  return arrow;
}

function sortBy(name, key) {
  const sort = TABLES[name].sort;
  sort.descending = sort.key === key ? !sort.descending : false;
  sort.key = key;
  showSortState(name);
  scheduleRender();
}

function showSortState(name) {
  const sort = TABLES[name].sort;
  for (const th of $(`${name}-table`).tHead.rows[0].cells) {
    const sorted = th.dataset.key === sort.key;
    if (sorted) th.setAttribute("aria-sort", sort.descending ? "descending" : "ascending");
    else th.removeAttribute("aria-sort");
    const arrow = th.querySelector(".arrow");
    if (arrow) arrow.textContent = sorted ? (sort.descending ? "▼" : "▲") : "";
  }
}

// Unknown values (a call seen mid-way) go last whichever way the column is sorted.
function compareBy(column, descending, now) {
  return (a, b) => {
    const x = column.value(a, now);
    const y = column.value(b, now);
    if (x === null || x === undefined) return y === null || y === undefined ? 0 : 1;
    if (y === null || y === undefined) return -1;
    const order = typeof x === "number" && typeof y === "number" ? x - y
      : String(x).localeCompare(String(y), "en", { numeric: true });
    return (descending ? -order : order) || a.id.localeCompare(b.id);
  };
}

function searchTerm() {
  return $("search").value.trim().toLowerCase();
}

function renderTable(name, now) {
  const table = TABLES[name];
  const term = searchTerm();
  const matching = [...calls.values()].filter(
    (c) => table.includes(c) && (!term || c.id.toLowerCase().includes(term)),
  );
  const column = table.columns.find((c) => c.key === table.sort.key);
  matching.sort(compareBy(column, table.sort.descending, now));
  const shown = matching.slice(0, MAX_ROWS);

  const rows = tableRows[name];
  const tbody = $(`${name}-table`).tBodies[0];
  const keep = new Set(shown.map((c) => c.id));
  for (const [id, tr] of rows) {
    if (!keep.has(id)) {
      tr.remove();
      rows.delete(id);
    }
  }
  shown.forEach((call, index) => {
    let tr = rows.get(call.id);
    if (!tr) {
      tr = createRow(table, call);
      rows.set(call.id, tr);
    }
    updateRow(tr, table, call, now);
    // Rows move only when the order changed: moving a row would take the focus off its button.
    if (tbody.rows[index] !== tr) tbody.insertBefore(tr, tbody.rows[index] ?? null);
  });

  $(`${name}-count`).textContent = count(matching.length);
  const empty = $(`${name}-empty`);
  empty.hidden = matching.length > 0;
  empty.textContent = term ? `No call id here contains “${searchTerm()}”.` : empty.dataset.text;
  showMore(name, tbody, matching.length, shown.length);
  return matching.length;
}

function showMore(name, tbody, total, shown) {
  const panel = tbody.closest(".panel");
  let more = panel.querySelector(".more");
  if (total <= shown) return more?.remove();
  if (!more) {
    more = document.createElement("p");
    more.className = "more";
    panel.append(more);
  }
  more.textContent = `Showing ${shown} of ${count(total)}: search by call id to find the others.`;
}

function createRow(table, call) {
  const tr = document.createElement("tr");
  tr.dataset.callId = call.id;
  for (const column of table.columns) {
    const td = document.createElement("td");
    td.dataset.key = column.key;
    if (column.replay) td.append(replayButton(call.id));
    else if (column.link) td.append(callLink(call.id));
    else if (column.badge) td.append(document.createElement("span"));
    else if (column.clamp) td.append(Object.assign(document.createElement("div"), { className: "clamp" }));
    tr.append(td);
  }
  return tr;
}

function updateRow(tr, table, call, now) {
  table.columns.forEach((column, i) => {
    const td = tr.cells[i];
    if (column.replay) return updateReplayButton(td.firstChild, call);
    const target = column.badge || column.clamp || column.link ? td.firstChild : td;
    setIfChanged(target, "textContent", String(column.text(call, now)));
    const classes = [column.num ? "num" : "", column.cls?.(call, now) ?? ""];
    setIfChanged(td, "className", classes.join(" ").trim());
    if (column.badge) {
      const badge = column.badge(call);
      setIfChanged(target, "className", BADGES.has(badge) ? `badge ${badge}` : "badge");
    }
    if (column.title) setIfChanged(td, "title", column.title(call));
  });
}

// Writing only what changed keeps a once-a-second redraw of hundreds of rows cheap.
function setIfChanged(element, property, value) {
  if (element[property] !== value) element[property] = value;
}

function callLink(id) {
  const link = document.createElement("a");
  link.href = callHref(id);
  link.title = "Open this call's page";
  return link;
}

function replayButton(id) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = "Replay";
  button.setAttribute("aria-label", `Replay ${id}`);
  button.addEventListener("click", () => replay(id));
  return button;
}

function updateReplayButton(button, call) {
  setIfChanged(button, "disabled", call.replaying);
  setIfChanged(button, "textContent", call.replaying ? "Replaying…" : "Replay");
}

// POST /v1/calls/{id}/retry (admin): the feed then shows the call moving on.
async function replay(id) {
  const call = calls.get(id);
  if (!call || call.replaying) return;
  call.replaying = true;
  scheduleRender();
  try {
    await api(`/v1/calls/${encodeURIComponent(id)}/retry`, { method: "POST" });
    note(`Replay of ${id} accepted.`);
  } catch (error) {
    call.replaying = false;
    if (error.status === 403) note(`Replay needs an admin key: ${error.detail}`, true);
    else if (error.status === 409) {
      note(`${id} is no longer FAILED.`, true);
      refresh.soon(id);
    } else note(`Replay of ${id} failed: ${error.message}`, true);
  }
  scheduleRender();
}

function note(text, bad = false) {
  const element = $("replay-note");
  element.textContent = text;
  element.className = bad ? "note bad" : "note";
}

let renderPending = false;

function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(render);
}

function render() {
  renderPending = false;
  forgetOldFinished();
  const now = clock.now();
  const found = Object.keys(TABLES).reduce((sum, name) => sum + renderTable(name, now), 0);
  const term = searchTerm();
  $("search-note").textContent = term && !found ? `No call matches “${term}”.` : "";
  $("sys-rate").textContent = rate.perSecond().toFixed(1);
  showFeedAge();
  showCallClock();
}

// ---------------------------------------------------------------------------------------------
// Search: filters the tables as you type; Enter looks up an id the page has not seen.

const lookedUp = new Set();

async function lookUp(term) {
  if (!CALL_ID.test(term) || calls.has(term) || lookedUp.has(term)) return;
  lookedUp.add(term);
  try {
    applyRecord(await api(`/v1/calls/${encodeURIComponent(term)}`)).pinned = true;
  } catch (error) {
    if (isAuthError(error)) return askForKey(error);
    $("search-note").textContent =
      error.status === 404 ? `No call has the id “${term}”.` : error.message;
    return;
  }
  scheduleRender();
}

// ---------------------------------------------------------------------------------------------
// One call's page, at #/calls/<id> in this same page (no route of its own on the server): its
// status (GET /v1/calls/{id}: the counters per track, the transcript), its conversation (GET
// /v1/calls/{id}/transcript and the feed's utterances: see below), its history (GET
// /v1/calls/{id}/history: the state transitions and AI attempts, once flushed), its recording
// (GET /v1/calls/{id}/audio), and its own feed (GET /v1/events?call_id=<id>), which re-reads
// what an event changed while the call is live. An <audio> element cannot send a header, and
// the key never goes into a URL: the WAV is fetched with the key into a Blob, and the player
// plays that Blob's object URL (the policy allows blob: media, nothing else).

const CALL_ROUTE = /^#\/calls\/([^/?#]+)$/;
const TRACKS = { inbound: "Caller (inbound)", outbound: "Agent (outbound)" };
const WAV_HEADER_BYTES = 44;

const callPage = {
  id: null,
  generation: 0, // a new page (or leaving it) ends the old page's feed and ignores its answers
  controller: null,
  lastEventId: null,
  loaded: false,
  record: null,
  timers: {},
  audio: { url: null, etag: null, loading: false, again: false, shape: undefined },
};

const callPath = (id, more = "") => `/v1/calls/${encodeURIComponent(id)}${more}`;
const callHref = (id) => `#/calls/${encodeURIComponent(id)}`;
const onPage = (generation) => generation === callPage.generation;

// Which page the address names: a call's, or the list (null).
function routedCall() {
  const match = location.hash.match(CALL_ROUTE);
  if (!match) return null;
  try {
    const id = decodeURIComponent(match[1]);
    return CALL_ID.test(id) ? id : null;
  } catch {
    return null; // not percent-encoding: the list
  }
}

// Shows the page the address names; until the key is accepted, neither (start() calls this).
function showRoute() {
  if (!admitted) return;
  const id = routedCall();
  if (id === null) return showBoard();
  if (id !== callPage.id) openCallPage(id);
}

function showBoard() {
  const left = callPage.id;
  leaveCallPage();
  $("board").hidden = false;
  $("search-box").hidden = false;
  document.title = "Callstream · supervisor";
  if (left === null) return;
  // Back where the supervisor came from: the call's row, else the top of the list.
  const link = document.querySelector(`#board tr[data-call-id="${CSS.escape(left)}"] a`);
  if (link) link.focus();
  scheduleRender();
}

function leaveCallPage() {
  callPage.generation += 1;
  callPage.id = null;
  callPage.controller?.abort();
  Object.values(callPage.timers).forEach(clearTimeout);
  callPage.timers = {};
  const player = $("call-audio");
  player.pause();
  player.removeAttribute("src");
  player.load();
  if (callPage.audio.url) URL.revokeObjectURL(callPage.audio.url);
  callPage.audio = { url: null, etag: null, loading: false, again: false, shape: undefined };
  $("call-page").hidden = true;
}

function openCallPage(id) {
  leaveCallPage();
  Object.assign(callPage, { id, lastEventId: null, loaded: false, record: null });
  const generation = callPage.generation;
  $("board").hidden = true;
  $("search-box").hidden = true;
  $("call-page").hidden = false;
  document.title = `${id} · Callstream`;
  $("call-id").textContent = id;
  for (const name of ["call-error", "call-failure", "audio-note", "call-transcript"]) {
    $(name).textContent = "";
  }
  $("history-note").textContent = "Loading…";
  $("ai-note").textContent = "";
  $("call-audio").hidden = true;
  for (const table of ["tracks-table", "transitions-table", "ai-table"]) {
    $(table).tBodies[0].replaceChildren();
  }
  showCallState(null);
  resetConversation();
  $("call-title").focus();
  runCallFeed(generation);
}

// Reads of the same thing may overlap (an event comes while one is under way): only the answer
// of the last one started is shown, whichever lands last.
const started = {};
function lastStarted(what) {
  const mine = (started[what] = (started[what] ?? 0) + 1);
  return () => started[what] === mine;
}

// Re-reads after events, each at most once per `ms`: a burst of events is one read.
function later(what, ms, read) {
  if (callPage.timers[what]) return;
  const generation = callPage.generation;
  callPage.timers[what] = setTimeout(() => {
    delete callPage.timers[what];
    if (onPage(generation)) read(generation);
  }, ms);
}

function loadCallPage(generation) {
  callPage.loaded = true;
  readCallStatus(generation);
  readCallTranscript(generation);
  readCallHistory(generation);
  readCallAudio(generation);
}

// --- its feed: the main feed's reader (sseParser), for this call's events only ------------------

async function runCallFeed(generation) {
  let failures = 0;
  while (onPage(generation)) {
    try {
      await readCallFeed(generation);
      failures = 0;
    } catch (error) {
      if (!onPage(generation)) return;
      if (isAuthError(error)) return askForKey(error);
      failures += 1;
      if (!callPage.loaded) loadCallPage(generation); // without the feed, still worth a look
    }
    if (!onPage(generation)) return;
    const wait = Math.min(feed.retryMs * 2 ** Math.max(failures - 1, 0), MAX_RETRY_MS);
    setCallFeed("down", `Updates lost; reconnecting in ${Math.max(Math.round(wait / 1000), 1)} s…`);
    await sleep(wait);
  }
}

async function readCallFeed(generation) {
  setCallFeed("connecting", "Connecting…");
  const controller = (callPage.controller = new AbortController());
  const headers = { Accept: "text/event-stream", ...authHeaders() };
  if (callPage.lastEventId) headers["Last-Event-ID"] = callPage.lastEventId;
  const response = await fetch(`/v1/events?call_id=${encodeURIComponent(callPage.id)}`, {
    headers,
    cache: "no-store",
    signal: controller.signal,
  });
  if (!response.ok) throw await apiError(response);
  const push = sseParser({ onEvent: (event) => onCallEvent(generation, event), onRetry: () => {} });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  for (let first = true; ; first = false) {
    const { value, done } = await reader.read();
    if (done || !onPage(generation)) return;
    if (first) {
      // Subscribed (the server's first bytes): what happened before is read now, so no event
      // falls between the read and the subscription.
      setCallFeed("connected");
      if (!callPage.lastEventId) loadCallPage(generation);
    }
    push(value);
  }
}

function onCallEvent(generation, { type, data, id }) {
  if (!onPage(generation)) return;
  if (id) callPage.lastEventId = id;
  if (type === "reset") return loadCallPage(generation); // events were missed: read it all
  let event;
  try {
    event = JSON.parse(data);
  } catch {
    return;
  }
  if (event.call_id !== callPage.id) return;
  // An utterance is all there in its event: shown as it comes, no read needed.
  if (type === "utterance") return addUtterances([event]);
  later("status", 250, readCallStatus);
  if (type === "state" || type === "attempt") later("history", 400, readCallHistory);
  // A new state: the transcript again (the call's figures come with ARCHIVED; the read adds
  // any utterance the feed did not bring, and none twice).
  if (type === "state") later("transcript", 400, readCallTranscript);
  // A stored segment, or the last one at the end: the recording grew.
  if (type === "segment" || (type === "state" && ["ARCHIVED", "FAILED"].includes(event.state))) {
    later("audio", 400, readCallAudio);
  }
}

// The page's own feed: while connected, what following the call means in its state.
function setCallFeed(state, text) {
  $("call-feed").dataset.state = state;
  if (state === "connected") {
    const now = callPage.record?.state;
    text = now === "ARCHIVED" ? "Finished" : now === "FAILED"
      ? "Failed: a replay would show here" : "Live: following this call";
  }
  $("call-feed-text").textContent = text;
}

// --- its status: summary, counters per track, transcript ---------------------------------------

async function readCallStatus(generation) {
  const latest = lastStarted("status");
  try {
    const record = await api(callPath(callPage.id));
    if (!onPage(generation) || !latest()) return;
    callPage.record = record;
    showCallRecord(record);
    $("call-error").textContent = "";
  } catch (error) {
    if (!onPage(generation) || !latest()) return;
    if (isAuthError(error)) return askForKey(error);
    $("call-error").textContent = error.code === "call_erased"
      ? `The call “${callPage.id}” was erased.`
      : error.status === 404
        ? `No call has the id “${callPage.id}”.` : `The call could not be read: ${error.message}`;
  }
}

function showCallState(state) {
  $("call-state").textContent = state ?? "";
  $("call-state").className = BADGES.has(state) ? `badge ${state}` : "badge";
}

function showCallRecord(record) {
  showCallState(record.state);
  $("call-started").textContent = timeText(seconds(record.created_at)) || "–";
  $("call-completed").textContent = timeText(seconds(record.completed_at)) || "–";
  $("call-finished").textContent = timeText(seconds(record.finished_at)) || "–";
  // Retention (AUDIO_RETENTION_DAYS, RETENTION_DAYS): when the recording and the call will go.
  $("call-audio-kept").textContent = record.audio_erased_at
    ? `erased ${timeText(seconds(record.audio_erased_at))}`
    : record.audio_erase_at ? `until ${timeText(seconds(record.audio_erase_at))}` : "kept";
  $("call-kept").textContent = timeText(seconds(record.erase_at)) || "no limit";
  $("call-reason").textContent = record.completion_reason ?? "–";
  $("call-attempts").textContent = count(record.ai_attempts);
  const sentiment = record.sentiment;
  $("call-sentiment").textContent = sentiment
    ? `${sentiment.label} ${sentiment.score.toFixed(2)}` : "–";
  $("call-failure").textContent = record.state === "FAILED" && record.last_error
    ? `Failed: ${record.last_error}` : "";
  const transcript = $("call-transcript");
  const said = record.transcript;
  transcript.textContent = said || (said === "" ? "The transcript is empty (nothing was said)."
    : LIVE_STATES.has(record.state) ? "No transcript yet: it is written once the call has ended."
      : "No transcript.");
  transcript.classList.toggle("muted", !said);
  showTracks(record);
  showCallClock();
  setConversation(record.conversation);
  describeRecording();
  if ($("call-feed").dataset.state === "connected") setCallFeed("connected");
}

// The duration ticks while the call receives packets (render() calls this every second).
function showCallClock() {
  const record = callPage.record;
  if (!record || $("call-page").hidden) return;
  const call = { state: record.state, createdAt: seconds(record.created_at),
    completedAt: seconds(record.completed_at) };
  setIfChanged($("call-duration"), "textContent", formatDuration(callDuration(call, clock.now())));
}

function showTracks(record) {
  const tracks = record.tracks ?? {};
  const names = Object.keys(tracks).sort((a, b) => trackOrder(a) - trackOrder(b));
  const rows = names.map((name) => trackRow(TRACKS[name] ?? name, tracks[name], name));
  // The call's totals: the only row when the status says nothing per track.
  if (names.length !== 1) rows.push(trackRow(names.length ? "All tracks" : "Call", record, "total"));
  $("tracks-table").tBodies[0].replaceChildren(...rows);
}

const trackOrder = (name) => ({ inbound: 0, outbound: 1 })[name] ?? 2;

function trackRow(label, counters, key) {
  const gaps = counters.missing_count;
  return tableRow({ track: key }, [
    { text: label },
    { text: known(counters.packets_received), num: true, key: "packets" },
    { text: counters.first_sequence ?? "–", num: true, key: "first" },
    { text: counters.last_sequence ?? "–", num: true, key: "last" },
    { text: known(gaps), num: true, key: "gaps", cls: gaps ? "gaps" : "" },
    { text: known(counters.duplicate_packets), num: true, key: "duplicates" },
    { text: known(counters.out_of_order_packets), num: true, key: "reordered" },
  ]);
}

// A row of text cells (never HTML); a cell with `badge` shows its text as a badge.
function tableRow(data, cells) {
  const tr = document.createElement("tr");
  Object.assign(tr.dataset, data);
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell.key) td.dataset.key = cell.key;
    td.className = [cell.num ? "num" : "", cell.cls ?? ""].join(" ").trim();
    if (cell.badge) {
      const badge = document.createElement("span");
      badge.className = BADGES.has(cell.badge) ? `badge ${cell.badge}` : "badge";
      badge.textContent = String(cell.text);
      td.append(badge);
    } else {
      td.textContent = String(cell.text);
    }
    if (cell.title) td.title = cell.title;
    tr.append(td);
  }
  return tr;
}

// --- its history: state transitions and AI attempts (PostgreSQL's, once flushed) ---------------

async function readCallHistory(generation) {
  const latest = lastStarted("history");
  let history;
  try {
    history = await api(callPath(callPage.id, "/history"));
  } catch (error) {
    if (!onPage(generation) || !latest()) return;
    if (isAuthError(error)) return askForKey(error);
    $("history-note").textContent = error.status === 404
      ? "None yet: the history is written once the call has ended and is stored."
      : `The history could not be read: ${error.message}`;
    return;
  }
  if (!onPage(generation) || !latest()) return;
  const transitions = history.transitions.map((t) => tableRow({ to: t.to_state }, [
    { text: t.from_state ?? "–", badge: t.from_state ?? "none" },
    { text: t.to_state, badge: t.to_state },
    { text: timeText(seconds(t.at)) },
    { text: t.reason, cls: "text" },
  ]));
  $("transitions-table").tBodies[0].replaceChildren(...transitions);
  $("history-note").textContent = transitions.length ? "" : "No transitions.";
  const attempts = history.attempts.map((a) => tableRow({ step: a.step, outcome: a.outcome }, [
    { text: a.step },
    { text: a.window ?? "the call", cls: "text" },
    { text: a.live ? "live" : a.generation === 0 ? "final" : `replay ${a.generation}`, num: true },
    { text: a.attempt, num: true },
    { text: a.outcome, cls: a.outcome === "ok" ? "ok" : "reason" },
    { text: timeText(seconds(a.started_at)) },
    { text: `${(a.duration_ms / 1000).toFixed(2)} s`, num: true },
    { text: a.error ?? "", cls: "reason" },
  ]));
  $("ai-table").tBodies[0].replaceChildren(...attempts);
  $("ai-note").textContent = attempts.length ? "" : "No AI attempts yet.";
}

// --- its recording: fetched with the key, played from a Blob -----------------------------------

async function readCallAudio(generation) {
  const audio = callPage.audio;
  if (audio.loading) {
    audio.again = true; // read once more when this read is done: it may predate the event
    return;
  }
  audio.loading = true;
  try {
    await fetchRecording(generation);
  } catch (error) {
    if (!onPage(generation)) return;
    if (isAuthError(error)) return askForKey(error);
    audio.shape = undefined; // the note says what went wrong until a read succeeds
    if (error.status === 404 || error.status === 409) $("call-audio").hidden = true;
    showAudioNote(audioProblem(error));
  } finally {
    audio.loading = false;
  }
  if (onPage(generation) && audio.again) {
    audio.again = false;
    readCallAudio(generation);
  }
}

async function fetchRecording(generation) {
  const audio = callPage.audio;
  const headers = { Accept: "audio/wav", ...authHeaders() };
  if (audio.etag) headers["If-None-Match"] = audio.etag; // unchanged: a 304, nothing to fetch
  const response = await fetch(callPath(callPage.id, "/audio"), { headers, cache: "no-store" });
  if (response.status === 304 || !onPage(generation)) return;
  if (!response.ok) throw await apiError(response);
  const wav = await response.blob();
  if (!onPage(generation)) return;
  audio.etag = response.headers.get("ETag");
  audio.shape = await wavShape(wav);
  if (audio.shape?.seconds > 0) play(wav);
  else $("call-audio").hidden = true;
  describeRecording();
}

// What the player holds, said again when the call's state changes (live: it grows).
function describeRecording() {
  const { shape } = callPage.audio;
  if (shape === undefined) return; // not read yet, or the read failed (its note stays)
  showConversation(); // its timeline is the recording's length
  const live = LIVE_STATES.has(callPage.record?.state);
  if (!(shape?.seconds > 0)) {
    return showAudioNote(live
      ? "Nothing recorded yet: the recording grows a segment at a time while the call goes on."
      : "The recording is empty.");
  }
  const channels = shape.channels === 2 ? "stereo: left the caller, right the agent" : "mono";
  showAudioNote(`${formatDuration(shape.seconds)} at ${shape.rate / 1000} kHz, ${channels}` +
    (live ? "; it grows while the call goes on." : "."));
}

// Swaps the player's source, keeping its place (and playing on) when the recording grew.
function play(wav) {
  const player = $("call-audio");
  const at = player.currentTime;
  const playing = !player.paused && !player.ended;
  const old = callPage.audio.url;
  callPage.audio.url = URL.createObjectURL(wav);
  player.src = callPage.audio.url;
  player.hidden = false;
  if (old) {
    player.addEventListener("loadedmetadata", () => {
      player.currentTime = Math.min(at, player.duration || at);
      if (playing) player.play().catch(() => {});
    }, { once: true });
    URL.revokeObjectURL(old);
  }
}

// Channels, rate and length from a WAV's RIFF header (its "fmt " and "data" chunks).
async function wavShape(blob) {
  if (blob.size < WAV_HEADER_BYTES) return null;
  const view = new DataView(await blob.slice(0, Math.min(blob.size, 4096)).arrayBuffer());
  const tag = (at) => String.fromCharCode(...new Uint8Array(view.buffer, at, 4));
  if (tag(0) !== "RIFF" || tag(8) !== "WAVE") return null;
  let channels = 0, rate = 0, bytesPerSecond = 0;
  for (let at = 12; at + 8 <= view.byteLength;) {
    const size = view.getUint32(at + 4, true);
    if (tag(at) === "fmt ") {
      channels = view.getUint16(at + 10, true);
      rate = view.getUint32(at + 12, true);
      bytesPerSecond = view.getUint32(at + 16, true);
    } else if (tag(at) === "data") {
      const data = Math.min(size, blob.size - at - 8);
      return bytesPerSecond ? { channels, rate, seconds: data / bytesPerSecond } : null;
    }
    at += 8 + size + (size % 2);
  }
  return null;
}

function audioProblem(error) {
  if (error.code === "no_audio") return "No recording: this call's packets are text, not audio.";
  if (error.code === "audio_erased") return "No recording: it was erased (retention).";
  if (error.status === 404) return "No recording of this call.";
  return `The recording could not be read: ${error.message}`;
}

function showAudioNote(text) {
  $("audio-note").textContent = text;
}

// ---------------------------------------------------------------------------------------------
// One call's conversation, on its page: the utterances by time, each with its speaker, start and
// end, text and sentiment (a button: it plays the recording from its start), and per speaker how
// much they said and how they sounded over the call's time. The utterances come from GET
// /v1/calls/{id}/transcript (what was transcribed so far) and, while the call goes on, from its
// feed's `utterance` events; the figures of the whole call (talk time, silence, overlap) come
// with the call's `conversation` once it is ARCHIVED.

const ROLES = { inbound: "caller", outbound: "agent" }; // what each track's speaker is
const SVG_NS = "http://www.w3.org/2000/svg";
const STRIP = { width: 1000, height: 36 }; // the sentiment strip's own units (it is stretched)
const NEUTRAL_BAND = 0.05; // a mean score this close to 0 is neutral (VADER's own threshold)

const talk = {
  said: new Map(), // utterance key -> utterance, as the API and the feed give it
  items: new Map(), // utterance key -> its <li>
  conversation: null, // the call's figures (once ARCHIVED), else null
};

const utteranceKey = (u) => `${u.track}|${u.start_s.toFixed(3)}|${u.end_s.toFixed(3)}|${u.text}`;
const byTime = (a, b) => a.start_s - b.start_s || trackOrder(a.track) - trackOrder(b.track) ||
  a.end_s - b.end_s;

// m:ss of the call's timeline.
function clockText(s) {
  const whole = Math.max(Math.floor(s), 0);
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, "0")}`;
}

const spanText = (u) => `${clockText(u.start_s)}–${clockText(u.end_s)}`;
const scoreText = (score) => score.toFixed(2); // as the rest of the page writes a score

function resetConversation() {
  talk.said.clear();
  talk.items.clear();
  talk.conversation = null;
  $("utterances").replaceChildren();
  $("speakers-table").tBodies[0].replaceChildren();
  $("utterances-note").textContent = "Loading…";
  showConversation();
}

// --- reading it ---------------------------------------------------------------------------------

async function readCallTranscript(generation) {
  const latest = lastStarted("transcript");
  let body;
  try {
    body = await api(callPath(callPage.id, "/transcript"));
  } catch (error) {
    if (!onPage(generation) || !latest()) return;
    if (isAuthError(error)) return askForKey(error);
    if (error.status !== 404) { // an unknown call: the page's error line says so already
      $("utterances-note").textContent = `The transcript could not be read: ${error.message}`;
    }
    return;
  }
  if (!onPage(generation) || !latest()) return;
  // Added to what the feed brought: an utterance stored after this read began is not in it.
  addUtterances(body.utterances);
  setConversation(body.conversation);
}

// The call's figures as any read of it says them (its status or its transcript). Once known,
// a read without them is one that started before the call was ARCHIVED and landed late.
function setConversation(conversation) {
  if (conversation === undefined || (conversation === null && talk.conversation)) return;
  talk.conversation = conversation;
  showConversation();
}

function isUtterance(u) {
  return u && typeof u.track === "string" && typeof u.text === "string" &&
    Number.isFinite(u.start_s) && Number.isFinite(u.end_s);
}

// From a read or a feed event: each utterance once, however often it is told.
function addUtterances(list) {
  let added = false;
  for (const u of list ?? []) {
    if (!isUtterance(u)) continue;
    const key = utteranceKey(u);
    if (talk.said.has(key)) continue;
    talk.said.set(key, {
      speaker: u.speaker || ROLES[u.track] || u.track,
      track: u.track,
      start_s: u.start_s,
      end_s: u.end_s,
      text: u.text,
      sentiment: u.sentiment ?? null,
    });
    added = true;
  }
  if (added) showUtterances();
  else if (!talk.said.size) showConversation(); // says there is nothing yet
}

// --- the utterances, by time ----------------------------------------------------------------------

function showUtterances() {
  const list = $("utterances");
  const sorted = [...talk.said.entries()].sort(([, a], [, b]) => byTime(a, b));
  sorted.forEach(([key, u], index) => {
    let item = talk.items.get(key);
    if (!item) {
      item = utteranceItem(u);
      talk.items.set(key, item);
    }
    // Only an item out of place moves (a moved item would lose the keyboard's focus).
    if (list.children[index] !== item) list.insertBefore(item, list.children[index] ?? null);
  });
  showConversation();
}

function utteranceItem(u) {
  const item = document.createElement("li");
  item.className = `utterance ${u.track}`;
  Object.assign(item.dataset, { track: u.track, start: String(u.start_s) });
  const button = document.createElement("button");
  button.type = "button";
  button.className = "seek";
  button.title = `Play the recording from ${clockText(u.start_s)}`;
  const who = span("who", u.speaker);
  const role = ROLES[u.track];
  if (role && role !== u.speaker) who.append(span("role", ` (${role})`));
  const head = span("head", who, span("when", spanText(u)));
  if (u.sentiment) {
    const label = u.sentiment.label;
    const badge = span(BADGES.has(label) ? `badge ${label}` : "badge",
      `${label} ${scoreText(u.sentiment.score)}`);
    head.append(badge);
  }
  button.append(head, span("said", u.text || "(nothing heard)"));
  button.addEventListener("click", () => playFrom(u.start_s));
  item.append(button);
  return item;
}

function span(className, ...content) {
  const element = document.createElement("span");
  element.className = className;
  element.append(...content);
  return element;
}

// The player jumps to the utterance and plays; before the recording's first read has landed
// it jumps there once it has.
function playFrom(s) {
  const player = $("call-audio");
  if (!callPage.audio.url) {
    showAudioNote("The recording is not loaded yet: try again in a moment.");
    return;
  }
  if (player.readyState >= HTMLMediaElement.HAVE_METADATA) player.currentTime = s;
  else player.addEventListener("loadedmetadata", () => (player.currentTime = s), { once: true });
  player.play().catch(() => {}); // no audio device, say: the position is still where asked
}

// --- per speaker: how much, how they sounded, over time ------------------------------------------

// One row per speaker: the call's figures once ARCHIVED, else what the utterances say so far.
function speakerFigures() {
  const byTrack = new Map();
  for (const u of talk.said.values()) {
    const mine = byTrack.get(u.track) ?? { name: u.speaker, track: u.track, said: [] };
    mine.said.push(u);
    byTrack.set(u.track, mine);
  }
  const final = talk.conversation?.speakers;
  for (const [name, figures] of Object.entries(final ?? {})) {
    const mine = byTrack.get(figures.track) ?? { track: figures.track, said: [] };
    Object.assign(mine, { name, utterances: figures.utterances, talkS: figures.talk_s,
      sentiment: figures.sentiment, final: true });
    byTrack.set(figures.track, mine);
  }
  for (const mine of byTrack.values()) {
    if (mine.final) continue;
    mine.utterances = mine.said.length;
    mine.talkS = mine.said.reduce((sum, u) => sum + Math.max(u.end_s - u.start_s, 0), 0);
    mine.sentiment = meanSentiment(mine.said);
  }
  return [...byTrack.values()].sort((a, b) => trackOrder(a.track) - trackOrder(b.track));
}

function meanSentiment(said) {
  const scored = said.filter((u) => Number.isFinite(u.sentiment?.score));
  if (!scored.length) return null;
  const score = scored.reduce((sum, u) => sum + u.sentiment.score, 0) / scored.length;
  const label = score > NEUTRAL_BAND ? "positive" : score < -NEUTRAL_BAND ? "negative" : "neutral";
  return { label, score };
}

// The call's timeline: as long as its recording, or its last utterance if that is later.
function timelineSeconds() {
  const lastEnd = Math.max(0, ...[...talk.said.values()].map((u) => u.end_s));
  return Math.max(lastEnd, callPage.audio?.shape?.seconds ?? 0, 1);
}

function showConversation() {
  const count = talk.said.size;
  $("utterance-count").textContent = String(count);
  const live = LIVE_STATES.has(callPage.record?.state);
  if (count) $("utterances-note").textContent = "";
  else if (callPage.record) {
    $("utterances-note").textContent = live
      ? "Nothing transcribed yet: utterances appear here while the call goes on."
      : "No utterances.";
  }
  const total = timelineSeconds();
  const rows = speakerFigures().map((mine) => speakerRow(mine, total));
  $("speakers-table").tBodies[0].replaceChildren(...rows);
  $("speakers-table").hidden = !rows.length;
  $("timeline-end").textContent = clockText(total);
  $("speakers-timeline").hidden = !rows.length;
  showCallFigures(rows.length > 0);
}

function showCallFigures(anyone) {
  const c = talk.conversation;
  $("conv-silence").textContent = c ? formatDuration(c.silence_s) : "–";
  $("conv-overlap").textContent = c
    ? `${c.overlap_count} ${c.overlap_count === 1 ? "time" : "times"} · ${formatDuration(c.overlap_s)}`
    : "–";
  $("speakers-note").textContent = c ? ""
    : anyone ? "So far, from the utterances transcribed: talk time is their length added up, " +
      "the sentiment their mean. The call's own figures, silence and overlap come once it is " +
      "archived."
      : "";
}

function speakerRow(mine, total) {
  const sentiment = mine.sentiment;
  const row = tableRow({ track: mine.track }, [
    { text: mine.name, key: "speaker" },
    { text: ROLES[mine.track] ?? mine.track, key: "role" },
    { text: known(mine.utterances), num: true, key: "utterances" },
    { text: formatDuration(mine.talkS), num: true, key: "talk" },
    sentiment
      ? { text: `${sentiment.label} ${scoreText(sentiment.score)}`, badge: sentiment.label,
        key: "sentiment" }
      : { text: "–", key: "sentiment" },
  ]);
  const cell = document.createElement("td");
  cell.dataset.key = "timeline";
  cell.className = "timeline";
  cell.append(sentimentStrip(mine, total));
  row.append(cell);
  return row;
}

// Each utterance a bar where it was said on the call's timeline, up for a positive score and
// down for a negative one, as tall as the score; its words in the bar's tooltip (an SVG title).
function sentimentStrip(mine, total) {
  const svg = svgElement("svg", { viewBox: `0 0 ${STRIP.width} ${STRIP.height}`,
    preserveAspectRatio: "none", class: "sentiment-strip", role: "img" });
  const scores = mine.said.filter((u) => u.sentiment).map((u) => u.sentiment.score);
  svg.setAttribute("aria-label", scores.length
    ? `${mine.name}'s sentiment over the call: ${scores.length} utterances, from ` +
      `${scoreText(Math.min(...scores))} to ${scoreText(Math.max(...scores))}`
    : `${mine.name}: no scored utterance`);
  const middle = STRIP.height / 2;
  svg.append(svgElement("rect", { x: 0, y: middle - 0.5, width: STRIP.width, height: 1,
    class: "axis" }));
  for (const u of [...mine.said].sort(byTime)) {
    const score = u.sentiment?.score ?? 0;
    const reach = Math.max(Math.abs(score) * (middle - 2), 1.5);
    const x = (u.start_s / total) * STRIP.width;
    const bar = svgElement("rect", {
      x: x.toFixed(1),
      y: (score >= 0 ? middle - reach : middle).toFixed(1),
      width: Math.max(((u.end_s - u.start_s) / total) * STRIP.width, 3).toFixed(1),
      height: reach.toFixed(1),
      class: `bar ${u.sentiment?.label ?? "neutral"}`,
    });
    const title = svgElement("title", {});
    title.textContent = `${spanText(u)} ${u.sentiment ? `${u.sentiment.label} ` +
      `${scoreText(score)}` : "not scored"}: ${u.text}`;
    bar.append(title);
    svg.append(bar);
  }
  return svg;
}

function svgElement(name, attributes) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  return element;
}

// ---------------------------------------------------------------------------------------------
// The feed's status line, and the key.

function setFeedStatus(state, text) {
  $("feed-status").dataset.state = state;
  $("feed-text").textContent = text;
}

function showFeedAge() {
  if ($("feed-status").dataset.state !== "connected" || feed.lastEventAt === null) return;
  const age = Math.floor((Date.now() - feed.lastEventAt) / 1000);
  $("feed-text").textContent = `Live feed connected · last event ${formatSeconds(age)} ago`;
}

// Shown when the API refuses the key (or asks for one): 401 no key or a wrong one, 403 a key
// whose role may not read, or no keys configured and this browser not on the API's machine.
function askForKey(error) {
  stop();
  const hadKey = Boolean(sessionStorage.getItem(KEY_STORAGE));
  sessionStorage.removeItem(KEY_STORAGE); // a refused key is not tried again on reload
  let reason = "This Callstream needs a supervisor API key.";
  if (error.status === 401 && hadKey) reason = "That key was refused: it is not a valid API key.";
  else if (error.code === "forbidden") reason = `That key may not read calls: ${error.detail}`;
  else if (error.status === 403) reason = error.detail;
  $("key-reason").textContent = hadKey ? "" : reason;
  $("key-error").textContent = hadKey ? reason : "";
  admitted = false;
  leaveCallPage();
  $("board").hidden = true;
  $("search-box").hidden = true;
  $("forget-key").hidden = true;
  $("key-panel").hidden = false;
  setFeedStatus("down", "Not connected: an API key is needed");
  $("key-input").focus();
}

let admitted = false; // the API took the key: the board or a call's page may show

function stop() {
  session += 1;
  feed.controller?.abort();
  clearTimeout(systemTimer);
  systemTimer = null;
}

async function start() {
  stop();
  const id = session;
  setFeedStatus("connecting", "Connecting…");
  try {
    const system = await api("/v1/system");
    if (!current(id)) return;
    showSystem(system);
  } catch (error) {
    if (!current(id)) return;
    if (isAuthError(error)) return askForKey(error);
    setFeedStatus("down", `The API did not answer (${error.message}); retrying in 5 s…`);
    setTimeout(() => current(id) && start(), 5000);
    return;
  }
  $("key-panel").hidden = true;
  admitted = true;
  showRoute(); // the list, or the call the address names
  $("forget-key").hidden = !sessionStorage.getItem(KEY_STORAGE);
  feed.lastEventId = null; // a new session reads the calls afresh
  systemTimer = setTimeout(() => pollSystem(id), SYSTEM_POLL_MS);
  runFeed(id);
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function wireUp() {
  for (const name of Object.keys(TABLES)) {
    const empty = $(`${name}-empty`);
    empty.dataset.text = empty.textContent;
  }
  buildHeaders();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault(); // the key goes to sessionStorage, never into a URL or a form post
    const key = $("key-input").value.trim();
    if (!key) {
      $("key-error").textContent = "Enter a key.";
      return;
    }
    sessionStorage.setItem(KEY_STORAGE, key);
    $("key-input").value = "";
    $("key-error").textContent = "";
    start();
  });
  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    calls.clear();
    askForKey(new ApiError(401, "unauthenticated", "no API key"));
  });
  $("search").addEventListener("input", scheduleRender);
  window.addEventListener("hashchange", showRoute); // a row's link, the back link, Back/Forward
  $("search").addEventListener("keydown", (event) => {
    if (event.key === "Enter") lookUp($("search").value.trim());
  });
  // Ages and durations move on with the clock; the feed is watched for silence.
  setInterval(() => {
    scheduleRender();
    watchFeed();
  }, 1000);
  start();
}

wireUp();
