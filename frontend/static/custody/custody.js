// Custody's only script: keeps countdowns current. No inline scripts anywhere (CSP).
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
  document.addEventListener("DOMContentLoaded", tick);
  document.addEventListener("htmx:afterSwap", tick);
  setInterval(tick, 1000);
})();
