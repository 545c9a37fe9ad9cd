// A call page's recording (GET /v1/calls/{id}/audio): an <audio> element cannot send a header,
// and the key never goes into a URL, so the WAV is fetched with the key into a Blob and the
// player plays that Blob's object URL (the page's policy allows blob: media, nothing else).
// While the call goes on the recording grows a segment at a time: each read sends the last
// ETag (unchanged: a 304), and a grown recording keeps the player's place.

import { apiError, callPath, fetchWithKey, isAuthError } from "./api.js";
import { CONTRACT } from "./contract.js";
import { $ } from "./dom.js";
import { formatDuration } from "./format.js";

const player = () => $("call-audio");
const showNote = (text) => ($("audio-note").textContent = text);

// Channels, rate and length from a WAV's RIFF header (its "fmt " and "data" chunks).
async function wavShape(blob) {
  if (blob.size < CONTRACT.wavHeaderBytes) return null;
  const view = new DataView(await blob.slice(0, Math.min(blob.size, 4096)).arrayBuffer());
  const tag = (at) => String.fromCharCode(...new Uint8Array(view.buffer, at, 4));
  if (tag(0) !== "RIFF" || tag(8) !== "WAVE") return null;
  let channels = 0, rate = 0, bytesPerSecond = 0;
  for (let at = 12; at + 8 <= view.byteLength;) {
    const size = view.getUint32(at + 4, true);
    if (tag(at) === "fmt ") {
      channels = view.getUint16(at + 10, true);
      rate = view.getUint32(at + 12, true);
      bytesPerSecond = view.getUint32(at + 16, true);
    } else if (tag(at) === "data") {
      const data = Math.min(size, blob.size - at - 8);
      return bytesPerSecond ? { channels, rate, seconds: data / bytesPerSecond } : null;
    }
    at += 8 + size + (size % 2);
  }
  return null;
}

function audioProblem(error) {
  if (error.code === "no_audio") return "No recording: this call's packets are text, not audio.";
  if (error.code === "audio_erased") return "No recording: it was erased (retention).";
  if (error.status === 404) return "No recording of this call.";
  return `The recording could not be read: ${error.message}`;
}

// One call's recording, from its page's opening to close(). `live()` says whether the call
// goes on; `changed()` is told when the recording's length changed (the timeline follows it).
export class Recording {
  // startAt(): where the first play starts (a search result's utterance), or null.
  constructor(id, { live, changed, refused, startAt }) {
    Object.assign(this, { id, live, changed, refused, startAt });
    this.url = null; // the Blob's object URL the player plays
    this.etag = null;
    this.loading = false;
    this.again = false;
    this.shape = undefined; // { channels, rate, seconds }; null: none; undefined: not read
    this.closed = false;
    player().hidden = true;
    showNote("");
  }

  get seconds() {
    return this.shape?.seconds ?? 0;
  }

  async read() {
    if (this.loading) {
      this.again = true; // read once more when this read is done: it may predate the event
      return;
    }
    this.loading = true;
    try {
      await this.fetch();
    } catch (error) {
      if (this.closed) return;
      if (isAuthError(error)) return this.refused(error);
      this.shape = undefined; // the note says what went wrong until a read succeeds
      if (error.status === 404 || error.status === 409) player().hidden = true;
      showNote(audioProblem(error));
    } finally {
      this.loading = false;
    }
    if (!this.closed && this.again) {
      this.again = false;
      this.read();
    }
  }

  async fetch() {
    const headers = { Accept: "audio/wav" };
    if (this.etag) headers["If-None-Match"] = this.etag; // unchanged: a 304, nothing to fetch
    const response = await fetchWithKey(callPath(this.id, "/audio"), { headers, cache: "no-store" });
    if (response.status === 304 || this.closed) return;
    if (!response.ok) throw await apiError(response);
    const wav = await response.blob();
    if (this.closed) return;
    this.etag = response.headers.get("ETag");
    this.shape = await wavShape(wav);
    if (this.shape?.seconds > 0) this.play(wav);
    else player().hidden = true;
    this.describe();
  }

  // What the player holds, said again when the call's state changes (live: it grows).
  describe() {
    const shape = this.shape;
    if (shape === undefined || this.closed) return; // not read yet, or the read failed
    this.changed();
    const live = this.live();
    if (!(shape?.seconds > 0)) {
      return showNote(live
        ? "Nothing recorded yet: the recording grows a segment at a time while the call goes on."
        : "The recording is empty.");
    }
    const channels = shape.channels === 2 ? "stereo: left the caller, right the agent" : "mono";
    showNote(`${formatDuration(shape.seconds)} at ${shape.rate / 1000} kHz, ${channels}` +
      (live ? "; it grows while the call goes on." : "."));
  }

  // Swaps the player's source, keeping its place (and playing on) when the recording grew.
  play(wav) {
    const audio = player();
    const at = audio.currentTime;
    const playing = !audio.paused && !audio.ended;
    const old = this.url;
    this.url = URL.createObjectURL(wav);
    audio.src = this.url;
    audio.hidden = false;
    const from = old ? null : this.startAt?.();
    if (from !== null && from !== undefined) this.playFrom(from); // opened from a search result
    if (old) {
      audio.addEventListener("loadedmetadata", () => {
        audio.currentTime = Math.min(at, audio.duration || at);
        if (playing) audio.play().catch(() => {});
      }, { once: true });
      URL.revokeObjectURL(old);
    }
  }

  // The player jumps to `s` and plays; before the recording's first read has landed it says so.
  playFrom(s) {
    const audio = player();
    if (!this.url) {
      showNote("The recording is not loaded yet: try again in a moment.");
      return;
    }
    if (audio.readyState >= HTMLMediaElement.HAVE_METADATA) audio.currentTime = s;
    else audio.addEventListener("loadedmetadata", () => (audio.currentTime = s), { once: true });
    audio.play().catch(() => {}); // no audio device, say: the position is still where asked
  }

  close() {
    this.closed = true;
    const audio = player();
    audio.pause();
    audio.removeAttribute("src");
    audio.load();
    if (this.url) URL.revokeObjectURL(this.url);
    this.url = null;
  }
}
