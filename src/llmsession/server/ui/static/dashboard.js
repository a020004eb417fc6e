// Draws the dashboard's plots with uPlot from the JSON islands the pages carry
// (<script type="application/json">): the server renders every figure, this file
// only turns series into charts. Each drawn chart is kept in window.llmsessionCharts
// by its element id, so what was plotted can be read back (the browser tests do).
"use strict";

(function () {
  const charts = {};
  window.llmsessionCharts = charts;

  const palette = ["#2b5d8a", "#d9822b", "#3a9a5b", "#b03a48", "#7b5ea7", "#5f8f9e", "#a88f2a", "#555555"];

  function readSource(id) {
    const island = document.getElementById(id);
    return island ? JSON.parse(island.textContent) : null;
  }

  function width(el) {
    return Math.max(320, Math.min(el.clientWidth || 900, 1100));
  }

  // Rounds are whole numbers: no ticks between them.
  const roundTicks = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000];

  function plain(value) {
    return value == null ? "–" : Math.round(value).toLocaleString("en");
  }

  function draw(el, title, data, series, axes, opts) {
    const options = Object.assign(
      {
        title: title,
        width: width(el),
        height: 260,
        series: [{}].concat(series),
        axes: axes,
        legend: { live: true },
      },
      opts || {},
    );
    const plot = new uPlot(options, data, el);
    charts[el.id] = { title: title, labels: series.map((s) => s.label), data: data, plot: plot };
  }

  const drawers = {
    // One session: delta tokens per round (bars) and tokens saved after each round.
    rounds(el, source) {
      const bars = uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.6, 40] }) : undefined;
      draw(
        el,
        "Delta tokens per round, and tokens saved so far",
        [source.seq, source.delta_tokens, source.tokens_saved],
        [
          { label: "delta tokens", stroke: palette[0], fill: palette[0] + "99", paths: bars, value: (u, v) => plain(v) },
          { label: "tokens saved (cumulative)", stroke: palette[1], width: 2, scale: "saved", value: (u, v) => plain(v) },
        ],
        [
          { label: "round", incrs: roundTicks },
          { label: "delta tokens", values: (u, vals) => vals.map(plain) },
          { side: 1, scale: "saved", label: "tokens saved", grid: { show: false }, values: (u, vals) => vals.map(plain) },
        ],
        // Half a round of room at each end, so the first and last bars show whole.
        { scales: { x: { time: false, range: (u, min, max) => [min - 0.5, max + 0.5] } } },
      );
    },
    // One gateway session: the provider's input, cached input and output per round.
    usage(el, source) {
      draw(
        el,
        "Provider usage per round",
        [source.seq, source.input_tokens, source.cached_input_tokens, source.output_tokens],
        [
          { label: "input", stroke: palette[0], width: 2, value: (u, v) => plain(v) },
          { label: "cached input", stroke: palette[2], width: 2, value: (u, v) => plain(v) },
          { label: "output", stroke: palette[1], width: 2, value: (u, v) => plain(v) },
        ],
        [{ label: "round", incrs: roundTicks }, { label: "tokens", values: (u, vals) => vals.map(plain) }],
        { scales: { x: { time: false } } },
      );
    },
    // The overview: one line per provider/model group, per hour or day.
    "saved-over-time"(el, source) {
      drawGroups(el, source, "Tokens saved per " + source.bucket, source.tokens_saved, "tokens saved");
    },
    "rounds-over-time"(el, source) {
      drawGroups(el, source, "Rounds per " + source.bucket, source.rounds, "rounds");
    },
    "cache-share"(el, source) {
      const percent = (u, v) => (v == null ? "–" : v.toFixed(1) + " %");
      draw(
        el,
        "Share of input served from the provider's cache, per " + source.bucket,
        [source.x, source.cache_share],
        [{ label: "cached share of input", stroke: palette[2], width: 2, spanGaps: false, value: percent }],
        [{}, { label: "%", values: (u, vals) => vals.map((v) => v + " %") }],
        Object.assign({ scales: { y: { range: [0, 100] } } }, utc),
      );
    },
  };
  window.llmsessionDrawers = drawers;

  // Buckets are UTC hours and days: label the time axis in UTC, whatever the browser's zone.
  const utc = { tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC") };

  function groupLabel(group) {
    const parts = [group.provider_id, group.model].filter((part) => part != null);
    return parts.length ? parts.join(" / ") : "all";
  }

  function drawGroups(el, source, title, values, what) {
    const series = source.groups.map((group, i) => ({
      label: groupLabel(group),
      stroke: palette[i % palette.length],
      width: 2,
      value: (u, v) => plain(v),
    }));
    draw(
      el,
      title,
      [source.x].concat(values),
      series,
      [{}, { label: what, values: (u, vals) => vals.map(plain) }],
      utc,
    );
  }

  function drawAll() {
    document.querySelectorAll("[data-chart]").forEach((el) => {
      const drawer = drawers[el.dataset.chart];
      const source = readSource(el.dataset.source);
      if (drawer && source) {
        drawer(el, source);
      }
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", drawAll);
  } else {
    drawAll();
  }
})();
