// Callstream supervisor dashboard: native ES modules, no build step, no dependencies. This is
// the page's entry module: the key panel, a session per accepted key, and the route between the
// board (board.js) and a call's page (call-page.js). The other modules:
//
//   contract.js      the server's rules (states, call-id rule, events, limits): generated
//   api.js           the API client: the key, requests that carry it, problem details
//   feed.js          the live feed's one resumable reader (SSE, Last-Event-ID, reset)
//   model.js         the board's state model: records and events applied (pure, node-tested)
//   board.js         the board: first read, feed, re-reads, search, replay, render loop
//   board-tables.js  the board's tables: columns, sorting, keyed rows
//   rereads.js       re-reads of single calls at a bounded pace
//   system.js        the system strip (GET /v1/system)
//   call-page.js     a call's page: status, tracks, history and AI attempts, its own feed
//   recording.js     a call's recording, fetched with the key and played from a Blob
//   conversation.js  a call's conversation: utterances, speakers, sentiment strips
//   talk.js          the conversation's model (pure, node-tested)
//   routes.js, format.js, dom.js   addresses, how values are written, DOM helpers

import { ApiError, api, forgetKey, isAuthError, keepKey, storedKey } from "./api.js";
import { Board } from "./board.js";
import { CallPage } from "./call-page.js";
import { $, setStatus } from "./dom.js";
import { routedCall } from "./routes.js";

const START_RETRY_MS = 5000;
const setFeedStatus = (state, text) => setStatus("feed-status", "feed-text", state, text);

const board = new Board();
const callPage = new CallPage({ clock: board.clock, refused: askForKey });
let admitted = false; // the API took the key: the board or a call's page may show
let starting = 0; // each start() counts: an older start's answer is dropped

// Shows the page the address names; until the key is accepted, neither (start() calls this).
function showRoute() {
  if (!admitted) return;
  const id = routedCall(location.hash);
  if (id === null) {
    const left = callPage.id;
    callPage.leave();
    board.show(left);
  } else if (id !== callPage.id) {
    board.hide();
    callPage.open(id);
  }
}

// Shown when the API refuses the key (or asks for one): 401 no key or a wrong one, 403 a key
// whose role may not read, or no keys configured and this browser not on the API's machine.
function askForKey(error) {
  stop();
  const hadKey = Boolean(storedKey());
  forgetKey(); // a refused key is not tried again on reload
  let reason = "This Callstream needs a supervisor API key.";
  if (error.status === 401 && hadKey) reason = "That key was refused: it is not a valid API key.";
  else if (error.code === "forbidden") reason = `That key may not read calls: ${error.detail}`;
  else if (error.status === 403) reason = error.detail;
  $("key-reason").textContent = hadKey ? "" : reason;
  $("key-error").textContent = hadKey ? reason : "";
  admitted = false;
  callPage.leave();
  board.hide();
  $("forget-key").hidden = true;
  $("key-panel").hidden = false;
  setFeedStatus("down", "Not connected: an API key is needed");
  $("key-input").focus();
}

function stop() {
  starting += 1;
  board.stop();
}

// A session: the key is tried on GET /v1/system, then the board follows the feed (from its
// start: a new session reads the calls afresh).
async function start() {
  stop();
  const mine = starting;
  setFeedStatus("connecting", "Connecting…");
  let system;
  try {
    system = await api("/v1/system");
  } catch (error) {
    if (mine !== starting) return;
    if (isAuthError(error)) return askForKey(error);
    setFeedStatus("down", `The API did not answer (${error.message}); retrying in 5 s…`);
    setTimeout(() => mine === starting && start(), START_RETRY_MS);
    return;
  }
  if (mine !== starting) return;
  $("key-panel").hidden = true;
  admitted = true;
  showRoute(); // the list, or the call the address names
  $("forget-key").hidden = !storedKey();
  board.start(system, askForKey);
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault(); // the key goes to sessionStorage, never into a URL or a form post
  const key = $("key-input").value.trim();
  if (!key) {
    $("key-error").textContent = "Enter a key.";
    return;
  }
  keepKey(key);
  $("key-input").value = "";
  $("key-error").textContent = "";
  start();
});
$("forget-key").addEventListener("click", () => {
  forgetKey();
  board.forget();
  askForKey(new ApiError(401, "unauthenticated", "no API key"));
});
window.addEventListener("hashchange", showRoute); // a row's link, the back link, Back/Forward
// Ages and durations move on with the clock.
setInterval(() => {
  board.scheduleRender();
  callPage.tick();
}, 1000);
start();
