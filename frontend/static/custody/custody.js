// Custody's only script: keeps countdowns current and the inbox refresh out of the way. No inline
// scripts anywhere (CSP).
(function () {
  // A duration in words, as core/formatting.py's duration_words writes it: the two largest
  // units, "1 h 30 min", "4 min 5 s", "2 days".
  var UNITS = [[86400, "day", "days"], [3600, "h", "h"], [60, "min", "min"], [1, "s", "s"]];
  function durationWords(seconds) {
    var left = Math.max(0, Math.floor(seconds)), parts = [];
    if (left === 0) { return "0 s"; }
    for (var i = 0; i < UNITS.length && parts.length < 2; i++) {
      var count = Math.floor(left / UNITS[i][0]);
      left = left % UNITS[i][0];
      if (count) { parts.push(count + " " + (count === 1 ? UNITS[i][1] : UNITS[i][2])); }
      else if (parts.length) { break; }
    }
    return parts.join(" ");
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll(".countdown[data-until]").forEach(function (el) {
      var left = Math.max(0, Math.floor((Date.parse(el.dataset.until) - now) / 1000));
      el.textContent = left === 0 ? "ended" : durationWords(left);
      if (left === 0) {
        el.classList.add("ended");
        // An ended grant cannot be revoked: its button goes now, its row at the next poll.
        var row = el.closest("tr");
        var revoke = row && row.querySelector("a.button.danger");
        if (revoke) { revoke.remove(); }
      }
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
