// How the pages write numbers, times and durations: pure functions, shared by both pages.

export const count = (n) => (n ?? 0).toLocaleString("en");
export const known = (n) => (n === null || n === undefined ? "–" : count(n));
export const ageOf = (at, now) => (at === null ? null : Math.max(now - at, 0));
export const ageText = (at, now) => (at === null ? "–" : `${formatSeconds(ageOf(at, now))} ago`);
export const timeText = (at) => (at === null ? "" : new Date(at * 1000).toLocaleString());
export const scoreText = (score) => score.toFixed(2);
export const sentimentText = (s) => `${s.label} ${scoreText(s.score)}`;

export function formatSeconds(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "–";
  if (s < 60) return `${Math.floor(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} m ${String(Math.floor(s % 60)).padStart(2, "0")} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} m`;
}

// A call's length: tenths under 10 s, where whole seconds would show a short call as "0 s".
export function formatDuration(s) {
  if (s === null || s === undefined || Number.isNaN(s) || s >= 10) return formatSeconds(s);
  return `${(Math.floor(s * 10) / 10).toFixed(1)} s`;
}

// m:ss of a call's timeline.
export function clockText(s) {
  const whole = Math.max(Math.floor(s), 0);
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, "0")}`;
}
