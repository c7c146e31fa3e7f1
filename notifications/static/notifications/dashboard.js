/* The admin's dashboard: draws the data of notifications/dashboard.py and fetches it again every few seconds.
 *
 * Ids and reasons came from clients or servers: they are put into the page as text
 * (textContent), never as HTML.
 */
(function () {
  "use strict";

  var root = document.getElementById("notify-dashboard");
  if (!root) return;
  var url = root.dataset.url;
  var refreshMs = Number(root.dataset.refreshSeconds || 5) * 1000;
  var chart = null;

  function text(id, value) {
    document.getElementById(id).textContent = String(value);
  }

  function cell(row, value, number) {
    var td = document.createElement("td");
    td.textContent = String(value);
    if (number) td.className = "number";
    row.appendChild(td);
  }

  function fill(tableId, items, columns, emptyText) {
    var body = document.querySelector("#" + tableId + " tbody");
    body.replaceChildren();
    if (!items.length) {
      var row = document.createElement("tr");
      var td = document.createElement("td");
      td.colSpan = columns.length;
      td.className = "empty";
      td.textContent = emptyText;
      row.appendChild(td);
      body.appendChild(row);
      return;
    }
    items.forEach(function (item) {
      var row = document.createElement("tr");
      columns.forEach(function (column) {
        cell(row, column.value(item), column.number);
      });
      body.appendChild(row);
    });
  }

  function clock(iso) {
    return new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function drawChart(series) {
    var labels = series.minutes.map(clock);
    var datasets = [
      { label: "connections", data: series.connections, yAxisID: "connections", borderColor: "#417690", backgroundColor: "#417690", tension: 0.2, pointRadius: 0 },
      { label: "delivered live", data: series.live, yAxisID: "notifications", borderColor: "#2e8540", backgroundColor: "#2e8540", tension: 0.2, pointRadius: 0 },
      { label: "pending", data: series.pending, yAxisID: "notifications", borderColor: "#e6a700", backgroundColor: "#e6a700", tension: 0.2, pointRadius: 0 },
      { label: "undeliverable", data: series.undeliverable, yAxisID: "notifications", borderColor: "#ba2121", backgroundColor: "#ba2121", tension: 0.2, pointRadius: 0 },
    ];
    if (typeof window.Chart !== "function") {
      text("dashboard-status", "(the chart library did not load)");
      return;
    }
    if (chart === null) {
      chart = new window.Chart(document.getElementById("activity-chart"), {
        type: "line",
        data: { labels: labels, datasets: datasets },
        options: {
          animation: false,
          maintainAspectRatio: false,
          interaction: { mode: "index", intersect: false },
          scales: {
            connections: { type: "linear", position: "left", beginAtZero: true, title: { display: true, text: "connections" } },
            notifications: { type: "linear", position: "right", beginAtZero: true, grid: { drawOnChartArea: false }, title: { display: true, text: "notifications per minute" } },
          },
        },
      });
      return;
    }
    chart.data.labels = labels;
    chart.data.datasets.forEach(function (dataset, i) {
      dataset.data = datasets[i].data;
    });
    chart.update();
  }

  function render(data) {
    text("total-connections", data.total.connections);
    text("total-ids", data.total.registered_ids);
    text("total-processes", data.total.processes);
    text("minute-relayed", data.last_minute.relayed);
    text("minute-live", data.last_minute.live);
    text("minute-undeliverable", data.last_minute.undeliverable);
    fill("processes", data.processes, [
      { value: function (p) { return p.process; } },
      { value: function (p) { return p.connections; }, number: true },
      { value: function (p) { return p.registered_ids; }, number: true },
      { value: function (p) { return p.relayed; }, number: true },
      { value: function (p) { return p.live; }, number: true },
      { value: function (p) { return p.pending; }, number: true },
      { value: function (p) { return p.undeliverable; }, number: true },
      { value: function (p) { return p.heartbeat_age.toFixed(0) + " s ago"; }, number: true },
    ], "No live server process.");
    fill("most-pending", data.most_pending, [
      { value: function (p) { return p.id || "(id not known)"; } },
      { value: function (p) { return p.count; }, number: true },
    ], data.most_pending_error ? "Unknown: " + data.most_pending_error : "Nothing is pending.");
    fill("recent-undeliverable", data.recent_undeliverable, [
      { value: function (e) { return new Date(e.at).toLocaleString(); } },
      { value: function (e) { return data.reasons[e.reason] || e.reason; } },
      { value: function (e) { return e.whose; } },
      { value: function (e) { return e.process; } },
    ], "None.");
    drawChart(data.chart);
    root.dataset.updatedAt = data.now;
  }

  function refresh() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (data) {
        text("dashboard-status", "");
        render(data);
      })
      .catch(function (error) {
        text("dashboard-status", "(could not update: " + error.message + ")");
      })
      .finally(function () {
        window.setTimeout(refresh, refreshMs);
      });
  }

  render(JSON.parse(document.getElementById("dashboard-data").textContent));
  window.setTimeout(refresh, refreshMs);
})();
