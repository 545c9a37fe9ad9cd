// The live feed (GET /v1/events, Server-Sent Events), read by the board and by a call's page
// alike: one resumable reader.
//
// It is read with fetch() and a small SSE parser rather than EventSource, because EventSource
// cannot send headers and the API key must never travel in a URL. A dropped stream is opened
// again after a wait (the server's `retry:`, doubled per failure up to MAX_RETRY_MS) from where
// it stopped (Last-Event-ID); a `reset` says that position fell out of the feed's window, so
// events were missed and the reader's owner reads afresh what it shows. A connection can die
// without closing (a laptop's sleep, a proxy): the server pings every 15 s, so SILENCE_S without
// a byte means the link is gone and the reader reconnects.

import { apiError, fetchWithKey, isAuthError } from "./api.js";
import { CONTRACT } from "./contract.js";

const FEED_EVENTS = new Set(Object.keys(CONTRACT.events)); // every type the feed may send
const FIRST_RETRY_MS = 2000; // until the server's `retry:` says otherwise
const MAX_RETRY_MS = 30000;
const SILENCE_S = 45; // three of the server's pings missed

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// A parser for the text/event-stream format (WHATWG HTML, "Server-sent events"), fed chunks of
// text as they arrive; a line or an event may be split across chunks.
export function sseParser({ onEvent, onRetry }) {
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

// One feed, from start() until stop(); a stopped reader never reads again (its loop and timers
// end at their next step), so a new session or a new call's page makes a new reader.
//
// `on` says what the owner does at each step:
//   connected(resumed)  the server's first bytes (it has subscribed us); resumed: from a position
//   event(event, type)  a feed event (parsed JSON of a type the contract names)
//   reset()             the position was lost: read afresh what the feed told
//   failed()            a connection failed (before the wait)
//   lost(reason, ms)    the stream is gone; the next try comes in `ms`
//   connecting()        a connection is being opened
//   refused(error)      the key was refused (401/403): the reader has stopped
export class FeedReader {
  constructor(path, on) {
    Object.assign(this, { path, on });
    this.lastEventId = null; // where to resume from
    this.lastEventAt = null; // local ms of the last event
    this.retryMs = FIRST_RETRY_MS;
    this.failures = 0;
    this.stopped = false;
    this.stalled = false;
    this.controller = null;
    this.lastHeardAt = 0;
  }

  start() {
    this.run();
    return this;
  }

  stop() {
    this.stopped = true;
    this.controller?.abort();
  }

  async run() {
    let reason = "";
    while (!this.stopped) {
      try {
        await this.read();
        this.failures = 0; // the server ended a healthy stream (a restart, say): come right back
        reason = "the stream ended";
      } catch (error) {
        if (this.stopped) return;
        if (isAuthError(error)) {
          this.stopped = true;
          this.on.refused(error);
          return;
        }
        this.failures += 1;
        reason = this.stalled ? "no data for a while" : error.message || String(error);
        this.on.failed?.();
      }
      if (this.stopped) return;
      const wait = Math.min(this.retryMs * 2 ** Math.max(this.failures - 1, 0), MAX_RETRY_MS);
      this.on.lost?.(reason, wait);
      await sleep(wait);
    }
  }

  async read() {
    this.on.connecting?.();
    this.controller = new AbortController();
    this.stalled = false;
    const headers = { Accept: "text/event-stream" };
    if (this.lastEventId) headers["Last-Event-ID"] = this.lastEventId;
    const response = await fetchWithKey(this.path, {
      headers,
      cache: "no-store",
      signal: this.controller.signal,
    });
    if (!response.ok) throw await apiError(response);
    this.lastHeardAt = Date.now();
    const watchdog = setInterval(() => this.watch(), 1000);
    try {
      const push = sseParser({
        onEvent: (message) => this.dispatch(message),
        onRetry: (ms) => (this.retryMs = ms),
      });
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (let first = true; ; first = false) {
        const { value, done } = await reader.read();
        if (done || this.stopped) return;
        this.lastHeardAt = Date.now();
        if (first) this.on.connected(this.lastEventId !== null);
        push(value);
      }
    } finally {
      clearInterval(watchdog);
    }
  }

  dispatch({ type, data, id }) {
    if (this.stopped) return;
    if (type === "reset") {
      this.on.reset();
    } else if (FEED_EVENTS.has(type)) {
      let event = null;
      try {
        event = JSON.parse(data);
      } catch {
        // not an event of ours: skipped rather than stopping the feed
      }
      if (event !== null && typeof event === "object") {
        this.lastEventAt = Date.now();
        this.on.event(event, type);
      }
    }
    if (id) this.lastEventId = id;
  }

  watch() {
    const silentS = (Date.now() - this.lastHeardAt) / 1000;
    if (!this.stalled && silentS > SILENCE_S) {
      this.stalled = true;
      this.controller.abort();
    }
  }
}
