// The transcript as captions (GET .../transcript?format=vtt|srt), fetched with the key into a
// Blob and saved under the call's name: the key never goes into a URL.

import { apiError, callPath, fetchWithKey, isAuthError } from "./api.js";
import { $ } from "./dom.js";

export async function downloadCaptions(id, format, refused) {
  try {
    const response = await fetchWithKey(callPath(id, `/transcript?format=${format}`));
    if (!response.ok) throw await apiError(response);
    const url = URL.createObjectURL(await response.blob());
    const link = Object.assign(document.createElement("a"), { href: url, download: `${id}.${format}` });
    link.click();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  } catch (error) {
    if (isAuthError(error)) refused(error);
    else $("call-error").textContent = error.message;
  }
}
