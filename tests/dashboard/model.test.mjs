// The board's state model (service/dashboard/model.js), under `node --test`: what each record
// and feed event does to a call. Run by tests/dashboard/test_modules.py (so `make test` runs it).

import assert from "node:assert/strict";
import { test } from "node:test";

import { CONTRACT } from "../../service/dashboard/contract.js";
import { Calls, RateMeter, ServerClock, callDuration } from "../../service/dashboard/model.js";

const T0 = 1_800_000_000; // epoch seconds: the call's first packet
const iso = (s) => new Date(s * 1000).toISOString();

const state = (call_id, s, at, more = {}) => ({ type: "state", id: `${at}-0`, call_id, state: s, at, ...more });
const attempt = (call_id, live, at, more = {}) => ({
  type: "attempt", id: `${at}-1`, call_id, state: live ? "IN_PROGRESS" : "COMPLETED", at,
  step: "transcription", attempt: 1, outcome: "ok", error: null, duration_ms: 120, live,
  window: live ? "0.0-2.0 s" : null, ...more,
});
const progress = (call_id, received, at, more = {}) => ({
  type: "progress", id: `${at}-2`, call_id, state: "IN_PROGRESS", at, received, duplicates: 0,
  out_of_order: 0, missing: 0, data_bytes: received * 160, last_packet_at: at, ...more,
});
const record = (call_id, s, more = {}) => ({
  call_id, state: s, created_at: iso(T0), completed_at: null, finished_at: null,
  packets_received: 10, duplicate_packets: 0, out_of_order_packets: 0, missing_count: 0,
  ai_attempts: 0, completion_reason: null, last_error: null, sentiment: null, transcript: null,
  ...more,
});

function liveCall() {
  const calls = new Calls();
  calls.applyEvent(state("c1", "IN_PROGRESS", T0));
  calls.applyEvent(progress("c1", 50, T0 + 1));
  return calls;
}

test("a live attempt leaves an IN_PROGRESS call IN_PROGRESS with its duration running", () => {
  const calls = liveCall();
  const effect = calls.applyEvent(attempt("c1", true, T0 + 2));
  const call = calls.get("c1");
  assert.equal(call.state, "IN_PROGRESS");
  assert.equal(call.aiLive, true);
  assert.equal(call.aiStep, "transcription");
  assert.equal(call.attempts, 1);
  assert.equal(effect.reread, false);
  assert.equal(callDuration(call, T0 + 3), 3);
  assert.equal(callDuration(call, T0 + 7.5), 7.5); // it runs on with the clock
});

test("a final attempt moves an IN_PROGRESS or COMPLETED call to PROCESSING_AI", () => {
  const calls = liveCall();
  calls.applyEvent(attempt("c1", false, T0 + 2));
  assert.equal(calls.get("c1").state, "PROCESSING_AI");
  assert.equal(calls.get("c1").aiLive, false);

  calls.applyEvent(state("c2", "IN_PROGRESS", T0));
  calls.applyEvent(state("c2", "COMPLETED", T0 + 4, { reason: "explicit" }));
  calls.applyEvent(attempt("c2", false, T0 + 5, { outcome: "transient", error: "provider down" }));
  const c2 = calls.get("c2");
  assert.equal(c2.state, "PROCESSING_AI");
  assert.equal(c2.aiOutcome, "transient");
  assert.equal(c2.aiError, "provider down");
  // Its duration stopped at its completion, not at the attempt.
  assert.equal(callDuration(c2, T0 + 100), 4);
});

test("a final attempt never takes a finished call back", () => {
  const calls = new Calls();
  calls.reset([record("c1", "ARCHIVED", { finished_at: iso(T0 + 9) })]);
  calls.applyEvent(attempt("c1", false, T0 + 8));
  assert.equal(calls.get("c1").state, "ARCHIVED");
});

test("a state only moves forward: an older event cannot take a call back", () => {
  const calls = new Calls();
  // What a read said, then events that waited for it (they are older than the read).
  calls.reset([record("c1", "ARCHIVED", {
    completed_at: iso(T0 + 4), finished_at: iso(T0 + 9), completion_reason: "explicit" })]);
  for (const s of ["IN_PROGRESS", "COMPLETED", "PROCESSING_AI"]) {
    const effect = calls.applyEvent(state("c1", s, T0 + 5, { reason: "idle" }));
    assert.equal(effect.reread, false, s);
  }
  const call = calls.get("c1");
  assert.equal(call.state, "ARCHIVED");
  assert.equal(call.completion, "explicit"); // the stale COMPLETED changed nothing
  assert.equal(call.completedAt, T0 + 4);

  // Forward, each step in turn.
  calls.applyEvent(state("c2", "IN_PROGRESS", T0));
  const seen = [];
  for (const s of CONTRACT.states.slice(1, 4)) {
    calls.applyEvent(state("c2", s, T0 + 1, { reason: "explicit" }));
    seen.push(calls.get("c2").state);
  }
  assert.deepEqual(seen, ["COMPLETED", "PROCESSING_AI", "ARCHIVED"]);
});

test("a replay takes a FAILED call back to COMPLETED and forgets its failure", () => {
  const calls = new Calls();
  calls.applyEvent(state("c1", "IN_PROGRESS", T0));
  calls.applyEvent(state("c1", "COMPLETED", T0 + 2, { reason: "explicit" }));
  calls.applyEvent(attempt("c1", false, T0 + 3, { outcome: "permanent", error: "unreadable" }));
  calls.applyEvent(state("c1", "FAILED", T0 + 4, { reason: "transcription failed" }));
  const call = calls.get("c1");
  call.replaying = true;
  assert.equal(call.failure, "transcription failed");

  calls.applyEvent(state("c1", "COMPLETED", T0 + 60, { reason: "replay" }));
  assert.equal(call.state, "COMPLETED");
  assert.equal(call.completion, "replay");
  assert.equal(call.failure, null);
  assert.equal(call.finishedAt, null);
  assert.equal(call.aiStep, null);
  assert.equal(call.replaying, false);
  assert.equal(call.completedAt, T0 + 2); // a replay is not a new completion
  calls.applyEvent(attempt("c1", false, T0 + 61));
  calls.applyEvent(state("c1", "ARCHIVED", T0 + 62));
  assert.equal(call.state, "ARCHIVED");
});

test("a reset forgets what the feed told: the calls are what the read says", () => {
  const calls = liveCall();
  calls.applyEvent(attempt("c1", true, T0 + 2));
  calls.applyEvent(state("only-in-the-feed", "IN_PROGRESS", T0));
  calls.reset([record("c1", "COMPLETED", { completed_at: iso(T0 + 5), packets_received: 70 })]);
  assert.deepEqual([...calls.values()].map((c) => c.id), ["c1"]);
  const call = calls.get("c1");
  assert.equal(call.state, "COMPLETED");
  assert.equal(call.received, 70);
  assert.equal(call.aiStep, null); // the feed's attempt is forgotten with the rest
  assert.equal(call.lastPacketAt, null);
  assert.equal(call.createdAt, T0);
});

test("a record is the server's word: its values, its failure, an excerpt of its transcript", () => {
  const calls = new Calls();
  const long = "word ".repeat(100);
  const failed = calls.applyRecord(record("c1", "FAILED", { last_error: "no audio", ai_attempts: 3 }));
  assert.equal(failed.failure, "no audio");
  assert.equal(failed.attempts, 3);
  const done = calls.applyRecord(record("c2", "ARCHIVED", { transcript: long, last_error: "old" }));
  assert.equal(done.failure, null); // only a FAILED call's last error is why it failed
  assert.equal(done.excerpt, long.slice(0, CONTRACT.excerptChars));
});

test("what the feed cannot tell is read again: counters at the end, calls seen mid-way", () => {
  const calls = new Calls();
  // First seen at its completion: started before the page looked, its counters unknown.
  assert.equal(calls.applyEvent(state("c1", "COMPLETED", T0 + 3, { reason: "idle" })).reread, true);
  // A short call: no progress event, so its counters are read at its completion.
  calls.applyEvent(state("c2", "IN_PROGRESS", T0));
  assert.equal(calls.get("c2").received, null); // unknown, never a made-up 0
  assert.equal(calls.applyEvent(state("c2", "COMPLETED", T0 + 1, { reason: "explicit" })).reread, true);
  // Counters known from progress: nothing to read at completion, but exact ones at the end.
  const c3 = liveCall();
  assert.equal(c3.applyEvent(state("c1", "COMPLETED", T0 + 2, { reason: "explicit" })).reread, false);
  assert.equal(c3.applyEvent(state("c1", "ARCHIVED", T0 + 3)).reread, true);
  const c4 = liveCall();
  assert.equal(c4.applyEvent(state("c1", "FAILED", T0 + 3, { reason: "x" })).reread, true);
});

test("progress counts packets and never moves a call that has moved on", () => {
  const calls = liveCall();
  const effect = calls.applyEvent(progress("c1", 80, T0 + 2, { missing: 2, duplicates: 1 }));
  assert.equal(effect.packets, 30);
  const call = calls.get("c1");
  assert.deepEqual([call.received, call.missing, call.duplicates], [80, 2, 1]);
  calls.applyEvent(state("c1", "COMPLETED", T0 + 3, { reason: "explicit" }));
  assert.equal(calls.applyEvent(progress("c1", 80, T0 + 3)).packets, 0);
  assert.equal(call.state, "COMPLETED");
});

test("an event told twice changes nothing more; one without a call is ignored", () => {
  const calls = liveCall();
  const archived = state("c1", "ARCHIVED", T0 + 9, {
    sentiment: { label: "positive", score: 0.5 }, transcript_excerpt: "hello" });
  calls.applyEvent(archived);
  const once = structuredClone(calls.get("c1"));
  calls.applyEvent(archived);
  assert.deepEqual(calls.get("c1"), once);
  assert.equal(once.sentiment.label, "positive");
  assert.equal(calls.applyEvent({ type: "reset", reason: "trimmed" }).reread, false);
  assert.equal(calls.size, 1);
});

test("only the newest finished calls are kept, and a looked-up one stays", () => {
  const calls = new Calls();
  calls.reset([1, 2, 3, 4].map((n) => record(`c${n}`, "ARCHIVED", { finished_at: iso(T0 + n) })));
  calls.get("c1").pinned = true;
  calls.applyEvent(state("live", "IN_PROGRESS", T0));
  calls.forgetOldFinished(2);
  assert.deepEqual([...calls.values()].map((c) => c.id).sort(), ["c1", "c3", "c4", "live"]);
});

test("the server's clock is the local one plus the largest offset its events show", () => {
  let local = 1000;
  const clock = new ServerClock(() => local);
  clock.sample(1004); // 4 s ahead, delivered at once
  clock.sample(1003.5); // the same clock, seen through a slower delivery
  clock.sample("not a time");
  local = 1010;
  assert.equal(clock.now(), 1014);
  const rate = new RateMeter(5, () => local);
  rate.add(20);
  rate.add(0);
  assert.equal(rate.perSecond(), 4);
  local = 1016;
  assert.equal(rate.perSecond(), 0); // out of the window
});
