"use strict";
// A job's classes as a grid: arrows move the selection, A–F / 1–5 grade it (saved at once) and
// move on, Enter opens the class page.
(() => {
  const grid = document.getElementById("grid");
  if (!grid) return;
  const { post, say, progress, ours, KEYS } = window.cryobusLabel;
  const tiles = Array.from(grid.querySelectorAll(".tile"));
  if (!tiles.length) return;
  let at = Math.max(0, tiles.findIndex((t) => !t.classList.contains("graded")));

  function select(n) {
    at = Math.min(Math.max(n, 0), tiles.length - 1);
    tiles[at].focus();
  }

  function columns() {
    const top = tiles[0].offsetTop;
    const n = tiles.findIndex((t) => t.offsetTop !== top);
    return n === -1 ? tiles.length : Math.max(n, 1);
  }

  function show(tile, letter) {
    const badge = tile.querySelector(".badge");
    badge.textContent = letter || "";
    badge.className = "badge grade-" + (letter || "none");
    tile.classList.toggle("graded", Boolean(letter));
  }

  async function grade(tile, g) {
    say("saving " + g + "…");
    try {
      const out = await post("/api/grade", { class_id: Number(tile.dataset.classId), grade: g });
      show(tile, out.grade);
      progress(out.graded, out.total);
      say("saved " + out.grade + " for class " + tile.querySelector(".num").textContent);
    } catch (err) {
      say(err.message, true);
    }
  }

  async function undo() {
    try {
      const out = await post("/api/undo", {});
      if (!out.undone) { say("nothing to undo"); return; }
      const tile = tiles.find((t) => Number(t.dataset.classId) === out.class_id);
      if (tile) { show(tile, out.grade); select(tiles.indexOf(tile)); }
      say("undone");
    } catch (err) {
      say(err.message, true);
    }
  }

  tiles.forEach((t, n) => {
    t.addEventListener("focus", () => { at = n; });
    t.addEventListener("dblclick", () => window.location.assign(t.dataset.url));
  });

  document.addEventListener("keydown", (ev) => {
    if (!ours(ev) || ev.ctrlKey) return;
    const k = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
    if (KEYS[k]) {
      ev.preventDefault();
      const tile = tiles[at];
      grade(tile, KEYS[k]);
      select(at + 1);
    } else if (k === "ArrowRight") { ev.preventDefault(); select(at + 1); }
    else if (k === "ArrowLeft") { ev.preventDefault(); select(at - 1); }
    else if (k === "ArrowDown") { ev.preventDefault(); select(at + columns()); }
    else if (k === "ArrowUp") { ev.preventDefault(); select(at - columns()); }
    else if (k === "Enter") { ev.preventDefault(); window.location.assign(tiles[at].dataset.url); }
    else if (k === "u" || k === "Backspace") { ev.preventDefault(); undo(); }
  });

  select(at);
})();
