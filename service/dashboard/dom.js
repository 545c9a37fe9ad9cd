// Small helpers for building the pages. Everything the server says goes into the page as text
// (textContent, title, dataset, attributes), never as HTML, so a call id or a transcript can
// never become markup or script.

import { CONTRACT } from "./contract.js";

const BADGES = new Set([...CONTRACT.states, "positive", "neutral", "negative"]);
const SVG_NS = "http://www.w3.org/2000/svg";

export const $ = (id) => document.getElementById(id);

// The class of a badge showing a state or a sentiment label (a known one gets its colour).
export const badgeClass = (value) => (BADGES.has(value) ? `badge ${value}` : "badge");

// Writing only what changed keeps a once-a-second redraw of hundreds of rows cheap.
export function setIfChanged(element, property, value) {
  if (element[property] !== value) element[property] = value;
}

export function span(className, ...content) {
  const element = document.createElement("span");
  element.className = className;
  element.append(...content);
  return element;
}

// A row of text cells; a cell with `badge` shows its text as a badge.
export function tableRow(data, cells) {
  const tr = document.createElement("tr");
  Object.assign(tr.dataset, data);
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell.key) td.dataset.key = cell.key;
    td.className = [cell.num ? "num" : "", cell.cls ?? ""].join(" ").trim();
    if (cell.badge) td.append(span(badgeClass(cell.badge), String(cell.text)));
    else td.textContent = String(cell.text);
    if (cell.title) td.title = cell.title;
    tr.append(td);
  }
  return tr;
}

export function svgElement(name, attributes) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  return element;
}

// A status line (the board's feed, a call page's feed): its dot's state and its words.
export function setStatus(line, words, state, text) {
  $(line).dataset.state = state;
  $(words).textContent = text;
}
