// The page's addresses: the list at #/ (or no hash), one call's page at #/calls/<id> (in this
// same page: no route of its own on the server).

import { CONTRACT } from "./contract.js";

const CALL_ROUTE = /^#\/calls\/([^/?#]+)$/;
export const CALL_ID = new RegExp(CONTRACT.callIdPattern); // the API's own rule for a call id

export const callHref = (id) => `#/calls/${encodeURIComponent(id)}`;

// Which page an address's hash names: a call's id, or null for the list.
export function routedCall(hash) {
  const match = hash.match(CALL_ROUTE);
  if (!match) return null;
  try {
    const id = decodeURIComponent(match[1]);
    return CALL_ID.test(id) ? id : null;
  } catch {
    return null; // not percent-encoding: the list
  }
}
