// The board (the list of calls): it starts from GET /v1/calls (one read per state), then follows
// the live feed, applying each event to the state model (model.js) and drawing the tables
// (board-tables.js) at most once a frame; the system strip polls on its own (system.js).
// Search filters the tables as you type; Enter looks up an id the page has not seen, and searches
// what was said (said-search.js).

import { api, callPath, isAuthError } from "./api.js";
import { BoardTables } from "./board-tables.js";
import { CONTRACT } from "./contract.js";
import { $, setStatus } from "./dom.js";
import { FeedReader } from "./feed.js";
import { formatSeconds } from "./format.js";
import { Calls, RateMeter, ServerClock } from "./model.js";
import { Rereads } from "./rereads.js";
import { CALL_ID } from "./routes.js";
import { clearSaid, searchSaid } from "./said-search.js";
import { SystemPoller, showSystem } from "./system.js";

// How many calls of each state the first read asks for (newest first).
const SNAPSHOT_LIMITS = {
  IN_PROGRESS: 500,
  COMPLETED: 200,
  PROCESSING_AI: 200,
  ARCHIVED: 100,
  FAILED: 200,
};
const KEEP_FINISHED = 200; // ARCHIVED calls kept in memory; older ones are forgotten
const RATE_WINDOW_S = 5; // packets/s is averaged over this window
const SNAPSHOT_RETRY_MS = 5000;

const setFeedStatus = (state, text) => setStatus("feed-status", "feed-text", state, text);
const searchTerm = () => $("search").value.trim().toLowerCase();

export class Board {
  constructor() {
    this.calls = new Calls();
    this.clock = new ServerClock();
    this.rate = new RateMeter(RATE_WINDOW_S);
    this.rereads = new Rereads((id, tries) => this.reread(id, tries), () => this.scheduleRender());
    this.tables = new BoardTables({
      onSort: () => this.scheduleRender(),
      onReplay: (id) => this.replay(id),
    });
    // Until the first read of the calls has landed, events wait here: applied on top of it,
    // they bring it up to date (a state never moves back: see model.js).
    this.snapshot = { generation: 0, loading: false, loadedOnce: false, buffer: [] };
    this.session = null; // { feed, system, refused }: from start() to stop()
    this.lookedUp = new Set();
    this.renderPending = false;
    $("search").addEventListener("input", () => {
      clearSaid(); // a new term: Enter searches what was said again
      this.scheduleRender();
    });
    $("search").addEventListener("keydown", (event) => {
      if (event.key !== "Enter") return;
      const term = $("search").value.trim();
      this.lookUp(term)
        .then(() => searchSaid(term, (error) => this.refused(error)))
        .then(() => this.scheduleRender()); // the note says how many
    });
  }

  // A new session (a key accepted): the feed from its start, the calls read afresh.
  start(system, refused) {
    this.stop();
    const session = { refused };
    session.system = new SystemPoller(refused);
    session.feed = new FeedReader("/v1/events", {
      connecting: () => setFeedStatus("connecting", "Connecting to the live feed…"),
      // Subscribed (the server's first bytes). With no position to resume from, what happened
      // before is unknown: read the calls now; events from here on wait for that read.
      connected: (resumed) => {
        setFeedStatus("connected", "Live feed connected");
        if (!resumed) this.loadSnapshot();
      },
      event: (event) => this.onEvent(event),
      reset: () => this.loadSnapshot(), // events were missed: start over
      // Without the feed the calls are still worth seeing: read them while it reconnects.
      failed: () => this.snapshot.loadedOnce || this.snapshot.loading || this.loadSnapshot(),
      lost: (reason, waitMs) => setFeedStatus("down",
        `Live feed lost (${reason}); reconnecting in ${Math.max(Math.round(waitMs / 1000), 1)} s…`),
      refused,
    });
    this.session = session;
    showSystem(system);
    session.feed.start();
  }

  stop() {
    this.session?.feed.stop();
    this.session?.system.stop();
    this.session = null;
  }

  refused(error) {
    this.session?.refused(error);
  }

  onEvent(event) {
    this.clock.sample(event.at);
    if (this.snapshot.loading) this.snapshot.buffer.push(event);
    else this.apply(event);
    this.scheduleRender();
  }

  apply(event) {
    const effect = this.calls.applyEvent(event);
    this.rate.add(effect.packets);
    if (effect.reread) this.rereads.soon(event.call_id);
  }

  async loadSnapshot() {
    const session = this.session;
    const snapshot = this.snapshot;
    const generation = ++snapshot.generation;
    this.showLoading(true);
    snapshot.buffer = [];
    try {
      const pages = await Promise.all(CONTRACT.states.map(
        (state) => api(`/v1/calls?state=${state}&limit=${SNAPSHOT_LIMITS[state]}`),
      ));
      if (generation !== snapshot.generation) return; // a newer read is under way
      this.calls.reset(pages.flatMap((page) => page.items));
      snapshot.loadedOnce = true;
    } catch (error) {
      if (generation !== snapshot.generation) return;
      if (isAuthError(error)) this.refused(error);
      else setTimeout(() => this.session === session && this.loadSnapshot(), SNAPSHOT_RETRY_MS);
    }
    this.showLoading(false);
    snapshot.buffer.forEach((event) => this.apply(event));
    snapshot.buffer = [];
    this.scheduleRender();
  }

  // While the calls are read the board is busy (aria-busy); data-calls says whether they have
  // been read at all ("read" once a read has landed and none is under way).
  showLoading(loading) {
    this.snapshot.loading = loading;
    const board = $("board");
    board.setAttribute("aria-busy", String(loading));
    board.dataset.calls = loading ? "reading" : this.snapshot.loadedOnce ? "read" : "unread";
  }

  // One call read again; a read that an event overtook (its state moved meanwhile) is asked
  // for again: a row must not keep the values of a read that never landed.
  async reread(id, tries) {
    const before = this.calls.get(id);
    if (!before) return;
    const state = before.state;
    let record;
    try {
      record = await api(callPath(id));
    } catch (error) {
      if (isAuthError(error)) this.refused(error);
      else if (error.status !== 404) this.rereads.retry(id, tries); // a network error, a 503...
      return;
    }
    if (this.calls.get(id) !== before) return; // forgotten, or the calls were read afresh
    if (before.state !== state) this.rereads.soon(id);
    else this.calls.applyRecord(record);
  }

  // POST /v1/calls/{id}/retry (admin): the feed then shows the call moving on.
  async replay(id) {
    const call = this.calls.get(id);
    if (!call || call.replaying) return;
    call.replaying = true;
    this.scheduleRender();
    try {
      await api(callPath(id, "/retry"), { method: "POST" });
      note(`Replay of ${id} accepted.`);
    } catch (error) {
      call.replaying = false;
      if (error.status === 403) note(`Replay needs an admin key: ${error.detail}`, true);
      else if (error.status === 409) {
        note(`${id} is no longer FAILED.`, true);
        this.rereads.soon(id);
      } else note(`Replay of ${id} failed: ${error.message}`, true);
    }
    this.scheduleRender();
  }

  async lookUp(term) {
    if (!CALL_ID.test(term) || this.calls.has(term) || this.lookedUp.has(term)) return;
    this.lookedUp.add(term);
    try {
      this.calls.applyRecord(await api(callPath(term))).pinned = true;
    } catch (error) {
      if (isAuthError(error)) return this.refused(error);
      $("search-note").textContent =
        error.status === 404 ? `No call has the id “${term}”.` : error.message;
      return;
    }
    this.scheduleRender();
  }

  // The key was forgotten: nothing of what it read stays.
  forget() {
    this.calls.clear();
  }

  scheduleRender() {
    if (this.renderPending) return;
    this.renderPending = true;
    requestAnimationFrame(() => this.render());
  }

  render() {
    this.renderPending = false;
    this.calls.forgetOldFinished(KEEP_FINISHED);
    const term = searchTerm();
    const found = this.tables.draw(this.calls.values(), term, this.clock.now());
    const said = $("search-results").childElementCount; // Enter's search of what was said
    $("search-note").textContent = said ? `Said in ${said} call(s):`
      : term && !found ? `No call matches “${term}”.` : "";
    $("sys-rate").textContent = this.rate.perSecond().toFixed(1);
    this.showFeedAge();
  }

  showFeedAge() {
    const lastEventAt = this.session?.feed.lastEventAt ?? null;
    if ($("feed-status").dataset.state !== "connected" || lastEventAt === null) return;
    const age = Math.floor((Date.now() - lastEventAt) / 1000);
    $("feed-text").textContent = `Live feed connected · last event ${formatSeconds(age)} ago`;
  }

  show(left) {
    $("board").hidden = false;
    $("search-box").hidden = false;
    document.title = "Callstream · supervisor";
    if (left === null) return;
    // Back where the supervisor came from: the call's row, else the top of the list.
    const link = document.querySelector(`#board tr[data-call-id="${CSS.escape(left)}"] a`);
    if (link) link.focus();
    this.scheduleRender();
  }

  hide() {
    $("board").hidden = true;
    $("search-box").hidden = true;
  }
}

function note(text, bad = false) {
  const element = $("replay-note");
  element.textContent = text;
  element.className = bad ? "note bad" : "note";
}
