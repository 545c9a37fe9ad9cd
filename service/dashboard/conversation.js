// A call page's conversation (the model is talk.js): the utterances by time, each with its
// speaker, start and end, text and sentiment (a button: it plays the recording from its start),
// and per speaker how much they said and how they sounded over the call's time (a strip of
// bars). The figures of the whole call (talk time, silence, overlap) come once it is ARCHIVED.

import { $, badgeClass, span, svgElement, tableRow } from "./dom.js";
import { clockText, formatDuration, known, scoreText, sentimentText } from "./format.js";
import { ROLES, Talk, byTime } from "./talk.js";

const STRIP = { width: 1000, height: 36 }; // the sentiment strip's own units (it is stretched)
const spanText = (u) => `${clockText(u.start_s)}–${clockText(u.end_s)}`;

// One call's conversation, from its page's opening. `status()` is what the page knows of the
// call: null before its first read, else { live }; `recordingS()` the recording's length;
// `playFrom(s)` plays the recording from there.
export class Conversation {
  constructor({ status, recordingS, playFrom }) {
    Object.assign(this, { status, recordingS, playFrom });
    this.talk = new Talk();
    this.items = new Map(); // utterance key -> its <li>
    $("utterances").replaceChildren();
    $("speakers-table").tBodies[0].replaceChildren();
    $("utterances-note").textContent = "Loading…";
    this.show();
  }

  add(list) {
    if (this.talk.add(list)) this.showUtterances();
    else if (!this.talk.size) this.show(); // says there is nothing yet
  }

  setConversation(conversation) {
    if (this.talk.setConversation(conversation)) this.show();
  }

  showUtterances() {
    const list = $("utterances");
    this.talk.byTime().forEach((u, index) => {
      let item = this.items.get(u.key);
      if (!item) {
        item = this.utteranceItem(u);
        this.items.set(u.key, item);
      }
      // Only an item out of place moves (a moved item would lose the keyboard's focus).
      if (list.children[index] !== item) list.insertBefore(item, list.children[index] ?? null);
    });
    this.show();
  }

  utteranceItem(u) {
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
    if (u.sentiment) head.append(span(badgeClass(u.sentiment.label), sentimentText(u.sentiment)));
    button.append(head, span("said", u.text || "(nothing heard)"));
    button.addEventListener("click", () => this.playFrom(u.start_s));
    item.append(button);
    return item;
  }

  show() {
    const count = this.talk.size;
    $("utterance-count").textContent = String(count);
    const status = this.status();
    if (count) $("utterances-note").textContent = "";
    else if (status) {
      $("utterances-note").textContent = status.live
        ? "Nothing transcribed yet: utterances appear here while the call goes on."
        : "No utterances.";
    }
    const total = this.talk.timelineSeconds(this.recordingS());
    const rows = this.talk.speakers().map((mine) => speakerRow(mine, total));
    $("speakers-table").tBodies[0].replaceChildren(...rows);
    $("speakers-table").hidden = !rows.length;
    $("timeline-end").textContent = clockText(total);
    $("speakers-timeline").hidden = !rows.length;
    this.showCallFigures(rows.length > 0);
  }

  showCallFigures(anyone) {
    const c = this.talk.conversation;
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
}

function speakerRow(mine, total) {
  const sentiment = mine.sentiment;
  const row = tableRow({ track: mine.track }, [
    { text: mine.name, key: "speaker" },
    { text: ROLES[mine.track] ?? mine.track, key: "role" },
    { text: known(mine.utterances), num: true, key: "utterances" },
    { text: formatDuration(mine.talkS), num: true, key: "talk" },
    sentiment
      ? { text: sentimentText(sentiment), badge: sentiment.label, key: "sentiment" }
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
    title.textContent = `${spanText(u)} ${u.sentiment ? `${sentimentText(u.sentiment)}`
      : "not scored"}: ${u.text}`;
    bar.append(title);
    svg.append(bar);
  }
  return svg;
}
