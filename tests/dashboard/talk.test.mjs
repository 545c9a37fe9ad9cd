// A call's conversation as a model (service/dashboard/talk.js), under `node --test`.

import assert from "node:assert/strict";
import { test } from "node:test";

import { Talk, meanSentiment } from "../../service/dashboard/talk.js";

const said = (track, start_s, end_s, text, score = null) => ({
  speaker: track === "inbound" ? "Robin" : "Sam", track, start_s, end_s, text,
  sentiment: score === null ? null : { label: score > 0 ? "positive" : "negative", score },
});

test("each utterance is kept once however often the feed and the reads tell it", () => {
  const talk = new Talk();
  const first = said("inbound", 0, 1.2, "hello");
  assert.equal(talk.add([first]), true); // from the feed
  assert.equal(talk.add([{ ...first }, said("outbound", 0.5, 1, "hi")]), true); // a read
  assert.equal(talk.add([first]), false);
  assert.equal(talk.add([{ track: "inbound", text: "no times" }, null]), false);
  assert.deepEqual(talk.byTime().map((u) => u.text), ["hello", "hi"]);
});

test("utterances go by time, the caller first when both start together", () => {
  const talk = new Talk();
  talk.add([said("outbound", 2, 3, "c"), said("outbound", 0, 1, "b"), said("inbound", 0, 2, "a")]);
  assert.deepEqual(talk.byTime().map((u) => u.text), ["a", "b", "c"]);
});

test("a speaker's figures so far come from their utterances, then from the call's own", () => {
  const talk = new Talk();
  talk.add([said("inbound", 0, 2, "bad", -0.6), said("inbound", 3, 4, "worse", -0.2),
    said("outbound", 1, 1.5, "sorry", 0.4)]);
  const [caller, agent] = talk.speakers();
  assert.equal(caller.name, "Robin");
  assert.equal(caller.utterances, 2);
  assert.equal(caller.talkS, 3);
  assert.equal(caller.sentiment.label, "negative");
  assert.ok(Math.abs(caller.sentiment.score + 0.4) < 1e-9);
  assert.equal(agent.track, "outbound");

  const final = { speakers: { Robin: { track: "inbound", utterances: 5, talk_s: 9.5,
    sentiment: { label: "neutral", score: 0 } } }, silence_s: 1, overlap_s: 0, overlap_count: 0 };
  assert.equal(talk.setConversation(final), true);
  const [callerNow] = talk.speakers();
  assert.deepEqual([callerNow.utterances, callerNow.talkS, callerNow.final], [5, 9.5, true]);
  // A late read from before the call was ARCHIVED (no figures) does not take them away.
  assert.equal(talk.setConversation(null), false);
  assert.equal(talk.setConversation(undefined), false);
  assert.equal(talk.conversation, final);
});

test("a mean score near zero is neutral; nothing scored is no sentiment", () => {
  assert.equal(meanSentiment([said("inbound", 0, 1, "a", 0.5), said("inbound", 1, 2, "b", -0.46)])
    .label, "neutral");
  assert.equal(meanSentiment([said("inbound", 0, 1, "a")]), null);
});

test("the timeline is as long as the recording or the last utterance, at least a second", () => {
  const talk = new Talk();
  assert.equal(talk.timelineSeconds(0), 1);
  talk.add([said("inbound", 0, 2.5, "a")]);
  assert.equal(talk.timelineSeconds(2), 2.5);
  assert.equal(talk.timelineSeconds(4), 4);
});
