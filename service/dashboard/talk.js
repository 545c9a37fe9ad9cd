// A call's conversation as a model: its utterances (from GET /v1/calls/{id}/transcript and the
// feed's `utterance` events, each once however often it is told) and, per speaker, how much
// they said and how they sounded: the call's own figures once it is ARCHIVED, else what the
// utterances say so far. Pure: no DOM (tests/dashboard/talk.test.js).

export const ROLES = { inbound: "caller", outbound: "agent" }; // what each track's speaker is
const NEUTRAL_BAND = 0.05; // a mean score this close to 0 is neutral (VADER's own threshold)

export const trackOrder = (track) => ({ inbound: 0, outbound: 1 })[track] ?? 2;
export const byTime = (a, b) => a.start_s - b.start_s || trackOrder(a.track) - trackOrder(b.track) ||
  a.end_s - b.end_s;
const utteranceKey = (u) => `${u.track}|${u.start_s.toFixed(3)}|${u.end_s.toFixed(3)}|${u.text}`;

function isUtterance(u) {
  return u && typeof u.track === "string" && typeof u.text === "string" &&
    Number.isFinite(u.start_s) && Number.isFinite(u.end_s);
}

export function meanSentiment(said) {
  const scored = said.filter((u) => Number.isFinite(u.sentiment?.score));
  if (!scored.length) return null;
  const score = scored.reduce((sum, u) => sum + u.sentiment.score, 0) / scored.length;
  const label = score > NEUTRAL_BAND ? "positive" : score < -NEUTRAL_BAND ? "negative" : "neutral";
  return { label, score };
}

export class Talk {
  constructor() {
    this.said = new Map(); // utterance key -> utterance
    this.conversation = null; // the call's figures (once ARCHIVED), else null
  }

  get size() {
    return this.said.size;
  }

  // From a read or a feed event; true when one was new.
  add(list) {
    let added = false;
    for (const u of list ?? []) {
      if (!isUtterance(u)) continue;
      const key = utteranceKey(u);
      if (this.said.has(key)) continue;
      this.said.set(key, {
        key,
        speaker: u.speaker || ROLES[u.track] || u.track,
        track: u.track,
        start_s: u.start_s,
        end_s: u.end_s,
        text: u.text,
        sentiment: u.sentiment ?? null,
      });
      added = true;
    }
    return added;
  }

  // The call's figures as any read of it says them (its status or its transcript); true when
  // they changed. Once known, a read without them is one that started before the call was
  // ARCHIVED and landed late.
  setConversation(conversation) {
    if (conversation === undefined || (conversation === null && this.conversation)) return false;
    this.conversation = conversation;
    return true;
  }

  byTime() {
    return [...this.said.values()].sort(byTime);
  }

  // One entry per speaker, by track: name, track, said (their utterances), utterances, talkS,
  // sentiment, and final (the call's own figures).
  speakers() {
    const byTrack = new Map();
    for (const u of this.said.values()) {
      const mine = byTrack.get(u.track) ?? { name: u.speaker, track: u.track, said: [] };
      mine.said.push(u);
      byTrack.set(u.track, mine);
    }
    for (const [name, figures] of Object.entries(this.conversation?.speakers ?? {})) {
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

  // The call's timeline: as long as its recording, or its last utterance if that is later.
  timelineSeconds(recordingS) {
    const lastEnd = Math.max(0, ...[...this.said.values()].map((u) => u.end_s));
    return Math.max(lastEnd, recordingS ?? 0, 1);
  }
}
