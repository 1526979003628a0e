"""Audit reports: one self-contained HTML page (images embedded), ``summary.json`` and ``summary.csv``."""
from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path
from typing import Any

from .audit import write_file

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 8px;font-size:14px}
th{background:#eee;cursor:pointer;user-select:none}th:after{content:" \\2195";color:#999}
td.num{text-align:right;font-variant-numeric:tabular-nums}tr.error td{background:#fdd}
.input{border-top:1px solid #ccc;padding:.8em 0}.row{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;text-align:center;font-size:13px}figure img{max-width:340px;max-height:260px;display:block}
.err{color:#b00}
"""
_SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(function(th, col){
  th.addEventListener("click", function(){
    var body = th.closest("table").tBodies[0], rows = Array.from(body.rows);
    var asc = th.dataset.order !== "asc"; th.dataset.order = asc ? "asc" : "desc";
    rows.sort(function(a, b){
      var x = a.cells[col].dataset.v !== undefined ? a.cells[col].dataset.v : a.cells[col].textContent;
      var y = b.cells[col].dataset.v !== undefined ? b.cells[col].dataset.v : b.cells[col].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function(r){ body.appendChild(r); });
  });
});
"""


def _columns(methods: list[str]) -> list[str]:
    cols = ["input", "status", "top1", "top1_score", "target", "target_score"]
    for m in methods:
        cols += [f"{m}_s", f"{m}_deletion_auc", f"{m}_insertion_auc"]
    return cols + ["error"]


def _row(rec: dict, methods: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {"input": rec.get("input"), "status": rec.get("status"), "error": rec.get("error", "")}
    if rec.get("status") == "ok":
        top = rec["prediction"][0]
        row.update(top1=top["label"], top1_score=round(top["score"], 4),
                   target=rec["target"]["label"], target_score=round(rec["target"]["score"], 4))
        for m in methods:
            res = rec["methods"].get(m, {})
            row[f"{m}_s"] = res.get("timings", {}).get("method_s")
            for k in ("deletion_auc", "insertion_auc"):
                row[f"{m}_{k}"] = None if res.get(k) is None else round(res[k], 4)
    return row


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A CSV cell that no spreadsheet runs as a formula: text starting with ``= + - @``, a tab or
    a carriage return gets a leading single quote (OWASP's advice); numbers stay numbers."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "<td></td>"
    if isinstance(value, (int, float)):
        return f'<td class="num" data-v="{value}">{value:.4g}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def render_html(records: list[dict], methods: list[str], title: str, info: dict, folder: Path) -> str:
    """The report page; every picture named in the records (relative to ``folder``) is embedded."""
    cols = _columns(methods)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    rows = "".join(f'<tr class="{html.escape(str(r.get("status")))}">' + "".join(_cell(_row(r, methods).get(c)) for c in cols)
                   + "</tr>" for r in records)
    sections = []
    for rec in records:
        name = html.escape(Path(rec["input"]).name)
        if rec.get("status") != "ok":
            sections.append(f'<div class="input"><h3>{name}</h3><p class="err">{html.escape(rec.get("error", ""))}</p></div>')
            continue
        base = folder / rec["dir"]
        figs = [f'<figure><img src="{_data_uri(base / rec["picture"])}" alt="{name}">input</figure>']
        for m in methods:
            res = rec["methods"].get(m)
            if not res:
                continue
            scores = "".join(f"<br>{k.split('_')[0]} AUC {res[k]:.3f}" for k in ("deletion_auc", "insertion_auc") if k in res)
            figs.append(f'<figure><img src="{_data_uri(base / res["files"]["png"])}" alt="{html.escape(m)}">'
                        f'{html.escape(m)} ({res["timings"]["method_s"]:.2f} s){scores}</figure>')
        top = ", ".join(f'{html.escape(p["label"])} {p["score"]:.3f}' for p in rec["prediction"])
        sections.append(f'<div class="input"><h3>{name}</h3><p>target: <b>{html.escape(rec["target"]["label"])}</b> '
                        f'({rec["target"]["index"]}); top: {top}</p><div class="row">{"".join(figs)}</div></div>')
    facts = "".join(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>" for k, v in info.items())
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1><ul>{facts}</ul>"
            f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
            f'{"".join(sections)}<script>{_SCRIPT}</script></body></html>')


def write_report(folder: Path, records: list[dict], methods: list[str], info: dict,
                 title: str = "onnx-xai audit") -> dict[str, Path]:
    """Write ``report.html``, ``summary.json`` and ``summary.csv`` into ``folder`` (atomically;
    ``OutputError`` when it cannot). Text cells of the CSV are neutralised against formula
    injection (``csv_cell``); the JSON keeps every value verbatim."""
    folder = Path(folder)
    failed = [r for r in records if r.get("status") != "ok"]
    summary = dict(info, methods=methods, n_inputs=len(records), n_failed=len(failed),
                   inputs=[{k: v for k, v in r.items() if k != "traceback"} for r in records])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_columns(methods), lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: csv_cell(v) for k, v in _row(r, methods).items()})
    paths = {"html": folder / "report.html", "json": folder / "summary.json", "csv": folder / "summary.csv"}
    write_file(paths["html"], render_html(records, methods, title, info, folder).encode("utf-8"))
    write_file(paths["json"], json.dumps(summary, indent=2).encode("utf-8"))
    write_file(paths["csv"], buf.getvalue().encode("utf-8"))
    return paths
