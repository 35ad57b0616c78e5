"""``report.html``: the morning report as one self-contained file — inline CSS and SVG charts, no
script, no network, no CDN — readable offline on any laptop."""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Any

__all__ = ["render_html"]

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #1d232a; background: #fff; padding: 0 1rem; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2rem; border-bottom: 1px solid #ddd; }
.muted { color: #667; } .bad { color: #b3261e; } .good { color: #1b7f3b; } .warn { color: #9a6700; }
.tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: .6rem; }
.tile { border: 1px solid #ddd; border-radius: 6px; padding: .5rem .7rem; }
.tile b { display: block; font-size: 1.4rem; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 1rem; }
figure { margin: 0; border: 1px solid #ddd; border-radius: 6px; padding: .5rem; }
figcaption { font-weight: 600; margin-bottom: .3rem; }
svg.chart { width: 100%; height: 140px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid #eee;
         vertical-align: top; }
th { background: #f6f8fa; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: 12px; }
@media (prefers-color-scheme: dark) {
  body { background: #14181d; color: #e6e9ee; } th { background: #1e242b; }
  .tile, figure { border-color: #333a44; } th, td { border-color: #262d35; }
  .muted { color: #9aa4b1; }
}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value: Any, nd: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{nd}f}"
    return f"{value:,}" if isinstance(value, int) else _e(value)


def _chart(
    cid: str, name: str, ts: list[Any], ys: list[Any], *, color: str, y_max: float | None = None
) -> str:
    """A line chart as inline SVG (viewBox units; it scales with the page)."""
    points = [
        (float(t), float(y))
        for t, y in zip(ts, ys, strict=False)
        if isinstance(t, int | float) and isinstance(y, int | float)
    ]
    if len(points) < 2:
        return (
            f'<figure id="chart-{cid}"><figcaption>{_e(name)}</figcaption>'
            '<p class="muted">not enough samples</p></figure>'
        )
    w, h, pad = 600.0, 140.0, 24.0
    t0, t1 = points[0][0], points[-1][0]
    top = y_max if y_max is not None else max(y for _, y in points)
    top = top if top > 0 else 1.0
    span = (t1 - t0) or 1.0

    def xy(t: float, y: float) -> str:
        return (
            f"{pad + (t - t0) / span * (w - 2 * pad):.1f},{h - pad - y / top * (h - 2 * pad):.1f}"
        )

    line = " ".join(xy(t, y) for t, y in points)
    start = datetime.fromtimestamp(t0, UTC).strftime("%H:%M")
    end = datetime.fromtimestamp(t1, UTC).strftime("%H:%M")
    return (
        f'<figure id="chart-{cid}"><figcaption>{_e(name)}</figcaption>'
        f'<svg class="chart" viewBox="0 0 {w:.0f} {h:.0f}" role="img" '
        f'aria-label="{_e(name)} over the night">'
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#999"/>'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#999"/>'
        f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{line}"/>'
        f'<text x="{pad}" y="{h - 6}" font-size="11" fill="#888">{start} UTC</text>'
        f'<text x="{w - pad}" y="{h - 6}" font-size="11" fill="#888" text-anchor="end">{end}</text>'
        f'<text x="{pad + 4}" y="{pad - 6}" font-size="11" fill="#888">{_fmt(top)}</text>'
        f"</svg></figure>"
    )


def _when(iso: str | None) -> str:
    if not iso:
        return "–"
    try:
        return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return _e(iso)


def _tile(label: str, value: str, cls: str = "") -> str:
    label = f'<span class="muted">{_e(label)}</span>'
    return f'<div class="tile">{label}<b class="{cls}">{value}</b></div>'


def _changes(changes: list[dict[str, Any]]) -> str:
    if not changes:
        return '<p class="muted">No change was made.</p>'
    rows = []
    order = {"waiting": 0, "rejected": 1, "merged": 2, "reverted": 3}
    for c in sorted(changes, key=lambda c: (order.get(c["state"], 3), c["job"])):
        cls = {"merged": "good", "waiting": "warn", "rejected": "bad", "reverted": "bad"}.get(
            c["state"], ""
        )
        reviews = " ".join(
            "–" if r is None else ("pass" if r else "fail") for r in c.get("reviews") or []
        )
        tests = "–" if c.get("tests") is None else ("pass" if c["tests"] else "fail")
        lines = "–" if c.get("added") is None else f"+{_e(c['added'])} −{_e(c['removed'])}"
        rows.append(
            f'<tr><td class="num">{_e(c["job"])}</td><td>{_e(c["flow"])}</td>'
            f"<td><code>{_e(c['branch'])}</code></td>"
            f'<td>{_e(", ".join(c.get("files") or [])) or "–"}</td><td class="num">{lines}</td>'
            f"<td>{tests}</td><td>{reviews}</td>"
            f'<td class="{cls}">{_e(c["state"])}</td><td>{_e(c.get("reason"))}</td></tr>'
        )
    return (
        '<table id="changes"><thead><tr><th>job</th><th>flow</th><th>branch</th><th>files</th>'
        "<th>lines</th><th>tests</th><th>reviews</th><th>state</th><th>why</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _failures(failures: list[dict[str, Any]], corrupt: list[dict[str, Any]]) -> str:
    if not failures and not corrupt:
        return '<p class="muted">No run failed.</p>'
    rows = [
        f"<tr><td><code>{_e(f['run'])}</code></td><td>{_e(f.get('node'))}</td>"
        f"<td>{_e(f.get('agent'))}</td><td>{_e(f.get('error'))}</td>"
        f"<td><code>{_e(f.get('artifact'))}</code></td></tr>"
        for f in failures
    ] + [
        f'<tr><td><code>{_e(c["run"])}</code></td><td colspan="2" class="bad">unreadable</td>'
        f'<td colspan="2">{_e(c["problem"])}</td></tr>'
        for c in corrupt
    ]
    return (
        '<table id="failures"><thead><tr><th>run</th><th>node</th><th>agent</th><th>error</th>'
        f"<th>artifact</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _agents(agents: dict[str, Any]) -> str:
    rows = [
        f'<tr><td>{_e(name)}</td><td class="num">{a["done"]}</td>'
        f'<td class="num">{a["failed"]}</td>'
        f'<td class="num">{_fmt(None if a["pass_rate"] is None else a["pass_rate"] * 100, 0)}'
        f"{'' if a['pass_rate'] is None else ' %'}</td>"
        f'<td class="num">{_fmt(a["mean_s"])}</td></tr>'
        for name, a in agents.items()
    ]
    return (
        '<table id="agents"><thead><tr><th>agent</th><th>passed</th><th>failed</th>'
        "<th>pass rate</th><th>mean s</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _pct(rate: Any) -> str:
    return "–" if rate is None else f"{rate * 100:.0f} %"


def _learning(learning: dict[str, Any]) -> str:
    """Per agent: the adapter in use, its held-out evidence, the pass rate before and after."""
    agents = learning.get("agents") or []
    if not agents:
        return (
            '<p class="muted" id="learning">No adapter trained or promoted yet: every agent '
            "uses the base model (<code>pantheon night --learn</code> or "
            "<code>pantheon learn</code>).</p>"
        )
    rows = []
    for a in agents:
        ev = a.get("evidence") or {}
        if ev.get("tasks") and ev.get("adapter_auroc") is not None:
            evidence = (
                f"scores: AUROC base {_fmt(ev.get('base_auroc'), 3)}, adapter "
                f"{_fmt(ev.get('adapter_auroc'), 3)} on {ev['tasks']} held-out changes; "
                f"p = {_fmt(ev.get('p_value'), 3)}"
            )
        elif ev.get("tasks"):
            n = ev["tasks"]
            evidence = (
                f"{_e(ev.get('judged_by'))}: base {ev['base_passed']}/{n} "
                f"({_pct(ev['base_passed'] / n)}), adapter {ev['adapter_passed']}/{n} "
                f"({_pct(ev['adapter_passed'] / n)}); won {ev.get('c')}, lost {ev.get('b')}, "
                f"p = {_fmt(ev.get('p_value'), 3)}"
            )
        else:
            evidence = "not judged"
        night = "; ".join(
            f"{'base model' if k == 'base' else _e(k)}: {_pct(r['pass_rate'])} "
            f"({r['done']}/{r['done'] + r['failed']})"
            for k, r in (a.get("night") or {}).items()
        )
        last = a.get("last") or {}
        training = (
            f"{_e(last.get('id'))} ({_e(last.get('status'))}, {last.get('step')}/"
            f"{last.get('steps')} steps, {_fmt(last.get('minutes'), 1)} min"
            + (f"; {_e(last['stopped'])}" if last.get("stopped") else "")
            + ")"
            if last
            else "–"
        )
        rows.append(
            f"<tr><td>{_e(a['agent'])}</td>"
            f"<td>{_e(a['adapter']) if a.get('adapter') else 'base model'}</td>"
            f"<td>{evidence}<br><span class='muted'>{_e(ev.get('reason') or '')}</span></td>"
            f"<td>{night or '–'}</td><td>{training}</td></tr>"
        )
    return (
        '<table id="learning"><thead><tr><th>agent</th><th>in use</th>'
        "<th>held-out evidence</th><th>pass rate on the nights (before / after)</th>"
        "<th>latest training</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _canary_tile(canaries: dict[str, Any]) -> str:
    n = canaries.get("n") or 0
    if not n:
        return _tile("canaries caught", "none planted")
    share = canaries["share"]
    lo, hi = canaries["ci95"]
    return _tile(
        f"canaries caught (95% CI {lo * 100:.0f}–{hi:.0%})",
        f"{canaries['caught']} / {n}",
        "bad" if share < 0.5 else "warn" if share < 0.8 else "good",
    )


def _canaries(canaries: dict[str, Any]) -> str:
    """Each reviewer's score on the planted defects, and each canary with its verdicts."""
    if not canaries.get("n"):
        return '<p class="muted" id="canaries">No canary was planted this night.</p>'
    rows = "".join(
        f'<tr><td>{_e(node)}</td><td class="num">{r["caught"]}</td>'
        f'<td class="num">{r["missed"]}</td><td class="num">{r["errors"]}</td>'
        f'<td class="num">{_fmt(r["share"])}</td></tr>'
        for node, r in [("gate (both)", {**canaries, "errors": 0}), *canaries["reviewers"].items()]
    )
    planted = "".join(
        f"<tr><td><code>{_e(c.get('run'))}</code></td><td>{_e(c.get('kind'))}</td>"
        f"<td>{_e(c.get('what'))}</td><td>"
        + ", ".join(
            f"{_e(node)}: "
            + ("no verdict" if v.get("passed") is None else "passed" if v["passed"] else "failed")
            for node, v in sorted((c.get("verdicts") or {}).items())
        )
        + "</td></tr>"
        for c in canaries.get("planted", [])
    )
    return (
        '<table id="canaries"><thead><tr><th>reviewer</th><th>caught</th><th>missed</th>'
        f"<th>no verdict</th><th>share</th></tr></thead><tbody>{rows}</tbody></table>"
        '<table id="planted"><thead><tr><th>run</th><th>kind</th><th>what was planted</th>'
        f"<th>verdicts</th></tr></thead><tbody>{planted}</tbody></table>"
    )


def _calibration(figures: list[dict[str, Any]]) -> str:
    """Each reviewer's measured quality on held-out labelled changes, or why there is none."""
    if not figures:
        return (
            '<p class="muted" id="calibration">The reviewers are not calibrated: '
            "<code>pantheon reviewers calibrate</code> measures them.</p>"
        )
    rows = "".join(
        f"<tr><td>{_e(f['kind'])}</td><td>{_e(f['reviewer'])}</td><td>{_e(f['model'])}</td>"
        f'<td class="num">{f["auroc"]:.2f} ({f["low"]:.2f}–{f["high"]:.2f})</td>'
        + (
            f'<td class="num">{f["threshold"]:.2f}</td>'
            f'<td class="num">{f["defects_caught"]:.0%}</td>'
            f'<td class="num">{f["good_passed"]:.0%}</td>'
            if f.get("informative")
            else '<td colspan="3" class="bad">no information (the interval holds 0.5)</td>'
        )
        + "</tr>"
        for f in figures
    )
    return (
        '<table id="calibration"><thead><tr><th>kind</th><th>reviewer</th><th>model</th>'
        "<th>AUROC (95% CI)</th><th>threshold</th><th>defects caught</th>"
        f"<th>good passed</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def render_html(summary: dict[str, Any]) -> str:
    night, jobs, fig, series = (
        summary["night"],
        summary["jobs"],
        summary["figures"],
        summary["series"],
    )
    kappa = fig["kappa"]
    wall = night["wall_s"]
    tiles = "".join(
        [
            _tile("jobs", _fmt(jobs["total"])),
            _tile("done", _fmt(jobs["done"]), "good"),
            _tile("failed", _fmt(jobs["failed"]), "bad" if jobs["failed"] else ""),
            _tile("merged", _fmt(fig["merged"]), "good"),
            _tile("waiting", _fmt(fig["waiting"]), "warn" if fig["waiting"] else ""),
            _tile("rejected", _fmt(fig["rejected"])),
            _tile(
                f"κ ({fig['kappa_pairs']} pairs"
                + (
                    f", {fig['review_pass_share']:.0%} pass)"
                    if fig.get("review_pass_share") is not None
                    else ")"
                ),
                fig.get("kappa_note") or _fmt(kappa),
                "warn"
                if fig.get("kappa_note")
                else ("bad" if kappa is not None and kappa < 0.6 else ""),
            ),
            _canary_tile(summary.get("canaries") or {}),
            _tile("tokens/s (mean)", _fmt(fig["tokens_per_s"]["mean"], 1)),
            _tile(
                "prompt from cache",
                f"{cache['share']:.0%}" if (cache := fig.get("prompt_cache")) else "–",
            ),
            _tile("batch (mean)", _fmt(fig["batch"]["mean"])),
            _tile("ρ (mean / max)", f"{_fmt(fig['rho']['mean'])} / {_fmt(fig['rho']['max'])}"),
            _tile("wall time", "–" if wall is None else f"{wall / 60:,.1f} min"),
        ]
    )
    t = series["t"]
    charts = "".join(
        [
            _chart("done", "Jobs done", t, series["done"], color="#1b7f3b"),
            _chart("depth", "Queue depth", t, series["depth"], color="#0b63c5"),
            _chart("tokens", "Generated tokens/s", t, series["tokens_per_s"], color="#8250df"),
            _chart("kappa", "Reviewer agreement κ", t, series["kappa"], color="#b3261e", y_max=1.0),
        ]
    )
    flows = "".join(
        f"<tr><td>{_e(name)}</td>"
        + "".join(
            f'<td class="num">{row.get(s, 0)}</td>' for s in ("queued", "running", "done", "failed")
        )
        + "</tr>"
        for name, row in sorted(jobs["by_flow"].items())
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Pantheon — the night's report</title><style>{CSS}</style></head>
<body>
<h1>The night's report</h1>
<p class="muted">{_when(night["started"])} → {_when(night["finished"])} · artifacts
<code>{_e(summary["artifacts"])}</code> · {_e(summary["schema"])}</p>
<section class="tiles" id="tiles">{tiles}</section>
<h2>Over the night</h2>
<section class="charts">{charts}</section>
<h2>Changes</h2>
{_changes(summary["changes"])}
<h2>Canaries</h2>
{_canaries(summary.get("canaries") or {})}
<h2>Reviewers, calibrated</h2>
{_calibration(summary.get("calibration") or [])}
<h2>Failures</h2>
{_failures(summary["failures"], summary["corrupt"])}
<h2>Agents</h2>
{_agents(summary["agents"])}
<h2>Learning</h2>
{_learning(summary.get("learning") or {})}
<h2>Flows</h2>
<table id="flows"><thead><tr><th>flow</th><th>queued</th><th>running</th><th>done</th>
<th>failed</th></tr></thead><tbody>{flows}</tbody></table>
<p class="muted">Generated {_e(summary["generated_at"])} by <code>pantheon report</code>.</p>
</body></html>
"""
