"use strict";
// One class at a time: grade by keyboard (A–F, 1–5) or click; every grade is saved (and
// confirmed by the server) before the next class is shown.
(() => {
  const view = document.getElementById("label-view");
  if (!view) return;
  const { post, say, progress, ours, KEYS } = window.cryobusLabel;
  const classId = Number(view.dataset.classId);
  let busy = false;

  function go(url) { if (url) { busy = true; window.location.assign(url); } }

  async function run(label, fn) {
    if (busy) return;
    busy = true;
    say(label);
    try {
      await fn();
    } catch (err) {
      say(err.message, true);
      busy = false;
    }
  }

  const grade = (g) => run("saving " + g + "…", async () => {
    const out = await post("/api/grade", { class_id: classId, grade: g });
    document.getElementById("my-grade").textContent = out.grade;
    document.querySelectorAll("button.grade").forEach((b) => b.classList.toggle("current", b.dataset.grade === out.grade));
    progress(out.graded, out.total);
    say("saved " + out.grade);
    go(out.next_url);
  });

  const skip = () => run("skipping…", async () => {
    const out = await post("/api/skip", { class_id: classId });
    go(out.next_url);
  });

  const undo = () => run("undoing…", async () => {
    const out = await post("/api/undo", {});
    if (!out.undone) { say("nothing to undo"); busy = false; return; }
    go(out.url);
  });

  document.addEventListener("keydown", (ev) => {
    if (!ours(ev)) return;
    const k = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
    if (ev.ctrlKey) {
      if (k === "z") { ev.preventDefault(); undo(); }
      return;
    }
    if (KEYS[k]) { ev.preventDefault(); grade(KEYS[k]); }
    else if (k === "ArrowLeft") { ev.preventDefault(); go(view.dataset.prevUrl); }
    else if (k === "ArrowRight") { ev.preventDefault(); go(view.dataset.nextUrl); }
    else if (k === "s" || k === " ") { ev.preventDefault(); skip(); }
    else if (k === "u" || k === "Backspace") { ev.preventDefault(); undo(); }
    else if (k === "g") { ev.preventDefault(); go(view.dataset.gridUrl); }
  });

  // The grade buttons are forms (they work without JavaScript); with it, they use the API too.
  document.querySelectorAll("button.grade").forEach((b) => b.addEventListener("click", (ev) => {
    ev.preventDefault();
    grade(b.dataset.grade);
  }));
})();
