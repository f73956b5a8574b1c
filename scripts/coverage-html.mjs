// Turns c8's coverage-summary.json into one self-contained coverage.html (per-file table,
// worst first), so `make test-coverage` leaves a single file to open or archive.
import { readFileSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";

const [dir = "coverage", out = "coverage.html"] = process.argv.slice(2);
const summary = JSON.parse(readFileSync(join(dir, "coverage-summary.json"), "utf8"));
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
const pct = (m) => (m.total === 0 ? 100 : m.pct);
const cell = (m) => {
  const p = pct(m);
  const color = p >= 80 ? "#cfc" : p >= 50 ? "#ffc" : "#fcc";
  return `<td style="background:${color}">${p.toFixed(1)}% <small>(${m.covered}/${m.total})</small></td>`;
};
const rows = Object.entries(summary)
  .filter(([f]) => f !== "total")
  .sort((a, b) => pct(a[1].lines) - pct(b[1].lines))
  .map(([f, m]) => `<tr><td>${esc(relative(process.cwd(), f))}</td>${cell(m.lines)}${cell(m.branches)}${cell(m.functions)}</tr>`)
  .join("\n");
const t = summary.total;
writeFileSync(
  out,
  `<!doctype html><meta charset="utf-8"><title>hypervisor coverage</title>
<style>body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}</style>
<h1>hypervisor test coverage</h1>
<p>Lines ${pct(t.lines).toFixed(1)}%, branches ${pct(t.branches).toFixed(1)}%, functions ${pct(t.functions).toFixed(1)}% — generated ${new Date().toISOString()}; per-file detail in ${esc(dir)}/index.html</p>
<table><tr><th>file</th><th>lines</th><th>branches</th><th>functions</th></tr>
${rows}
</table>
`,
);
console.log(`wrote ${out}: lines ${pct(t.lines).toFixed(1)}%`);
