/* Budget Manager console: times in the reader's time zone, and new alerts as they happen.
 *
 * Pages render every time as <time datetime="...Z"> (UTC text until this runs); the zone
 * comes from the picker in the sidebar, kept in localStorage, by default the browser's.
 * Forms with times carry it in a hidden field (data-zone) so the server reads what the
 * reader typed in the same zone. No inline script anywhere: the pages' CSP forbids it.
 */
(function () {
  "use strict";

  var STORE = "budget.timeZone";
  var FEED_RETRY_SECONDS = 15;
  var browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  var freshAlerts = new Set();

  function validZone(name) {
    try {
      new Intl.DateTimeFormat("en", { timeZone: name });
      return true;
    } catch (err) {
      return false;
    }
  }

  function zone() {
    var stored = null;
    try {
      stored = window.localStorage.getItem(STORE);
    } catch (err) {
      // storage blocked: the browser's zone it is
    }
    return stored && validZone(stored) ? stored : browserZone;
  }

  function formatTimes(root) {
    var options = { timeZone: zone(), month: "short", day: "numeric", hour: "numeric", minute: "2-digit" };
    var thisYear = new Intl.DateTimeFormat(undefined, options);
    var otherYear = new Intl.DateTimeFormat(undefined, Object.assign({ year: "numeric" }, options));
    var year = new Intl.DateTimeFormat("en", { timeZone: zone(), year: "numeric" });
    var now = year.format(new Date());
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (!isNaN(when.getTime())) {
        el.textContent = (year.format(when) === now ? thisYear : otherYear).format(when);
        el.title = el.getAttribute("datetime");
      }
    });
    root.querySelectorAll("input[data-zone]").forEach(function (input) {
      input.value = zone();
    });
    root.querySelectorAll("[data-zone-name]").forEach(function (el) {
      el.textContent = zone();
    });
    freshAlerts.forEach(function (id) {
      root.querySelectorAll('[data-alert-id="' + id + '"]').forEach(function (el) {
        el.classList.add("fresh");
      });
    });
  }

  function setUpPicker() {
    var picker = document.getElementById("tz-picker");
    if (!picker) {
      return;
    }
    var zones = typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : [];
    [browserZone, "UTC"].forEach(function (name) {
      if (zones.indexOf(name) < 0) {
        zones.unshift(name);
      }
    });
    picker.replaceChildren.apply(
      picker,
      zones.map(function (name) {
        var option = document.createElement("option");
        option.value = name;
        option.textContent = name === browserZone ? name + " (browser)" : name;
        return option;
      })
    );
    picker.value = zone();
    picker.addEventListener("change", function () {
      try {
        window.localStorage.setItem(STORE, picker.value);
      } catch (err) {
        // not kept across pages, but applied to this one
      }
      formatTimes(document);
    });
  }

  // A field marked data-shown-for="NAME:VALUE VALUE" shows only while the form's select
  // NAME has one of those values (custom period bounds, a report kind's options). Without
  // script every field shows; the server ignores the ones that do not apply.
  function showFieldsFor(root) {
    root.querySelectorAll("[data-shown-for]").forEach(function (el) {
      var rule = el.dataset.shownFor.split(":");
      var select = el.closest("form").querySelector('select[name="' + rule[0] + '"]');
      if (!select) {
        return;
      }
      var apply = function () {
        // a field with an error stays in sight, whatever the choice
        el.hidden = !el.querySelector(".invalid") && rule[1].split(" ").indexOf(select.value) < 0;
      };
      select.addEventListener("change", apply);
      apply();
    });
  }

  function toast(alert) {
    var box = document.getElementById("toasts");
    if (!box) {
      return;
    }
    var item = document.createElement("div");
    item.className = "toast severity-" + alert.severity;
    item.setAttribute("role", "status");
    var close = document.createElement("button");
    close.type = "button";
    close.textContent = "\u00d7";
    close.setAttribute("aria-label", "Dismiss");
    close.addEventListener("click", function () {
      item.remove();
    });
    var title = document.createElement("strong");
    title.textContent = alert.rule_name + (alert.policy_name ? " \u00b7 " + alert.policy_name : "");
    var text = document.createElement("p");
    text.textContent = alert.message;
    item.append(close, title, text);
    box.append(item);
    window.setTimeout(function () {
      item.remove();
    }, 20000);
  }

  // The cookie session authenticates the stream. Panels listing alerts refresh on the
  // "alert-received" event (hx-trigger="... alert-received from:body").
  function listenForAlerts() {
    var url = document.body.dataset.alertStream;
    if (!url || !window.EventSource) {
      return;
    }
    var source = new EventSource(url);
    // Exposed for the page's own tests and for anyone wondering whether alerts are live.
    source.addEventListener("open", function () {
      document.body.dataset.alertStreamState = "open";
      showProblem("feed-problem", null);
    });
    source.addEventListener("error", function () {
      if (source.readyState !== 2) {
        document.body.dataset.alertStreamState = "retrying"; // the browser reconnects
        return;
      }
      // Refused (a 429 or 401): the browser gives up for good. Say so, and try again.
      document.body.dataset.alertStreamState = "closed";
      showProblem(
        "feed-problem",
        "New alerts do not arrive on this page: the server refused its alert feed (this key" +
          " has as many console tabs open as it may, or the session ended). Closing another" +
          " tab helps; trying again every " + FEED_RETRY_SECONDS + " seconds."
      );
      window.setTimeout(listenForAlerts, FEED_RETRY_SECONDS * 1000);
    });
    source.addEventListener("alert", function (event) {
      var alert;
      try {
        alert = JSON.parse(event.data);
      } catch (err) {
        return;
      }
      freshAlerts.add(alert.alert_id);
      toast(alert);
      document.body.dispatchEvent(new CustomEvent("alert-received", { detail: alert }));
    });
  }

  // A problem that leaves the page out of date, said above it until it is over (null).
  function showProblem(id, text) {
    var box = document.getElementById(id);
    if (box) {
      box.textContent = text || "";
      box.hidden = !text;
    }
  }

  // A panel that refreshes itself (htmx) and gets an error keeps its old content: say so,
  // with the server's reason (its error page's text), until a refresh succeeds again.
  // Without this a stalled dashboard looked live.
  function refreshFailed(detail) {
    showProblem("refresh-problem", "Not refreshed: " + detail + " What is shown may be out of date; retrying.");
  }

  function reasonOf(xhr) {
    var page = new DOMParser().parseFromString(xhr.responseText || "", "text/html");
    var said = page.querySelector(".notice-card p");
    var text = said ? said.textContent.trim() : "";
    return text || "the console answered " + xhr.status + " " + (xhr.statusText || "") + ".";
  }

  document.addEventListener("htmx:responseError", function (event) {
    refreshFailed(reasonOf(event.detail.xhr));
  });
  document.addEventListener("htmx:sendError", function () {
    refreshFailed("the console cannot be reached (is it running, is the network up?).");
  });
  document.addEventListener("htmx:afterRequest", function (event) {
    if (event.detail.successful) {
      showProblem("refresh-problem", null);
    }
  });

  document.addEventListener("DOMContentLoaded", function () {
    setUpPicker();
    showFieldsFor(document);
    formatTimes(document);
    listenForAlerts();
  });
  document.addEventListener("htmx:afterSettle", function () {
    formatTimes(document);
  });
})();
