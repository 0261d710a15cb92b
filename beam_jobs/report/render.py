"""report.html: one offline page. Images are data: URIs (thumbnails WEBP, plots PNG), styles are inline, and
there is no script: the page works under the maps page's Content-Security-Policy (``default-src 'none';
img-src data:; style-src 'unsafe-inline'``) and with the network off."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from beam_jobs import storage
from beam_jobs.contract import ReportJson

TITLES = {
    "numbers": "Tonight in numbers",
    "new_tonight": "New tonight",
    "drift": "Drift against the reference",
    "clusters": "What grew and what shrank",
    "duplicates": "Duplicates",
    "models": "Models",
    "links": "Links",
}

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#111827;background:#f3f4f6;margin:0}
main{max-width:1180px;margin:0 auto;padding:18px 22px 40px}
header h1{font-size:26px;margin:6px 0 2px} .sub{color:#6b7280;margin:0 0 10px}
nav a{margin-right:14px;color:#2563eb;text-decoration:none;font-size:13px}
section{background:#fff;border:1px solid #e5e7eb;border-radius:10px;padding:14px 18px;margin:14px 0}
h2{font-size:18px;margin:0 0 10px} h3{font-size:14px;margin:10px 0 6px}
table{border-collapse:collapse;font-size:13px} td,th{padding:3px 10px 3px 0;text-align:left;vertical-align:middle}
th{color:#6b7280;font-weight:600;border-bottom:1px solid #e5e7eb}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.missing{color:#92400e;background:#fffbeb;border:1px solid #fde68a;border-radius:6px;padding:6px 10px;margin:4px 0}
.note{color:#6b7280;font-size:12px;margin:6px 0}
.grid{display:flex;flex-wrap:wrap;gap:8px;margin:8px 0}
figure{margin:0;width:112px;font-size:11px;color:#374151}
figure .ph{width:104px;height:104px;display:flex;align-items:center;justify-content:center;background:#f3f4f6;
color:#9ca3af;border-radius:4px;font-size:10px}
figure img{max-width:104px;max-height:104px;border-radius:4px;display:block}
figcaption{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.badge{display:inline-block;border-radius:999px;padding:1px 9px;font-size:12px;font-weight:600}
.above{background:#fee2e2;color:#991b1b} .within{background:#dcfce7;color:#166534}
.below{background:#dbeafe;color:#1e40af} .unknown{background:#f3f4f6;color:#374151}
.mover{display:flex;gap:14px;align-items:flex-start;border-top:1px solid #f3f4f6;padding:8px 0}
.mover .grid{margin:0;flex:1} .up{color:#1d4ed8} .down{color:#c2410c}
code{font-size:12px;background:#f9fafb;padding:0 3px;border-radius:3px;word-break:break-all}
.group{border-top:1px solid #f3f4f6;padding:6px 0}
"""


@dataclass
class Pictures:
    """Everything inline: thumbnails by URI (data URIs) and the plots (PNG bytes)."""

    thumbs: dict[str, str] = field(default_factory=dict)
    sparklines: dict[str, bytes] = field(default_factory=dict)
    histogram: bytes | None = None
    shares: bytes | None = None
    maps: dict[int, bytes] = field(default_factory=dict)


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def fmt(value: float | None, name: str = "") -> str:
    if value is None:
        return "-"
    if name.endswith("rate"):
        return f"{100 * value:.2f}%"
    if name == "usd":
        return f"${value:,.4f}"
    if name == "ratio":
        return f"{value:.3f}"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.1f}"


def basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def thumb(pictures: Pictures, uri: str, caption: str, title: str = "") -> str:
    src = pictures.thumbs.get(uri)
    inner = f'<img src="{src}" alt="{esc(basename(uri))}">' if src else '<div class="ph">no thumbnail</div>'
    return f'<figure title="{esc(title or uri)}">{inner}<figcaption>{esc(caption)}</figcaption></figure>'


def _numbers(report: ReportJson, pictures: Pictures) -> str:
    rows = []
    for figure in report["numbers"]:
        name, value, median = figure["name"], figure["value"], figure["median"]
        spark = pictures.sparklines.get(name)
        trend = f'<img src="{png_uri(spark)}" alt="trend">' if spark else ""
        delta = ""
        if value is not None and median:
            delta = f"{100 * (value - median) / abs(median):+.0f}%"
        rows.append(
            f"<tr><td>{esc(figure['label'])}</td><td class=n><b>{fmt(value, name)}</b></td>"
            f"<td class=n>{fmt(median, name)}</td><td class=n>{esc(delta)}</td><td class=n>{figure['nights']}</td>"
            f"<td>{trend}</td></tr>"
        )
    parts = [
        "<table><tr><th>figure</th><th>tonight</th><th>median</th><th>vs median</th><th>nights</th>"
        "<th>trend</th></tr>" + "".join(rows) + "</table>"
    ]
    failures = report["failures"]
    if failures:
        lines = "".join(
            f"<tr><td><code>{esc(f['reason'])}</code></td><td class=n>{f['count']:,}</td><td>"
            + "<br>".join(f"<code>{esc(u)}</code>" for u in f["examples"])
            + "</td></tr>"
            for f in failures
        )
        parts.append(f"<h3>Failures by reason</h3><table><tr><th>reason</th><th>count</th><th>examples</th></tr>"
                     f"{lines}</table>")  # fmt: skip
    else:
        parts.append('<p class="note">No failures tonight.</p>')
    return "".join(parts)


def _new_tonight(report: ReportJson, pictures: Pictures) -> str:
    novelty = report["novelty"]
    rate, status = novelty.get("rate"), novelty.get("status", "unknown")
    band = novelty.get("band")
    usual = novelty.get("usual")
    words = {"above": "above its usual level", "within": "within its usual band", "below": "below its usual band"}
    level = (
        f"usual {fmt(usual, 'rate')}, band {fmt(band[0], 'rate')} to {fmt(band[1], 'rate')}"
        if band
        else "no usual level yet (needs two earlier nights)"
    )
    head = (
        f"<p>Novelty rate <b>{fmt(rate, 'rate')}</b> of tonight's rows "
        f'<span class="badge {esc(status)}">{esc(words.get(status, "no usual level"))}</span> '
        f"<span class=note>({esc(level)})</span></p>"
    )
    cards = "".join(
        thumb(
            pictures,
            item["image_uri"],
            f"{item['score']:.3g} · {basename(item['image_uri'])}",
            f"{item['image_uri']}\nscore {item['score']:.4f}, nearest earlier: {item.get('nearest_uri', '?')}",
        )
        for item in report["new_tonight"]
    )
    histogram = f'<img src="{png_uri(pictures.histogram)}" alt="scores">' if pictures.histogram else ""
    check = novelty.get("check") or {}
    note = (
        f"Score: 1 - cosine similarity to the nearest of {novelty.get('sample_rows', 0):,} sampled rows of "
        f"{len(report['window_nights'])} earlier night(s) ({novelty.get('window_rows', 0):,} rows); candidates found "
        f"in {novelty.get('dims')}-d PCA space, the top {len(report['new_tonight'])} re-scored at full length. "
        f"Threshold {novelty.get('threshold', 0):.4f} (99th percentile of {novelty.get('held_out_rows', 0):,} held-out "
        f"rows). Reduced vs exact on {check.get('rows', 0)} rows: Spearman {check.get('spearman', '-')}, "
        f"mean |error| {check.get('mean_abs_error', '-')}, top-k overlap {check.get('top_k_overlap', '-')}."
    )
    return f'{head}<div class="grid">{cards}</div>{histogram}<p class="note">{esc(note)}</p>'


def _drift(report: ReportJson, _: Pictures) -> str:
    rows = []
    for method, entry in sorted(report["drift"].items()):
        drift, ref = entry["drift"], entry["reference"]
        gone = "" if entry.get("reference_present") else " (no longer there)"
        rows.append(
            f"<tr><td>{esc(method)}</td><td><code>{esc(ref.get('dir'))}</code>{esc(gone)}</td>"
            f"<td class=n>{fmt(drift.get('mean_shift_relative'), 'ratio')}</td>"
            f"<td class=n>{fmt(drift.get('mmd_p_value'), 'ratio')}</td>"
            f"<td class=n>{fmt(drift.get('novelty_rate'), 'rate')}</td></tr>"
        )
    return (
        "<table><tr><th>map</th><th>reference</th><th>mean shift (relative)</th><th>MMD p-value</th>"
        "<th>novelty vs reference</th></tr>" + "".join(rows) + "</table>"
    )


def _clusters(report: ReportJson, pictures: Pictures) -> str:
    clustering = report["clustering"]
    shown = clustering.get("shown", 6)
    parts = []
    if pictures.shares:
        parts.append(f'<img src="{png_uri(pictures.shares)}" alt="shares">')
    for cluster in report["clusters"][:shown]:
        change = cluster["change"]
        arrow = '<span class="up">grew</span>' if change > 0 else '<span class="down">shrank</span>'
        cards = "".join(thumb(pictures, uri, basename(uri)) for uri in cluster["examples"])
        small = pictures.maps.get(cluster["cluster"])
        mapped = f'<img src="{png_uri(small)}" alt="cluster {cluster["cluster"]} on the map">' if small else ""
        parts.append(
            f'<div class="mover"><div style="width:190px"><h3>#{cluster["cluster"]}: '
            f"{100 * cluster['share_window']:.1f}% → {100 * cluster['share_tonight']:.1f}%</h3>"
            f"<p>{arrow} {100 * change:+.1f} pts · {cluster['rows_tonight']:,} rows tonight</p>{mapped}</div>"
            f'<div class="grid">{cards}</div></div>'
        )
    parts.append(
        f'<p class="note">k-means, k = {clustering.get("k")}, in the {clustering.get("dims")}-d PCA space, fitted on '
        f"{clustering.get('fit_rows', 0):,} rows (the window's sample and {clustering.get('tonight_rows', 0):,} of "
        "tonight's). Window shares from its sample, tonight's from every row. Maps: the first two PCA axes.</p>"
    )
    return "".join(parts)


def _duplicates(report: ReportJson, pictures: Pictures) -> str:
    parts = []
    for kind, title in (("exact", "Exact duplicates (same bytes)"), ("near", "Near-duplicates")):
        groups = report["duplicates"].get(kind) or []
        if not groups:
            continue
        parts.append(f"<h3>{title}</h3>")
        for group in groups:
            cards = "".join(thumb(pictures, uri, basename(uri)) for uri in group["image_uris"][:6])
            more = f" (first 6 of {group['size']})" if group["size"] > 6 else ""
            score = "" if kind == "exact" else f", cosine ≥ {group['score']:.3f}"
            parts.append(f'<div class="group">{group["size"]} images{more}{score}<div class="grid">{cards}</div></div>')
    return "".join(parts) or '<p class="note">No duplicates tonight.</p>'


def _models(report: ReportJson, _: Pictures) -> str:
    rows = "".join(
        f"<tr><td>{esc(' vs '.join(p.get('models') or []))}</td><td class=n>{fmt(p.get('images'))}</td>"
        f"<td class=n>{fmt(p.get('knn_overlap'), 'ratio')}</td>"
        f"<td class=n>{fmt(p.get('distance_spearman'), 'ratio')}</td>"
        f"<td class=n>{fmt(p.get('linear_cka'), 'ratio')}</td></tr>"
        for p in report["models"]
    )
    return (
        "<table><tr><th>pair</th><th>images</th><th>kNN overlap</th><th>distance Spearman</th><th>linear CKA</th>"
        f"</tr>{rows}</table>"
    )


def href(target: str, here: str) -> str:
    """A link the page can follow from its own folder: relative for local files, the URI otherwise."""
    if storage.is_local(target) and storage.is_local(here):
        return os.path.relpath(target, here)
    return target


def _links(report: ReportJson, _: Pictures) -> str:
    here = report["output"]
    items = "".join(
        f'<li><a href="{esc(href(path, here))}">{esc(name)}</a> <code>{esc(path)}</code></li>'
        for name, path in report["links"].items()
    )
    search = report["links"].get("search (index)")
    extra = (
        f'<p class="note">Search the night: <code>python -m beam_jobs.search --index {esc(search)} --uri URI</code> '
        "or the maps page's similar-images search.</p>"
        if search
        else ""
    )
    return f"<ul>{items}</ul>{extra}"


SECTIONS: dict[str, Callable[[ReportJson, Pictures], str]] = {
    "numbers": _numbers,
    "new_tonight": _new_tonight,
    "drift": _drift,
    "clusters": _clusters,
    "duplicates": _duplicates,
    "models": _models,
    "links": _links,
}


def has_content(report: ReportJson, key: str) -> bool:
    if key == "numbers":
        return bool(report["numbers"] or report["failures"])
    if key == "duplicates":
        return any(report["duplicates"].get(kind) for kind in ("exact", "near"))
    return bool(report.get(key))


def render_html(report: ReportJson, pictures: Pictures) -> str:
    """The whole page."""
    window = report["window_nights"]
    span = f"{window[0]} to {window[-1]}" if window else "none"
    sub = (
        f"model {report['model_id'] or '-'} · window: {len(window)} earlier night(s) within {report['window_days']} "
        f"day(s) ({span}) · run {report['run_id']}"
    )
    nav = "".join(f'<a href="#{key}">{esc(title)}</a>' for key, title in TITLES.items())
    body = []
    for key, title in TITLES.items():
        why = report["sections"].get(key)
        inner = f'<p class="missing">{esc(why)}</p>' if why else ""
        if not why or has_content(report, key):  # a section may say why and still show what it has
            inner += SECTIONS[key](report, pictures)
        body.append(f'<section id="{key}"><h2>{esc(title)}</h2>{inner}</section>')
    thumbs = report["thumbnails"]
    misses = ", ".join(f"{count} {why}" for why, count in (thumbs.get("misses") or {}).items() if count) or "none"
    footer = (
        f"Generated {esc(report['finished_at'])} in {report['seconds']:.1f} s · thumbnails: "
        f"{thumbs.get('shown', 0)} of {thumbs.get('wanted', 0)} shown, missed: {esc(misses)}"
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Morning report {esc(report['ds'])}</title><style>{STYLE}</style></head><body><main>"
        f"<header><h1>Morning report · {esc(report['ds'])}</h1><p class=sub>{esc(sub)}</p><nav>{nav}</nav></header>"
        + "".join(body)
        + f'<p class="note">{footer}</p></main></body></html>\n'
    )
