// The board's system strip: GET /v1/system every couple of seconds (service/routes/system.py),
// skipped while the tab is hidden.

import { api, isAuthError } from "./api.js";
import { $ } from "./dom.js";
import { count, formatSeconds } from "./format.js";

const SYSTEM_POLL_MS = 2000;

function setStrip(id, text, tone = "", title = "") {
  const element = $(id);
  element.textContent = text;
  element.className = tone;
  element.title = title;
}

export function showSystem(system) {
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

// Polls from start() until stop() (a stopped poller never polls again); `refused(error)` when
// the key is refused.
export class SystemPoller {
  constructor(refused) {
    this.refused = refused;
    this.stopped = false;
    this.timer = setTimeout(() => this.poll(), SYSTEM_POLL_MS);
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  async poll() {
    if (!document.hidden) {
      try {
        const system = await api("/v1/system");
        if (!this.stopped) showSystem(system);
      } catch (error) {
        if (this.stopped) return;
        if (isAuthError(error)) return this.refused(error);
        setStrip("sys-postgres", "?", "bad", `The status could not be read: ${error.message}`);
      }
    }
    if (!this.stopped) this.timer = setTimeout(() => this.poll(), SYSTEM_POLL_MS);
  }
}
