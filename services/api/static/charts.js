/* Draws each <canvas data-chart="ID"> from the JSON in <script type="application/json"
 * id="ID"> (shaped by services/api/console/charts.py): labels, and series whose style is
 * bar, line, forecast (dashed), or low and high (a shaded 95 % interval between them).
 */
(function () {
  "use strict";

  var PALETTE = ["#4263eb", "#12b886", "#ae3ec9", "#1c7ed6", "#f59f00"];
  var FORECAST = "#e67700";
  var money = new Intl.NumberFormat(undefined, { style: "currency", currency: "USD" });
  var day = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", timeZone: "UTC" });

  // An amount as the tables beside the chart show it (render.usd): one under half a cent
  // is "<$0.01", never $0.00.
  function amount(value) {
    return value > 0 && value < 0.005 ? "<" + money.format(0.01) : money.format(value);
  }

  function dataset(series, index) {
    var color = PALETTE[index % PALETTE.length];
    var common = { label: series.label, data: series.values, style: series.style };
    switch (series.style) {
      case "bar":
        return Object.assign(common, {
          type: "bar", backgroundColor: color, borderRadius: 3, maxBarThickness: 28, order: 2,
        });
      case "forecast":
        return Object.assign(common, {
          type: "line", borderColor: FORECAST, backgroundColor: FORECAST, borderDash: [6, 4],
          borderWidth: 2, pointRadius: 0, tension: 0.2, order: 1,
        });
      case "low":
        return Object.assign(common, {
          type: "line", borderWidth: 0, pointRadius: 0, fill: false, order: 1,
        });
      case "high":
        // Fills down to the dataset before it: the series come as low, then high.
        return Object.assign(common, {
          type: "line", label: "95% interval", borderWidth: 0, pointRadius: 0, fill: "-1",
          backgroundColor: "rgba(230, 119, 0, 0.13)", order: 1,
        });
      default:
        return Object.assign(common, {
          type: "line", borderColor: color, backgroundColor: color, borderWidth: 2,
          pointRadius: 2, tension: 0.2, order: 1,
        });
    }
  }

  function tickLabel(value) {
    var label = this.getLabelForValue(value);
    if (/^\d{4}-\d{2}-\d{2}$/.test(label)) {
      return day.format(new Date(label + "T00:00:00Z"));
    }
    return label.length > 24 ? label.slice(0, 23) + "\u2026" : label;
  }

  function draw(canvas) {
    var source = document.getElementById(canvas.dataset.chart);
    if (!source || !window.Chart) {
      return;
    }
    var data = JSON.parse(source.textContent);
    new window.Chart(canvas, {
      type: data.kind,
      data: { labels: data.labels, datasets: data.series.map(dataset) },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { grid: { display: false }, ticks: { maxRotation: 0, autoSkipPadding: 12, callback: tickLabel } },
          y: { beginAtZero: true, ticks: { callback: function (v) { return money.format(v); } } },
        },
        plugins: {
          legend: {
            position: "bottom",
            labels: { boxWidth: 12, filter: function (item, chart) { return chart.datasets[item.datasetIndex].style !== "low"; } },
          },
          tooltip: {
            filter: function (item) { return item.raw !== null && item.dataset.style !== "low" && item.dataset.style !== "high"; },
            callbacks: { label: function (item) { return item.dataset.label + ": " + amount(item.raw); } },
          },
        },
      },
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    window.Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
    window.Chart.defaults.color = "#667085";
    document.querySelectorAll("canvas[data-chart]").forEach(draw);
  });
})();
