// Custody's only script: keeps countdowns current and the inbox refresh out of the way. No inline
// scripts anywhere (CSP).
(function () {
  function tick() {
    var now = Date.now();
    document.querySelectorAll(".countdown[data-until]").forEach(function (el) {
      var left = Math.max(0, Math.floor((Date.parse(el.dataset.until) - now) / 1000));
      var minutes = Math.floor(left / 60), seconds = left % 60;
      el.textContent = left === 0 ? "ended" : minutes + "m " + (seconds < 10 ? "0" : "") + seconds + "s";
      if (left === 0) { el.classList.add("ended"); }
    });
  }
  // The inbox refreshes itself, but never under someone's hands: a refresh while focus is in
  // the list or a comment is half-written would throw away their place and their words.
  document.addEventListener("htmx:beforeRequest", function (event) {
    var list = event.detail.elt;
    if (!list || list.id !== "inbox") { return; }
    // Ticked boxes for a bulk deny are someone's place too.
    var busy = list.contains(document.activeElement) ||
      list.querySelector("input[type=checkbox]:checked") !== null ||
      Array.prototype.some.call(list.querySelectorAll("textarea"), function (area) {
        return area.value.trim() !== "";
      });
    if (busy) { event.preventDefault(); }
  });
  document.addEventListener("DOMContentLoaded", tick);
  document.addEventListener("htmx:afterSwap", tick);
  setInterval(tick, 1000);
})();
