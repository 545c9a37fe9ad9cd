// One call's page, at #/calls/<id>: its status (GET /v1/calls/{id}: the summary, the counters
// per track, the transcript), its conversation (conversation.js), its recording (recording.js),
// its history (GET /v1/calls/{id}/history: the state transitions and the AI attempts, each with
// the window it transcribed and whether it was live, once flushed), and its own feed (GET
// /v1/events?call_id=<id>, the shared reader of feed.js), which re-reads what an event changed
// while the call is live. Each opening is a page of its own: leaving it (or opening another)
// closes it, and what its reads answer afterwards is dropped.

import { api, callPath, isAuthError } from "./api.js";
import { downloadCaptions } from "./captions.js";
import { CONTRACT } from "./contract.js";
import { Conversation } from "./conversation.js";
import { $, badgeClass, setIfChanged, setStatus, tableRow } from "./dom.js";
import { FeedReader } from "./feed.js";
import { count, formatDuration, known, sentimentText, timeText } from "./format.js";
import { callDuration, seconds } from "./model.js";
import { Recording } from "./recording.js";
import { takeSeek } from "./said-search.js";
import { trackOrder } from "./talk.js";

const LIVE_STATES = new Set(CONTRACT.liveStates);
const FINAL_STATES = new Set(CONTRACT.finalStates);
const TRACKS = { inbound: "Caller (inbound)", outbound: "Agent (outbound)" };
const isLive = (page) => LIVE_STATES.has(page.record?.state);

export class CallPage {
  // clock: the server's (model.js ServerClock); refused(error): the key was refused.
  constructor({ clock, refused }) {
    Object.assign(this, { clock, refused });
    this.page = null; // the open page, or null
    for (const button of [$("download-vtt"), $("download-srt")]) {
      button.addEventListener("click", () => {
        if (this.id !== null) downloadCaptions(this.id, button.dataset.format, this.refused);
      });
    }
  }

  get id() {
    return this.page?.id ?? null;
  }

  open(id) {
    this.leave();
    const page = { id, closed: false, loaded: false, record: null, timers: {}, started: {} };
    this.page = page;
    $("call-page").hidden = false;
    document.title = `${id} · Callstream`;
    $("call-id").textContent = id;
    for (const name of ["call-error", "call-failure", "call-transcript", "ai-note"]) {
      $(name).textContent = "";
    }
    $("history-note").textContent = "Loading…";
    for (const table of ["tracks-table", "transitions-table", "ai-table"]) {
      $(table).tBodies[0].replaceChildren();
    }
    showCallState(null);
    page.recording = new Recording(id, {
      live: () => isLive(page),
      changed: () => page.conversation.show(), // its timeline is the recording's length
      refused: this.refused,
      startAt: () => takeSeek(id),
    });
    page.conversation = new Conversation({
      status: () => page.record && { live: isLive(page) },
      recordingS: () => page.recording?.seconds ?? 0,
      playFrom: (s) => page.recording.playFrom(s),
    });
    $("call-title").focus();
    page.feed = new FeedReader(`/v1/events?call_id=${encodeURIComponent(id)}`, {
      connecting: () => this.setFeed("connecting", "Connecting…"),
      // Subscribed (the server's first bytes): what happened before is read now, so no event
      // falls between the read and the subscription.
      connected: (resumed) => {
        this.setFeed("connected");
        if (!resumed) this.load(page);
      },
      event: (event, type) => this.onEvent(page, event, type),
      reset: () => this.load(page), // events were missed: read it all
      failed: () => page.loaded || this.load(page), // without the feed, still worth a look
      lost: (reason, waitMs) => this.setFeed("down",
        `Updates lost; reconnecting in ${Math.max(Math.round(waitMs / 1000), 1)} s…`),
      refused: this.refused,
    }).start();
  }

  leave() {
    const page = this.page;
    this.page = null;
    $("call-page").hidden = true;
    if (!page) return;
    page.closed = true;
    page.feed.stop();
    Object.values(page.timers).forEach(clearTimeout);
    page.recording.close();
  }

  load(page) {
    page.loaded = true;
    this.readStatus(page);
    this.readTranscript(page);
    this.readHistory(page);
    page.recording.read();
  }

  onEvent(page, event, type) {
    if (event.call_id !== page.id) return;
    // An utterance is all there in its event: shown as it comes, no read needed.
    if (type === "utterance") return page.conversation.add([event]);
    later(page, "status", 250, () => this.readStatus(page));
    if (type === "state" || type === "attempt") later(page, "history", 400, () => this.readHistory(page));
    // A new state: the transcript again (the call's figures come with ARCHIVED; the read adds
    // any utterance the feed did not bring, and none twice).
    if (type === "state") later(page, "transcript", 400, () => this.readTranscript(page));
    // A stored segment, or the last one at the end: the recording grew.
    if (type === "segment" || (type === "state" && FINAL_STATES.has(event.state))) {
      later(page, "audio", 400, () => page.recording.read());
    }
  }

  // The page's own feed: while connected, what following the call means in its state.
  setFeed(state, text) {
    if (state === "connected") {
      const now = this.page?.record?.state;
      text = now === "ARCHIVED" ? "Finished" : now === "FAILED"
        ? "Failed: a replay would show here" : "Live: following this call";
    }
    setStatus("call-feed", "call-feed-text", state, text);
  }

  // A read of the page's; `show(answer)` unless the page closed or a later read of the same
  // thing started meanwhile (reads overlap when events come while one is under way: only the
  // last one started is shown, whichever lands last). `failed(error)` likewise.
  async read(page, what, path, show, failed) {
    const mine = (page.started[what] = (page.started[what] ?? 0) + 1);
    const latest = () => !page.closed && page.started[what] === mine;
    let answer;
    try {
      answer = await api(path);
    } catch (error) {
      if (!latest()) return;
      if (isAuthError(error)) return this.refused(error);
      return failed(error);
    }
    if (latest()) show(answer);
  }

  readStatus(page) {
    return this.read(page, "status", callPath(page.id), (record) => {
      page.record = record;
      this.showRecord(page, record);
      $("call-error").textContent = "";
    }, (error) => {
      $("call-error").textContent = error.code === "call_erased"
        ? `The call “${page.id}” was erased.`
        : error.status === 404
          ? `No call has the id “${page.id}”.` : `The call could not be read: ${error.message}`;
    });
  }

  readTranscript(page) {
    return this.read(page, "transcript", callPath(page.id, "/transcript"), (body) => {
      // Added to what the feed brought: an utterance stored after this read began is not in it.
      page.conversation.add(body.utterances);
      page.conversation.setConversation(body.conversation);
    }, (error) => {
      if (error.status === 404) return; // an unknown call: the page's error line says so
      $("utterances-note").textContent = `The transcript could not be read: ${error.message}`;
    });
  }

  readHistory(page) {
    return this.read(page, "history", callPath(page.id, "/history"), showHistory, (error) => {
      $("history-note").textContent = error.status === 404
        ? "None yet: the history is written once the call has ended and is stored."
        : `The history could not be read: ${error.message}`;
    });
  }

  showRecord(page, record) {
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
    $("call-sentiment").textContent = record.sentiment ? sentimentText(record.sentiment) : "–";
    $("call-failure").textContent = record.state === "FAILED" && record.last_error
      ? `Failed: ${record.last_error}` : "";
    const transcript = $("call-transcript");
    const said = record.transcript;
    transcript.textContent = said || (said === "" ? "The transcript is empty (nothing was said)."
      : isLive(page) ? "No transcript yet: it is written once the call has ended."
        : "No transcript.");
    transcript.classList.toggle("muted", !said);
    showTracks(record);
    this.tick();
    page.conversation.setConversation(record.conversation);
    page.recording.describe();
    if ($("call-feed").dataset.state === "connected") this.setFeed("connected");
  }

  // The duration runs while the call receives packets (the page's clock calls this each second).
  tick() {
    const record = this.page?.record;
    if (!record) return;
    const call = { state: record.state, createdAt: seconds(record.created_at),
      completedAt: seconds(record.completed_at) };
    setIfChanged($("call-duration"), "textContent",
      formatDuration(callDuration(call, this.clock.now())));
  }
}

// Re-reads after events, each at most once per `ms`: a burst of events is one read.
function later(page, what, ms, read) {
  if (page.timers[what]) return;
  page.timers[what] = setTimeout(() => {
    delete page.timers[what];
    if (!page.closed) read();
  }, ms);
}

function showCallState(state) {
  $("call-state").textContent = state ?? "";
  $("call-state").className = badgeClass(state);
}

function showTracks(record) {
  const tracks = record.tracks ?? {};
  const names = Object.keys(tracks).sort((a, b) => trackOrder(a) - trackOrder(b));
  const rows = names.map((name) => trackRow(TRACKS[name] ?? name, tracks[name], name));
  // The call's totals: the only row when the status says nothing per track.
  if (names.length !== 1) rows.push(trackRow(names.length ? "All tracks" : "Call", record, "total"));
  $("tracks-table").tBodies[0].replaceChildren(...rows);
}

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

// The state transitions, and every AI attempt: its step, the window it transcribed (or the
// whole call), its run (live, the final one, or which replay), its number, outcome and time.
function showHistory(history) {
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
