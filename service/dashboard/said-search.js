// Enter in the search box also searches what was said (GET /v1/calls?q=): each call found, with
// its best match, the matching words marked (from the answer's offsets, as text nodes, never
// markup), linked to the call's page, which then plays the recording from that utterance.

import { api, isAuthError } from "./api.js";
import { $, span } from "./dom.js";
import { clockText } from "./format.js";
import { callHref } from "./routes.js";

const SEARCH_LIMIT = 20;
let seekOnOpen = null; // { id, s }: where a search result asked the call's recording to start

// Where the recording of call `id` should start, once, if a search result opened its page.
export function takeSeek(id) {
  if (seekOnOpen?.id !== id) return null;
  const { s } = seekOnOpen;
  seekOnOpen = null;
  return s;
}

export const clearSaid = () => $("search-results").replaceChildren();

// The calls where `term` was said; `refused(error)`: the key was refused.
export async function searchSaid(term, refused) {
  clearSaid();
  if (!term) return 0;
  let page;
  try {
    page = await api(`/v1/calls?q=${encodeURIComponent(term)}&limit=${SEARCH_LIMIT}`);
  } catch (error) {
    if (isAuthError(error)) refused(error);
    else $("search-note").textContent = error.message;
    return 0;
  }
  const found = page.items.filter((call) => call.matches.length);
  for (const call of found) $("search-results").append(result(call, call.matches[0]));
  return found.length;
}

function result(call, match) {
  const link = document.createElement("a");
  link.href = callHref(call.call_id);
  link.addEventListener("click", () => (seekOnOpen = { id: call.call_id, s: match.start_s }));
  link.append(span("who", call.call_id),
    span("when", ` ${match.speaker} at ${clockText(match.start_s)}: `),
    marked(match.text, match.offsets));
  const item = document.createElement("li");
  item.append(link);
  return item;
}

// Offsets count Unicode code points (the API's), not UTF-16 units: cut the text as code points.
function marked(text, offsets) {
  const chars = Array.from(text);
  const said = span("said");
  let at = 0;
  for (const [start, end] of offsets) {
    said.append(chars.slice(at, start).join(""));
    const mark = document.createElement("mark");
    mark.textContent = chars.slice(start, end).join("");
    said.append(mark);
    at = end;
  }
  said.append(chars.slice(at).join(""));
  return said;
}
