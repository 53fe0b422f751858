// Relay dashboard: live regions and confirmations. No framework: the server renders every page, and this swaps
// the parts marked data-live with their fresh copy every few seconds, without reloading the page.
(function () {
  "use strict";
  var PERIOD_MS = 5000;

  function refresh() {
    var regions = document.querySelectorAll("[data-live][id]");
    if (!regions.length || document.hidden) return;
    var active = document.activeElement;
    for (var i = 0; i < regions.length; i++) {
      if (active && regions[i].contains(active) && active !== document.body) return; // the operator is typing
    }
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Relay-Live": "1" } })
      .then(function (response) {
        if (response.redirected && response.url.indexOf("/dashboard/login") !== -1) {
          window.location.reload(); // the session ended: show the login page
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html");
        regions.forEach(function (region) {
          var next = fresh.getElementById(region.id);
          if (next) region.innerHTML = next.innerHTML;
        });
        var stamp = document.querySelector("footer");
        var freshStamp = fresh.querySelector("footer");
        if (stamp && freshStamp) stamp.innerHTML = freshStamp.innerHTML;
        document.body.dataset.refreshed = String((Number(document.body.dataset.refreshed) || 0) + 1);
      })
      .catch(function () { /* the next tick tries again */ });
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });

  window.setInterval(refresh, PERIOD_MS);
})();
