// Custody's only script: keeps countdowns current, the inbox refresh out of the way, tables
// readable on a phone, the nav's menu and pending badge working, and a refused htmx action in
// its row. No inline scripts anywhere (CSP).
(function () {
  // Styles that only make sense with this script (the collapsed nav) hang off html.js.
  document.documentElement.classList.add("js");

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

  // On a narrow screen a table row becomes a card; each cell shows its column's header as its
  // label (data-label, unless the template gave one).
  function labelCells(root) {
    var scope = root && root.querySelectorAll ? root : document;
    var rows = Array.prototype.slice.call(scope.querySelectorAll("tr"));
    if (scope.matches && scope.matches("tr")) { rows.push(scope); }
    rows.forEach(function (row) {
      var table = row.closest("table");
      if (!table) { return; }
      var headers = table.querySelectorAll(":scope > thead > tr > th");
      var column = 0;
      Array.prototype.forEach.call(row.children, function (cell) {
        var header = headers[column];
        column += cell.colSpan || 1;
        if (cell.tagName !== "TD" || cell.hasAttribute("data-label") || cell.colSpan > 1) { return; }
        var label = header ? header.textContent.trim() : "";
        if (label) { cell.setAttribute("data-label", label); }
      });
    });
  }

  // The nav's menu button (shown on narrow screens only, by the stylesheet).
  function setUpMenu() {
    var toggle = document.querySelector(".nav-toggle");
    if (!toggle) { return; }
    var header = toggle.closest(".top");
    function show(open) {
      header.classList.toggle("nav-open", open);
      toggle.setAttribute("aria-expanded", open ? "true" : "false");
    }
    toggle.addEventListener("click", function () {
      show(toggle.getAttribute("aria-expanded") !== "true");
    });
    document.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && toggle.getAttribute("aria-expanded") === "true") {
        show(false);
        toggle.focus();
      }
    });
  }

  // The nav's pending badge asks again after anything that can change the count: an htmx
  // action (a decision, a bulk denial) or the inbox's own refresh. An element that replaced
  // itself (outerHTML) is no longer in the page, so new content is watched too (htmx:load).
  var pendingAsked = false;
  function pendingMayHaveChanged() {
    if (pendingAsked) { return; }
    pendingAsked = true;
    setTimeout(function () {
      pendingAsked = false;
      document.body.dispatchEvent(new CustomEvent("custody:pending"));
    }, 0);
  }
  document.addEventListener("htmx:afterRequest", function (event) {
    var elt = event.detail.elt;
    if (!elt || elt.hasAttribute("data-pending-badge")) { return; }
    var verb = (event.detail.requestConfig && event.detail.requestConfig.verb) || "get";
    if (verb !== "get" || elt.id === "inbox") { pendingMayHaveChanged(); }
  });
  document.addEventListener("htmx:load", function (event) {
    var elt = event.detail.elt;
    if (!elt || elt === document.body || !elt.matches) { return; }
    if (elt.id === "inbox" || elt.matches("tr[id^='request-']")) { pendingMayHaveChanged(); }
  });

  // A refusal rendered for its row (400, 403, 404 or 409 with a fragment, not a whole page) is
  // swapped in place by htmx (see htmx-config in base.html). In DEBUG, django-htmx's debug
  // script would replace the whole page with it; this listener runs first and keeps the event
  // from reaching it. Whole pages (Django's debug pages) still go to the debug script.
  var IN_PLACE = [400, 403, 404, 409];
  window.addEventListener("htmx:beforeOnLoad", function (event) {
    var xhr = event.detail.xhr;
    if (!xhr || IN_PLACE.indexOf(xhr.status) === -1) { return; }
    if (/^\s*(<!doctype|<html)/i.test(xhr.responseText || "")) { return; }
    event.stopPropagation();
  }, true);

  // What htmx does not swap (a 5xx, a 429, no answer at all) is said in the message area.
  function say(text) {
    var area = document.getElementById("messages");
    if (!area) { return; }
    area.innerHTML = "";
    var line = document.createElement("p");
    line.className = "message error";
    line.setAttribute("role", "alert");
    line.textContent = text;
    area.appendChild(line);
  }
  document.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail.xhr;
    if (event.detail.elt && event.detail.elt.hasAttribute("data-pending-badge")) { return; }
    if (xhr.status === 429) {
      say("Too many requests at once; nothing was changed. Wait a moment and try again.");
    } else {
      say("Custody could not do that (error " + xhr.status + "); nothing was changed. Reload the page and try again.");
    }
  });
  document.addEventListener("htmx:sendError", function (event) {
    if (event.detail.elt && event.detail.elt.hasAttribute("data-pending-badge")) { return; }
    say("Custody could not be reached; nothing was changed. Check the connection and try again.");
  });

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
  document.addEventListener("DOMContentLoaded", function () {
    tick();
    labelCells(document);
    setUpMenu();
  });
  document.addEventListener("htmx:afterSwap", tick);
  document.addEventListener("htmx:load", function (event) { labelCells(event.detail.elt); });
  setInterval(tick, 1000);
})();
