// Hand-made SVG charts: a line chart with a legend (values as text, for screen readers and
// tests) and a sparkline.
import { h, s } from "./dom.js";

export interface Series {
  label: string;
  /** One value per bucket; null is a gap. */
  values: (number | null)[];
  /** Legend text after the label, e.g. "120 requests". */
  summary: string;
  /** Drawn dashed: a total that other lines add up to. */
  dashed?: boolean;
}

const W = 640;
const H = 180;
const PAD = { l: 48, r: 8, t: 8, b: 22 };

export function lineChart(title: string, times: number[], series: Series[], format: (v: number) => string, testid: string): HTMLElement {
  const all = series.flatMap((x) => x.values.filter((v): v is number => v !== null));
  const max = Math.max(1e-9, ...all);
  const n = Math.max(1, times.length - 1);
  const x = (i: number): number => PAD.l + ((W - PAD.l - PAD.r) * i) / n;
  const y = (v: number): number => H - PAD.b - ((H - PAD.t - PAD.b) * v) / max;
  const grid = [0, 0.5, 1].map((f) =>
    s("g", {}, s("line", { x1: PAD.l, x2: W - PAD.r, y1: y(max * f), y2: y(max * f), class: "grid" }), s("text", { x: PAD.l - 4, y: y(max * f) + 4, class: "tick", "text-anchor": "end" }, format(max * f))),
  );
  const first = times[0];
  const last = times[times.length - 1];
  const axis = [
    first === undefined ? null : s("text", { x: PAD.l, y: H - 6, class: "tick" }, new Date(first).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })),
    last === undefined ? null : s("text", { x: W - PAD.r, y: H - 6, class: "tick", "text-anchor": "end" }, new Date(last).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })),
  ];
  // The first series (a total) is drawn last, on top.
  const lines = series.map((sr, k) => {
    const parts: string[] = [];
    let pen = false;
    sr.values.forEach((v, i) => {
      if (v === null) {
        pen = false;
        return;
      }
      parts.push(`${pen ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`);
      pen = true;
    });
    // A point with no neighbour draws no line: a dot shows it.
    const dots = sr.values.map((v, i) =>
      v !== null && (sr.values[i - 1] ?? null) === null && (sr.values[i + 1] ?? null) === null ? s("circle", { cx: x(i).toFixed(1), cy: y(v).toFixed(1), r: 3, class: `dot c${k % 6}` }) : null,
    );
    return s("g", {}, s("path", { d: parts.join(""), class: `line c${k % 6}${sr.dashed ? " dashed" : ""}` }), dots);
  });
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${title}: ${series.map((sr) => `${sr.label} ${sr.summary}`).join(", ")}` }, grid, axis, lines.reverse());
  return h(
    "figure",
    { class: "chart", "data-testid": testid },
    h("figcaption", {}, title),
    svg,
    h(
      "ul",
      { class: "legend" },
      series.map((sr, k) => h("li", { class: `c${k % 6}` }, h("span", { class: "swatch", "aria-hidden": "true" }), `${sr.label}: `, h("span", { class: "summary" }, sr.summary))),
    ),
  );
}

export function sparkline(values: number[], label: string): SVGElement {
  const max = Math.max(1, ...values);
  const n = Math.max(1, values.length - 1);
  const d = values.map((v, i) => `${i ? "L" : "M"}${((100 * i) / n).toFixed(1)},${(20 - (18 * v) / max).toFixed(1)}`).join("");
  return s("svg", { viewBox: "0 0 100 20", class: "spark", role: "img", "aria-label": label, preserveAspectRatio: "none" }, s("path", { d, class: "line c0" }));
}
