// The API client: the supervisor's key, requests that carry it, and the API's errors.
//
// The key is kept in sessionStorage: it lives as long as the tab, is not shared with other tabs
// and is not written to disk by us. It travels in a header, never in a URL (URLs end up in logs
// and browser history). Errors are the API's problem details (core/errors.py): each becomes an
// ApiError with the answer's status, its `code` and its `detail`.

const KEY_STORAGE = "callstream.apiKey";

export const storedKey = () => sessionStorage.getItem(KEY_STORAGE);
export const keepKey = (key) => sessionStorage.setItem(KEY_STORAGE, key);
export const forgetKey = () => sessionStorage.removeItem(KEY_STORAGE);

export class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail);
    Object.assign(this, { status, code, detail });
  }
}

// 401 (no key, a wrong one) or 403 (a key whose role may not): the page asks for another key.
export const isAuthError = (error) => error instanceof ApiError && [401, 403].includes(error.status);

export function authHeaders() {
  const key = storedKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// The ApiError of an answer that is not 2xx.
export async function apiError(response) {
  let code = `http_${response.status}`;
  let detail = response.statusText || `HTTP ${response.status}`;
  try {
    const body = await response.json();
    code = body.code ?? code;
    detail = body.detail ?? detail;
  } catch {
    // Not problem details (a proxy's page, say): the status says enough.
  }
  return new ApiError(response.status, code, detail);
}

// A request with the key in its header: the feed's stream and the recording read the Response.
export function fetchWithKey(path, { headers = {}, ...options } = {}) {
  return fetch(path, { ...options, headers: { ...authHeaders(), ...headers } });
}

// A read (or a POST) of the API: its JSON body, or the ApiError of its problem details.
export async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...options.headers };
  const response = await fetchWithKey(path, { ...options, headers });
  if (!response.ok) throw await apiError(response);
  return response.json();
}

// A call's resources: /v1/calls/{id}, /v1/calls/{id}/history, ...
export const callPath = (id, more = "") => `/v1/calls/${encodeURIComponent(id)}${more}`;
