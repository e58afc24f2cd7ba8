"""`retrain/<run-id>/report.html` (one self-contained page, plots inlined) and
`retrain/index.html`, rendered from Jinja2 templates shipped with the package."""

from __future__ import annotations

import base64
import io

import jinja2

from factory.retrain.compare import Comparison

COLORS = {"real": "#0072B2", "mixed": "#E69F00", "synthetic": "#009E73"}

_env = jinja2.Environment(loader=jinja2.PackageLoader("factory.retrain", "templates"),
                          autoescape=jinja2.select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
_env.filters["num"] = lambda v, d=4: "n/a" if v is None else f"{v:.{d}f}"
_env.filters["signed"] = lambda v, d=4: "n/a" if v is None else f"{v:+.{d}f}"


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plots(c: Comparison) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arms = c["arms"]
    names = list(next(iter(arms.values()))["summary"]["per_class_ap50"])
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(names) + 2), 3))
    x, w = np.arange(len(names)), 0.8 / len(arms)
    for k, (arm, a) in enumerate(arms.items()):
        pc = a["summary"]["per_class_ap50"]
        ax.bar(x + (k - (len(arms) - 1) / 2) * w, [(pc[n] or {}).get("mean") or 0.0 for n in names], w,
               yerr=[(pc[n] or {}).get("std") or 0.0 for n in names], label=a["label"], color=COLORS.get(arm))
    ax.set_xticks(x, names, rotation=20)
    ax.set_ylabel("AP50 on real eval (mean over seeds)")
    ax.legend(fontsize=8)
    out = {"per_class": _png(fig)}
    if any(r.get("curve", {}).get("map50") for a in arms.values() for r in a["seeds"].values()):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3))
        for arm, a in arms.items():
            for i, (seed, r) in enumerate(a["seeds"].items()):
                cur = r.get("curve") or {}
                lab = a["label"] if i == 0 else None
                axes[0].plot(cur.get("epoch", []), cur.get("map50", []), marker="o", ms=2, color=COLORS.get(arm), label=lab)
                axes[1].plot(cur.get("steps", []), cur.get("map50", [])[: len(cur.get("steps", []))], marker="o", ms=2,
                             color=COLORS.get(arm), label=lab)
        axes[0].set_xlabel("epoch")
        axes[1].set_xlabel("optimizer steps")
        for ax in axes:
            ax.set_ylabel("mAP50 (real eval)")
        axes[0].legend(fontsize=8)
        out["curves"] = _png(fig)
    return out


def render_report(c: Comparison) -> str:
    return _env.get_template("report.html.j2").render(c=c, plots=_plots(c))


def render_index(runs: list[Comparison]) -> str:
    """Every finished run of this version, newest first; the version's own report
    (immutable once published) links here."""
    runs = sorted(runs, key=lambda c: str(c.get("created_at", "")), reverse=True)
    return _env.get_template("index.html.j2").render(runs=runs)
