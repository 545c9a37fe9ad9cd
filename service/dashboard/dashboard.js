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
    received: 0,
    duplicates: 0,
    outOfOrder: 0,
    missing: 0,
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
  rate.add(Math.max(event.received - call.received, 0));
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

// Re-reads of single calls at a bounded pace: final counters after a call finishes, calls
// first seen mid-way. A burst of finishing calls must not turn into a burst of requests.
const refresh = {
  queue: new Set(),
  timer: null,
  soon(id) {
    this.queue.add(id);
    if (this.queue.size > 50) this.queue.delete(this.queue.values().next().value);
    this.timer ??= setTimeout(() => this.drain(), 300);
  },
  async drain() {
    const batch = [...this.queue].slice(0, 4);
    batch.forEach((id) => this.queue.delete(id));
    await Promise.all(batch.map(refreshCall));
    scheduleRender();
    this.timer = this.queue.size ? setTimeout(() => this.drain(), 1000) : null;
  },
};

async function refreshCall(id) {
  const before = calls.get(id);
  if (!before) return;
  const state = before.state;
  try {
    const record = await api(`/v1/calls/${encodeURIComponent(id)}`);
    // An event that arrived meanwhile is newer than this answer: keep the event's view.
    if (calls.get(id) === before && before.state === state) applyRecord(record);
  } catch (error) {
    if (isAuthError(error)) askForKey(error);
  }
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

const idColumn = { key: "id", label: "Call", value: (c) => c.id, text: (c) => c.id, cls: () => "id" };
const numeric = (key, label, value) => ({ key, label, num: true, value, text: (c) => count(value(c)) });

const TABLES = {
  live: {
    includes: (c) => LIVE_STATES.has(c.state),
    sort: { key: "duration", descending: false },
    columns: [
      idColumn,
      { key: "state", label: "State", value: (c) => STATES.indexOf(c.state),
        text: (c) => c.state, badge: (c) => c.state },
      { key: "duration", label: "Duration", num: true, value: callDuration,
        text: (c, now) => formatSeconds(callDuration(c, now)) },
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
        text: (c, now) => formatSeconds(callDuration(c, now)) },
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
    const target = column.badge || column.clamp ? td.firstChild : td;
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
  $("board").hidden = true;
  $("search-box").hidden = true;
  $("forget-key").hidden = true;
  $("key-panel").hidden = false;
  setFeedStatus("down", "Not connected: an API key is needed");
  $("key-input").focus();
}

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
  $("board").hidden = false;
  $("search-box").hidden = false;
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
