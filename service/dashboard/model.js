// The board's state model: what the page knows of each call, from reads of the API (records)
// and from the live feed (events). Pure: no DOM, no requests, no timers, no clock of its own
// (every time is passed in), so `node --test` runs it (tests/dashboard/model.test.js).
//
// Applying something says what the page should do next (an `Effect`): read the call again
// (`reread`: the feed's events do not carry everything), and how many packets it counted.

import { CONTRACT } from "./contract.js";

const STATES = CONTRACT.states; // in the order a call goes through them
const rank = (state) => STATES.indexOf(state);

// Epoch seconds of an ISO time from the API (null stays null).
export const seconds = (iso) => (iso ? Date.parse(iso) / 1000 : null);
export const excerptOf = (text) => (text ? text.slice(0, CONTRACT.excerptChars) : null);

export function newCall(id) {
  return {
    id,
    state: "IN_PROGRESS",
    createdAt: null, // epoch seconds (server clock)
    completedAt: null,
    finishedAt: null,
    // Counters: null until the page has read them. The feed's first event of a call carries
    // none, and progress events come at most once an interval, so a short call's counters
    // are known from a read of the call only, never shown as 0 meanwhile.
    received: null,
    duplicates: null,
    outOfOrder: null,
    missing: null,
    lastPacketAt: null,
    aiStep: null,
    aiAttempt: null,
    aiOutcome: null,
    aiError: null, // of the last attempt, shown on hover
    aiLive: false, // the last attempt was a live window's (the call still going on)
    attempts: 0,
    completion: null, // explicit | idle | replay
    failure: null, // why it FAILED
    sentiment: null,
    excerpt: null,
    replaying: false, // the board asked for a replay and awaits the answer
    pinned: false, // looked up by a search: kept even if old
  };
}

const NOTHING = Object.freeze({ reread: false, packets: 0 });

export class Calls {
  constructor() {
    this.byId = new Map(); // call id -> call (see newCall)
  }

  get(id) {
    return this.byId.get(id);
  }

  has(id) {
    return this.byId.has(id);
  }

  values() {
    return this.byId.values();
  }

  get size() {
    return this.byId.size;
  }

  // The calls as a read of them says (the first read, or after the feed's `reset`: events were
  // missed): what the feed told before is forgotten.
  reset(records) {
    this.byId.clear();
    for (const record of records) this.applyRecord(record);
  }

  clear() {
    this.byId.clear();
  }

  callFor(id) {
    let call = this.byId.get(id);
    if (!call) {
      call = newCall(id);
      this.byId.set(id, call);
    }
    return call;
  }

  // A call as GET /v1/calls or GET /v1/calls/{id} answers it (service/schemas.py CallStatus):
  // the server's word at the time of the read, whatever the feed said.
  applyRecord(record) {
    const call = this.callFor(record.call_id);
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

  // One event of the feed (db/feed_events.py). Each carries absolute values, so applying one
  // twice (the feed may repeat a final state) changes nothing, and a state only moves forward:
  // an event older than what a read already said (events wait while the calls are read) cannot
  // take a call back, except a replay, which starts a FAILED call over.
  applyEvent(event) {
    if (typeof event?.call_id !== "string") return NOTHING;
    const call = this.callFor(event.call_id);
    if (event.type === "state") return applyState(call, event);
    if (event.type === "attempt") return applyAttempt(call, event);
    if (event.type === "progress") return applyProgress(call, event);
    return NOTHING; // segments and utterances are for a call's page
  }

  // Only the newest `keep` finished calls stay, so a day-long session does not grow unbounded.
  forgetOldFinished(keep) {
    const finished = [...this.byId.values()].filter((c) => c.state === "ARCHIVED" && !c.pinned);
    if (finished.length <= keep) return;
    finished.sort((a, b) => (b.finishedAt ?? 0) - (a.finishedAt ?? 0));
    for (const call of finished.slice(keep)) this.byId.delete(call.id);
  }
}

const isReplay = (event) => event.state === "COMPLETED" && event.reason === "replay";

function applyState(call, event) {
  const startedUnseen = () => call.createdAt === null; // started before this page was looking
  if (rank(event.state) < rank(call.state) && !isReplay(event)) {
    return { reread: startedUnseen(), packets: 0 };
  }
  let reread = false;
  call.state = event.state;
  if (event.state === "IN_PROGRESS") {
    // The call's first packet: its start, and its last packet so far.
    call.createdAt ??= event.at;
    call.lastPacketAt ??= event.at;
  } else if (event.state === "COMPLETED") {
    call.completion = event.reason;
    if (isReplay(event)) {
      // A replay starts the AI over: the old failure and attempt no longer describe it.
      Object.assign(call, { failure: null, finishedAt: null, aiStep: null, aiAttempt: null,
        aiOutcome: null, aiError: null, aiLive: false });
    } else {
      call.completedAt = event.at;
      // A short call sent no progress event: its counters are read now, not once it is ARCHIVED.
      reread = call.received === null;
    }
    call.replaying = false;
  } else if (event.state === "ARCHIVED") {
    call.finishedAt = event.at;
    call.sentiment = event.sentiment ?? call.sentiment;
    call.excerpt = excerptOf(event.transcript_excerpt) ?? call.excerpt;
    reread = true; // exact final counters (progress events are throttled)
  } else if (event.state === "FAILED") {
    call.finishedAt = event.at;
    call.failure = event.reason;
    reread = true;
  }
  return { reread: reread || startedUnseen(), packets: 0 };
}

// A final attempt means the AI has the call; a live one (a window transcribed while the call
// goes on) leaves its state, and with it its running duration, alone.
function applyAttempt(call, event) {
  if (!event.live && (call.state === "IN_PROGRESS" || call.state === "COMPLETED")) {
    call.state = "PROCESSING_AI";
  }
  Object.assign(call, {
    aiLive: event.live === true,
    aiStep: event.step,
    aiAttempt: event.attempt,
    aiOutcome: event.outcome,
    aiError: event.error ?? null,
  });
  call.attempts += 1;
  return NOTHING;
}

// Progress only counts packets: it never moves a call that has already moved on.
function applyProgress(call, event) {
  const packets = Math.max(event.received - (call.received ?? 0), 0);
  Object.assign(call, {
    received: event.received,
    duplicates: event.duplicates,
    outOfOrder: event.out_of_order,
    missing: event.missing,
    lastPacketAt: event.last_packet_at,
  });
  return { reread: false, packets };
}

// How long the call has lasted (server seconds `now`): still counting while it gets packets.
export function callDuration(call, now) {
  if (call.createdAt === null) return null;
  const end = call.state === "IN_PROGRESS" ? now : call.completedAt;
  return end === null ? null : Math.max(end - call.createdAt, 0);
}

// The server's clock, estimated from event times: ages and durations are differences against
// server timestamps, and a laptop's clock may be seconds off. Network delay only makes an event
// look older, so the largest recent offset is the best estimate.
export class ServerClock {
  constructor(localSeconds = () => Date.now() / 1000) {
    this.local = localSeconds;
    this.samples = [];
    this.offset = 0;
  }

  now() {
    return this.local() + this.offset;
  }

  sample(at) {
    if (typeof at !== "number") return;
    this.samples.push(at - this.local());
    if (this.samples.length > 20) this.samples.shift();
    this.offset = Math.max(...this.samples);
  }
}

// Packets a second across live calls, over the last `windowS` seconds of progress.
export class RateMeter {
  constructor(windowS, localSeconds = () => Date.now() / 1000) {
    Object.assign(this, { windowS, local: localSeconds });
    this.added = []; // [local time s, packets]
  }

  add(packets) {
    if (packets > 0) this.added.push([this.local(), packets]);
  }

  perSecond() {
    const since = this.local() - this.windowS;
    this.added = this.added.filter(([at]) => at >= since);
    return this.added.reduce((sum, [, packets]) => sum + packets, 0) / this.windowS;
  }
}
