"""`retrain/<run-id>/report.html`: one self-contained page (images inlined) that
answers "did the synthetic data help on real images?": the real-only vs
real+synthetic table, per-class AP bars and both arms' learning curves."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

LABELS = {"real_only": "real only", "real_plus_synthetic": "real + synthetic"}
COLORS = {"real_only": "#0072B2", "real_plus_synthetic": "#E69F00"}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _per_class_bars(c: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(c["arms"]["real_only"]["per_class"])
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(names) + 2), 3))
    x = np.arange(len(names))
    for k, arm in enumerate(c["arms"]):
        vals = [c["arms"][arm]["per_class"].get(n, {}).get("ap50") or 0.0 for n in names]
        ax.bar(x + (k - 0.5) * 0.38, vals, 0.38, label=LABELS.get(arm, arm), color=COLORS.get(arm))
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylabel("AP50 on real eval")
    ax.legend(fontsize=8)
    return _png(fig)


def _curves(c: dict[str, Any]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("train/box_loss", "train box loss"), ("train/cls_loss", "train cls loss"), ("metrics/mAP50(B)", "mAP50 (real eval)")]
    if not any(c["arms"][a].get("curves") for a in c["arms"]):
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 2.8))
    for ax, (key, title) in zip(axes, keys):
        for arm, m in c["arms"].items():
            cur = m.get("curves") or {}
            if key in cur:
                ax.plot(cur.get("epoch", list(range(1, len(cur[key]) + 1))), cur[key], marker="o", ms=3,
                        label=LABELS.get(arm, arm), color=COLORS.get(arm))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
    axes[0].legend(fontsize=8)
    return _png(fig)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def render_report(c: dict[str, Any]) -> str:
    arms = c["arms"]
    e = html.escape
    rows = []
    for key, label in (("map50", "mAP50"), ("map50_95", "mAP50-95"), ("precision", "precision"), ("recall", "recall")):
        g = c["gain"][key]
        rows.append(f"<tr><td>{label}</td>" + "".join(f"<td>{_fmt(arms[a][key])}</td>" for a in arms)
                    + f"<td class={'pos' if g > 0 else 'neg'}>{g:+.4f}</td></tr>")
    class_rows = []
    for name, gain in c["per_class_ap50_gain"].items():
        inst = arms["real_only"]["per_class"][name].get("instances")
        class_rows.append(f"<tr><td>{e(name)}</td><td>{inst}</td>"
                          + "".join(f"<td>{_fmt(arms[a]['per_class'].get(name, {}).get('ap50'))}</td>" for a in arms)
                          + f"<td>{'n/a' if gain is None else f'{gain:+.4f}'}</td></tr>")
    data = arms["real_plus_synthetic"].get("data", {})
    syn = data.get("synthetic", {})
    real = data.get("real_train", {})
    cfg = c.get("config", {})
    curves = _curves(c)
    flag = ""
    if c.get("min_gain") is not None:
        flag = (f"<p class=neg><b>flagged</b>: mAP50 gain {c['gain']['map50']:+.4f} is below min_gain {c['min_gain']}</p>"
                if c.get("flagged") else f"<p class=pos>mAP50 gain meets min_gain {c['min_gain']}</p>")
    head = "".join(f"<th>{LABELS.get(a, a)}</th>" for a in arms)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>retrain {e(c.get('run_id', ''))}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}td,th{{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right}}
td:first-child,th:first-child{{text-align:left}}.pos{{color:#087a2a}}.neg{{color:#b00}}code{{font-size:90%}}</style></head><body>
<h1>Detector retraining {e(c.get('run_id', ''))}</h1>
<p>Synthetic version <code>{e(str(c.get('version')))}</code>; real train <code>{e(str(c.get('real_train')))}</code>
({real.get('images', '?')} images); real eval <code>{e(str(c.get('real_eval')))}</code>
({data.get('real_eval', {}).get('images', '?')} images). Synthetic images used: {syn.get('used_images', '?')}
(ratio {cfg.get('synthetic_ratio')}); class mapping {e(str(syn.get('class_mapping', {})))}.</p>
<p>Model <code>{e(str(cfg.get('model')))}</code>, {cfg.get('epochs')} epochs at {cfg.get('imgsz')} px, batch {cfg.get('batch')},
seed {cfg.get('seed')}; both arms use the same settings and are scored with their final weights on the real eval set.</p>
<h2>Verdict: the synthetic data {e(c['verdict'])} (mAP50 {c['gain']['map50']:+.4f})</h2>{flag}
<table><tr><th>metric</th>{head}<th>gain</th></tr>{''.join(rows)}</table>
<h2>Per class (AP50)</h2><table><tr><th>class</th><th>eval instances</th>{head}<th>gain</th></tr>{''.join(class_rows)}</table>
<img src="{_per_class_bars(c)}" alt="per-class AP50">
<h2>Learning curves</h2>{f'<img src="{curves}" alt="learning curves">' if curves else '<p>no curves recorded</p>'}
<p>ultralytics' own plots: <a href="real_only/train/results.png">real only</a>,
<a href="real_plus_synthetic/train/results.png">real + synthetic</a>; eval PR curves and confusion matrices under
<code>&lt;arm&gt;/eval/</code>; weights under <code>&lt;arm&gt;/weights/</code>.</p>
</body></html>"""


def render_index(runs: list[dict[str, Any]]) -> str:
    """`<version>/retrain/index.html`: every finished run of this version, newest
    first; the version's own report (immutable once published) links here."""
    e = html.escape
    rows = "".join(
        f"<tr><td><a href=\"{e(c['run_id'])}/report.html\">{e(c['run_id'])}</a></td><td>{e(str(c.get('created_at', '')))}</td>"
        f"<td>{e(str(c.get('config', {}).get('model')))}</td><td>{c.get('config', {}).get('epochs')}</td>"
        f"<td>{_fmt(c['arms']['real_only']['map50'])}</td><td>{_fmt(c['arms']['real_plus_synthetic']['map50'])}</td>"
        f"<td>{c['gain']['map50']:+.4f}</td><td>{'flagged' if c.get('flagged') else ''}</td></tr>"
        for c in sorted(runs, key=lambda c: str(c.get("created_at", "")), reverse=True))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>detector retraining runs</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}td,th{{padding:3px 10px;border-bottom:1px solid #ddd}}</style>
</head><body><h1>Detector retraining runs</h1><p>mAP50 on the held-out real eval set of each run.</p>
<table><tr><th>run</th><th>finished</th><th>model</th><th>epochs</th><th>real only</th><th>real + synthetic</th><th>gain</th><th></th></tr>
{rows}</table></body></html>"""
