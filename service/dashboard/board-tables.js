// The board's three tables (live, failed, recently finished): their columns, sorting by any
// column (a header is a button), the search filter, and keyed rows updated in place. A table is
// a view of the calls: draw() takes them, the search term and the server's time, and writes
// only what changed.

import { CONTRACT } from "./contract.js";
import { $, badgeClass, setIfChanged } from "./dom.js";
import { ageOf, ageText, count, formatDuration, known, sentimentText, timeText } from "./format.js";
import { callDuration } from "./model.js";
import { callHref } from "./routes.js";

const STATES = CONTRACT.states;
const LIVE_STATES = new Set(CONTRACT.liveStates);
const MAX_ROWS = 300; // rows drawn per table: the rest is a search away
const STALE_PACKET_S = 5; // a live call silent this long is marked

// The step of the last AI attempt the feed reported (an attempt is reported once it ends).
function aiStepText(call) {
  if (!call.aiStep) return { COMPLETED: "queued", PROCESSING_AI: "started" }[call.state] ?? "–";
  const step = call.aiLive ? `live ${call.aiStep}` : call.aiStep;
  return call.aiOutcome && call.aiOutcome !== "ok" ? `${step} (${call.aiOutcome})` : step;
}

// The call id links to the call's page (a link: reached with Tab, followed with Enter).
const idColumn = { key: "id", label: "Call", value: (c) => c.id, text: (c) => c.id, cls: () => "id",
  link: true };
const numeric = (key, label, value) => ({ key, label, num: true, value, text: (c) => known(value(c)) });
const duration = { key: "duration", label: "Duration", num: true, value: callDuration,
  text: (c, now) => formatDuration(callDuration(c, now)) };
const ageColumn = (key, label) => ({ key, label, num: true, value: (c, now) => ageOf(c.finishedAt, now),
  text: (c, now) => ageText(c.finishedAt, now), title: (c) => timeText(c.finishedAt) });

const TABLES = {
  live: {
    includes: (c) => LIVE_STATES.has(c.state),
    sort: { key: "duration", descending: false },
    columns: [
      idColumn,
      { key: "state", label: "State", value: (c) => STATES.indexOf(c.state),
        text: (c) => c.state, badge: (c) => c.state },
      duration,
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
      ageColumn("failed", "Failed"),
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
      ageColumn("finished", "Finished"),
      duration,
      numeric("packets", "Packets", (c) => c.received),
      { key: "sentiment", label: "Sentiment", value: (c) => c.sentiment?.score ?? null,
        text: (c) => (c.sentiment ? sentimentText(c.sentiment) : "–"),
        badge: (c) => c.sentiment?.label ?? "" },
      { key: "transcript", label: "Transcript", value: (c) => c.excerpt ?? "",
        text: (c) => c.excerpt ?? "–", title: (c) => c.excerpt ?? "", cls: () => "text",
        clamp: true },
    ],
  },
};

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

// The tables of the board: `onSort` redraws, `onReplay(id)` asks for a failed call's replay.
export class BoardTables {
  constructor({ onSort, onReplay }) {
    Object.assign(this, { onSort, onReplay });
    this.rows = { live: new Map(), failed: new Map(), finished: new Map() }; // id -> <tr>
    for (const [name, table] of Object.entries(TABLES)) {
      const empty = $(`${name}-empty`);
      empty.dataset.text = empty.textContent;
      $(`${name}-table`).tHead.append(this.headerRow(name, table));
      this.showSortState(name);
    }
  }

  headerRow(name, table) {
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
        const arrow = document.createElement("span");
        arrow.className = "arrow";
        arrow.setAttribute("aria-hidden", "true");
        button.append(column.label, arrow);
        button.addEventListener("click", () => this.sortBy(name, column.key));
        th.append(button);
      }
      row.append(th);
    }
    return row;
  }

  sortBy(name, key) {
    const sort = TABLES[name].sort;
    sort.descending = sort.key === key ? !sort.descending : false;
    sort.key = key;
    this.showSortState(name);
    this.onSort();
  }

  showSortState(name) {
    const sort = TABLES[name].sort;
    for (const th of $(`${name}-table`).tHead.rows[0].cells) {
      const sorted = th.dataset.key === sort.key;
      if (sorted) th.setAttribute("aria-sort", sort.descending ? "descending" : "ascending");
      else th.removeAttribute("aria-sort");
      const arrow = th.querySelector(".arrow");
      if (arrow) arrow.textContent = sorted ? (sort.descending ? "▼" : "▲") : "";
    }
  }

  // Draws every table from the calls (any iterable); returns how many matched the search.
  draw(calls, term, now) {
    const all = [...calls];
    return Object.keys(TABLES).reduce((sum, name) => sum + this.drawTable(name, all, term, now), 0);
  }

  drawTable(name, calls, term, now) {
    const table = TABLES[name];
    const matching = calls.filter(
      (c) => table.includes(c) && (!term || c.id.toLowerCase().includes(term)),
    );
    const column = table.columns.find((c) => c.key === table.sort.key);
    matching.sort(compareBy(column, table.sort.descending, now));
    const shown = matching.slice(0, MAX_ROWS);

    const rows = this.rows[name];
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
        tr = this.createRow(table, call);
        rows.set(call.id, tr);
      }
      updateRow(tr, table, call, now);
      // Rows move only when the order changed: moving a row would take the focus off its button.
      if (tbody.rows[index] !== tr) tbody.insertBefore(tr, tbody.rows[index] ?? null);
    });

    $(`${name}-count`).textContent = count(matching.length);
    const empty = $(`${name}-empty`);
    empty.hidden = matching.length > 0;
    empty.textContent = term ? `No call id here contains “${term}”.` : empty.dataset.text;
    showMore(tbody, matching.length, shown.length);
    return matching.length;
  }

  createRow(table, call) {
    const tr = document.createElement("tr");
    tr.dataset.callId = call.id;
    for (const column of table.columns) {
      const td = document.createElement("td");
      td.dataset.key = column.key;
      if (column.replay) td.append(this.replayButton(call.id));
      else if (column.link) td.append(callLink(call.id));
      else if (column.badge) td.append(document.createElement("span"));
      else if (column.clamp) td.append(Object.assign(document.createElement("div"), { className: "clamp" }));
      tr.append(td);
    }
    return tr;
  }

  replayButton(id) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Replay";
    button.setAttribute("aria-label", `Replay ${id}`);
    button.addEventListener("click", () => this.onReplay(id));
    return button;
  }
}

function updateRow(tr, table, call, now) {
  table.columns.forEach((column, i) => {
    const td = tr.cells[i];
    if (column.replay) {
      setIfChanged(td.firstChild, "disabled", call.replaying);
      setIfChanged(td.firstChild, "textContent", call.replaying ? "Replaying…" : "Replay");
      return;
    }
    const target = column.badge || column.clamp || column.link ? td.firstChild : td;
    setIfChanged(target, "textContent", String(column.text(call, now)));
    const classes = [column.num ? "num" : "", column.cls?.(call, now) ?? ""];
    setIfChanged(td, "className", classes.join(" ").trim());
    if (column.badge) setIfChanged(target, "className", badgeClass(column.badge(call)));
    if (column.title) setIfChanged(td, "title", column.title(call));
  });
}

function callLink(id) {
  const link = document.createElement("a");
  link.href = callHref(id);
  link.title = "Open this call's page";
  return link;
}

function showMore(tbody, total, shown) {
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
