"use strict";
// Shared by label.js and grid.js: the JSON API calls (with the session's CSRF token) and the key map.
window.cryobusLabel = (() => {
  const csrf = document.body.dataset.csrf;
  const KEYS = { a: "A", b: "B", c: "C", d: "D", f: "F", 1: "A", 2: "B", 3: "C", 4: "D", 5: "F" };

  async function post(url, body) {
    const r = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body || {}),
    });
    if (r.status === 401) throw new Error("signed out: reload the page to sign in again");
    if (!r.ok) throw new Error("not saved (HTTP " + r.status + ")");
    return r.json();
  }

  function say(text, bad) {
    const el = document.getElementById("status");
    if (!el) return;
    el.textContent = text;
    el.classList.toggle("bad", Boolean(bad));
  }

  function progress(graded, total) {
    const bar = document.getElementById("progress");
    const text = document.getElementById("progress-text");
    if (bar) { bar.max = Math.max(total, 1); bar.value = graded; }
    if (text) text.textContent = graded + " / " + total + " graded";
  }

  // Keys typed into a form field, or with a modifier (browser shortcuts), are not ours.
  function ours(ev) {
    if (ev.altKey || ev.metaKey) return false;
    const t = ev.target;
    return !(t && t.closest && t.closest("input, textarea, select"));
  }

  return { post, say, progress, ours, KEYS };
})();
