// Re-reads of single calls at a bounded pace (at most BATCH at a time, a second apart): counters
// at a call's end, final values, calls first seen mid-way. A burst of finishing calls must not
// turn into a burst of requests. A read that fails is tried again later (TRIES in all, the wait
// doubling), and one that an event overtook is asked for again by its reader (soon()).

const BATCH = 4;
const TRIES = 8; // then the call keeps what the feed said of it
const MAX_DUE = 50; // the oldest wish is dropped past this many
const MAX_WAIT_MS = 30000;

export class Rereads {
  // read(id, tries): one read (it calls retry() itself when it failed); drained(): after a batch.
  constructor(read, drained) {
    Object.assign(this, { read, drained });
    this.due = new Map(); // call id -> { at: ms, tries }
    this.timer = null;
    this.running = false;
  }

  soon(id, delayMs = 300) {
    const at = Date.now() + delayMs;
    const known = this.due.get(id);
    if (!known || known.at > at) this.due.set(id, { at, tries: known?.tries ?? 0 });
    if (this.due.size > MAX_DUE) this.due.delete(this.due.keys().next().value);
    this.arm(0);
  }

  retry(id, tries) {
    if (tries + 1 >= TRIES) return;
    this.due.set(id, { at: Date.now() + Math.min(1000 * 2 ** tries, MAX_WAIT_MS), tries: tries + 1 });
    this.arm(0);
  }

  arm(minMs) {
    if (this.running || !this.due.size) return;
    const next = Math.min(...[...this.due.values()].map((entry) => entry.at));
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.drain(), Math.max(next - Date.now(), minMs));
  }

  async drain() {
    this.timer = null;
    this.running = true;
    const now = Date.now();
    const batch = [...this.due].filter(([, entry]) => entry.at <= now).slice(0, BATCH);
    batch.forEach(([id]) => this.due.delete(id));
    await Promise.all(batch.map(([id, entry]) => this.read(id, entry.tries)));
    this.running = false;
    this.drained();
    this.arm(batch.length ? 1000 : 0);
  }
}
