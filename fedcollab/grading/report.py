"""The scorecard on disk: JSON (the contract in DESIGN.md), Markdown and a
self-contained HTML page whose plots are embedded PNGs (no external URL)."""
from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from fedcollab.io import atomic_write_bytes, atomic_write_json

__all__ = ["Scorecard", "write_scorecard", "render_markdown", "render_html", "plot_pngs"]

AXES = ("utility", "membership", "inversion", "confidentiality", "privacy_budget", "backdoor",
        "byzantine", "cost")


@dataclass(frozen=True)
class Scorecard:
    """One grading run. ``to_json`` is the scorecard.json contract (DESIGN.md)."""

    spec: str
    priority: str
    budget: str
    mixes: tuple[Mapping[str, Any], ...]
    pareto_front: tuple[str, ...]
    recommendation: Mapping[str, str]
    skipped: Mapping[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    per_attack_seconds: Mapping[str, float] = field(default_factory=dict)
    curves: Mapping[str, Any] = field(default_factory=dict)  # plots only, not in the JSON
    out_dir: str = ""
    settings: Mapping[str, Any] = field(default_factory=dict)  # budget, window, seeds, confidence
    frontier: tuple[Mapping[str, Any], ...] = ()  # the sweep's points (--budget standard/full)

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "priority": self.priority, "budget": self.budget,
                "mixes": [dict(m) for m in self.mixes], "pareto_front": list(self.pareto_front),
                "recommendation": dict(self.recommendation), "skipped": dict(self.skipped),
                "seconds": self.seconds, "per_attack_seconds": dict(self.per_attack_seconds),
                "settings": dict(self.settings), "frontier": [dict(p) for p in self.frontier]}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isinf(value) or abs(value) >= 1e299:
            return "∞"
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def _epsilon(value: Any) -> str:
    return "∞" if value is None else _fmt(value, 2)


def _cell(grade: str, text: str) -> str:
    """A grade beside the figure it grades (never a bare placeholder)."""
    return f"{grade} · {text}"


def _inversion_text(inv: Mapping[str, Any]) -> str:
    if inv.get("psnr_db") is None:
        return str(inv.get("note") or "no dense update visible to the server")
    gain = inv.get("gain_db")
    if gain is None and inv.get("baseline_psnr_db") is not None:
        gain = inv["psnr_db"] - inv["baseline_psnr_db"]
    exact = "exact recovery, " if inv.get("exact") else ""
    return (f"{exact}gain {_fmt(gain, 1)} dB over the mean image "
            f"(PSNR {_fmt(inv.get('psnr_db'), 1)} dB) on the {inv.get('target')}")


def _malicious_text(row: Mapping[str, Any]) -> str:
    """The imprint / model-inconsistency row against one party (malicious_server.py)."""
    if row.get("psnr_db") is None:
        return str(row.get("note") or "nothing recovered")
    return (f"{row.get('recovered')} of {row.get('examples')} examples within 10% "
            f"({row.get('exact_count')} exact) from the {row.get('target')}")


def _differencing_text(diff: Mapping[str, Any]) -> str:
    if diff.get("relative_error") is None:
        return str(diff.get("note") or "no vendor group")
    text = ("exact" if diff.get("exact") else f"rel. error {_fmt(diff.get('relative_error'))}")
    if diff.get("cosine") is not None:
        text += f", cosine {_fmt(diff.get('cosine'))}"
        if diff.get("baseline_cosine") is not None:
            text += f" (whole sum {_fmt(diff.get('baseline_cosine'))})"
    cross = (diff.get("across_rounds") or {}).get("vendor") or {}
    if cross.get("isolated"):
        text += (f"; across rounds {cross['isolated']} site(s) isolated, cosine "
                 f"{_fmt(cross.get('cosine'))}")
    return text


def _rows(card: Scorecard) -> list[list[str]]:
    rows = []
    for m in card.mixes:
        a, g = m["attacks"], m["grades"]
        own = m.get("defence", "fedavg")
        eps = m["privacy"].get("epsilon")
        lying = a["lying_server"].get("recovered")
        bd = a["backdoor"].get(own, {}).get("success_rate")
        byz = a["byzantine"].get(own, {}).get("accuracy")
        worst = a["byzantine"].get(own, {}).get("worst_attack")
        rows.append([
            m["name"] + (" ★" if m["name"] == card.recommendation.get("mix") else ""),
            _cell(g["utility"], f"accuracy {_fmt(m['utility'].get('accuracy'))}"),
            _membership_cell(a["membership"], g["membership"]),
            _cell(g["inversion"], _inversion_text(a["inversion"])),
            _cell(g["confidentiality"], _differencing_text(a["differencing"])),
            _cell(g.get("lying_server", "N/A"),
                  "no secure group (takes confidentiality's grade)" if lying is None else
                  "reads an input" if lying else "refused"),
            _cell(g["privacy_budget"], "no DP: epsilon unbounded" if eps is None else
                  f"epsilon {_epsilon(eps)}"),
            _cell(g["backdoor"], f"success {_fmt(bd)} under {own}" if bd is not None else
                  f"no row for {own}"),
            _cell(g["byzantine"], f"accuracy {_fmt(byz)} under {own}"
                  + (f" (worst attack: {worst})" if worst else "") if byz is not None else
                  f"no row for {own}"),
            _cell(g["cost"], f"{_fmt(m['cost'].get('seconds_per_round'))} s/round, "
                  f"{m['cost'].get('bytes_up_per_participant_round')} B up"),
            "yes" if m.get("replay_verified") is True else
            f"no: {(m.get('replay') or {}).get('note', 'not checked')}",
        ])
    return rows


FRONTIER_HEADER = ["swept mix", "target epsilon", "epsilon", "noise multiplier",
                   "community accuracy", "vendor accuracy (release; own model)",
                   "membership TPR@1%FPR (upper bound)", "Pareto"]


def _frontier_rows(card: Scorecard) -> list[list[str]]:
    rows = []
    for p in card.frontier:
        acc, att = p.get("accuracy", {}), p.get("attack_success", {})
        vendor = _fmt(acc.get("vendor"))
        if acc.get("vendor_own_model") is not None:
            vendor += f"; {_fmt(acc['vendor_own_model'])}"
        rows.append([str(p["mix"]), _fmt(p.get("target_epsilon"), 2),
                     _epsilon(p.get("epsilon")), _fmt(p.get("noise_multiplier")),
                     _fmt(acc.get("community")), vendor,
                     f"{_fmt(att.get('membership_tpr_at_1pct_fpr'))} "
                     f"({_fmt(att.get('membership_tpr_at_1pct_fpr_upper'))})",
                     "yes" if p.get("pareto") else "no"])
    return rows


PARTY_HEADER = ["mix", "party", "accuracy", "membership (release)", "inversion",
                "inversion (malicious model)", "differencing (server)",
                "differencing (server + community)"]


def _party_rows(card: Scorecard) -> list[list[str]]:
    rows = []
    for m in card.mixes:
        for party, row in (m.get("parties") or {}).items():
            g = row.get("grades", {})
            att = row.get("attacks", {})
            u = row.get("utility", {})
            acc = f"mean {_fmt(u.get('accuracy'))}, worst {_fmt(u.get('worst_participant'))}"
            if u.get("vendor_accuracy") is not None:
                acc += (f"; own model {_fmt(u.get('vendor_accuracy'))} vs release "
                        f"{_fmt(u.get('public_accuracy'))} on its data")
            diff = att.get("differencing", {})
            colluding = (diff.get("observers") or {}).get("server_with_community")
            rows.append([
                m["name"], f"{party} ({row.get('participants')})", acc,
                _membership_cell(att.get("membership", {}), g.get("membership", "N/A")),
                _cell(g.get("inversion", "N/A"), _inversion_text(att.get("inversion", {}))),
                _cell(g.get("inversion:malicious_model", "N/A"),
                      _malicious_text(att["malicious_model"]))
                if isinstance(att.get("malicious_model"), Mapping) else "not run",
                _cell(g.get("differencing", "N/A"), _differencing_text(diff)
                      if diff.get("relative_error") is not None or "note" not in diff
                      else str(diff["note"])),
                _cell(g.get("differencing:server_with_community", "N/A"),
                      _differencing_text(colluding)) if colluding else "not applicable",
            ])
    return rows


OBSERVER_HEADER = ["mix", "observer", "accountant epsilon",
                   "empirical epsilon (95% CI; canary clients in the run)", "canaries",
                   "audit time"]


def _observer_rows(card: Scorecard) -> list[list[str]]:
    """Per mix and observer: the accountant's epsilon beside the canary audit's."""
    rows = []
    for m in card.mixes:
        privacy = m.get("privacy") or {}
        by = privacy.get("by_observer") or {}
        audit = privacy.get("empirical_epsilon") or {}
        audited = audit.get("by_observer") or {}
        seconds = audit.get("seconds")
        run = audit.get("run_seconds")
        when = "–" if seconds is None else (
            f"{_fmt(float(seconds), 1)} s" + (f" (run {_fmt(float(run), 1)} s)"
                                              if run is not None else ""))
        who = (f"{audit.get('canaries')} in ({audit.get('sharing')}) / "
               f"{audit.get('held_out')} held out" if audit.get("canaries") else "–")
        for observer in ("server", "outputs_reader", "release_reader"):
            got = audited.get(observer)
            if got is None and observer != "server":
                cell = str(audit.get("note") or "not audited") if observer == \
                    "release_reader" else "not audited"
            elif got is None:
                cell = "not audited (sees single updates)"
            else:
                ci = got.get("ci") or [None, None]
                cell = (f"{_epsilon(got.get('value'))} [{_epsilon(ci[0])}, {_epsilon(ci[1])}]"
                        f", mu {_fmt(got.get('mu'), 2)}")
            rows.append([m["name"], observer.replace("_", " "), _epsilon(by.get(observer)),
                         cell, who, when])
    return rows


REPEAT_HEADER = ["mix", "runs", "accuracy", "membership AUC", "membership TPR@1%FPR",
                 "empirical epsilon"]


def _repeat_rows(card: Scorecard) -> list[list[str]]:
    """DP mixes run several times (fresh noise): mean ± sample std [min, max] per figure."""
    rows = []
    for m in card.mixes:
        rep = m.get("repeats")
        if not isinstance(rep, Mapping):
            continue
        cells = []
        for key in REPEAT_HEADER[2:]:
            k = {"accuracy": "accuracy", "membership AUC": "membership_auc",
                 "membership TPR@1%FPR": "membership_tpr_at_1pct_fpr",
                 "empirical epsilon": "empirical_epsilon"}[key]
            f = rep.get(k) or {}
            cells.append("n/a" if f.get("mean") is None else
                         f"{_fmt(f['mean'])} ± {_fmt(f['std'])} "
                         f"[{_fmt(f['min'])}, {_fmt(f['max'])}]")
        rows.append([m["name"], str(rep.get("runs")), *cells])
    return rows


def _ci(row: Mapping[str, Any], key: str) -> str:
    ci = row.get(key + "_ci")
    if not isinstance(ci, (list, tuple)) or len(ci) != 2:
        return _fmt(row.get(key))
    return f"{_fmt(row.get(key))} [{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _membership_cell(row: Mapping[str, Any], grade: str) -> str:
    """AUC and TPR at 1% FPR, each with its 95% interval, and the grade taken on them."""
    if row.get("auc") is None:
        return _cell(grade, str(row.get("note", "not measured")))
    return _cell(grade, f"AUC {_ci(row, 'auc')}, TPR@1%FPR {_ci(row, 'tpr_at_1pct_fpr')} "
                 f"({row.get('n_members', '?')} members / "
                 f"{row.get('n_nonmembers', '?')} non-members)")


HEADER = ["mix", "utility", "membership (95% CI; graded on the bound)",
          "inversion (graded on the gain)", "vendor differencing", "lying server", "epsilon",
          "backdoor", "Byzantine", "cost", "replay verified"]


def _sample(card: Scorecard) -> str:
    """The membership sample's sentence (counts, and why fewer than 1000 where so)."""
    sample = card.settings.get("membership_sample")
    return str(sample.get("note", "")) if isinstance(sample, Mapping) else ""


def render_markdown(card: Scorecard) -> str:
    lines = [f"# Scorecard: {card.spec}", "",
             f"Priority: **{card.priority}**, budget: {card.budget}, "
             f"{card.seconds:.0f} s. Grades A–F per docs/grading.md; ★ recommended.", "",
             *([f"Membership attacked on {_sample(card)}.", ""] if _sample(card) else []),
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(card)]
    lines += ["", "## Per party", "", "| " + " | ".join(PARTY_HEADER) + " |",
              "|" + "---|" * len(PARTY_HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in _party_rows(card)]
    lines += ["", "## Epsilon per observer: accountant and canary audit", "",
              "| " + " | ".join(OBSERVER_HEADER) + " |", "|" + "---|" * len(OBSERVER_HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in _observer_rows(card)]
    if card.frontier:
        lines += ["", "## Privacy-utility frontier", "",
                  "| " + " | ".join(FRONTIER_HEADER) + " |", "|" + "---|" * len(FRONTIER_HEADER)]
        lines += ["| " + " | ".join(r) + " |" for r in _frontier_rows(card)]
    lines += ["", f"**Pareto front (privacy, utility):** {', '.join(card.pareto_front)}", "",
              "## Recommendation", "", card.recommendation.get("text", ""), ""]
    if _repeat_rows(card):
        lines += ["## DP mixes, repeated (only the noise differs)", "",
                  "| " + " | ".join(REPEAT_HEADER) + " |", "|" + "---|" * len(REPEAT_HEADER)]
        lines += ["| " + " | ".join(r) + " |" for r in _repeat_rows(card)] + [""]
    if card.skipped:
        lines += ["## Mixes not run", ""] + [f"* {k}: {v}" for k, v in card.skipped.items()]
    lines += ["", "## Backdoor and Byzantine figures per rule", ""]
    if card.mixes:
        bd = card.mixes[0]["attacks"]["backdoor"]
        by = card.mixes[0]["attacks"]["byzantine"]
        lines += ["| rule | backdoor success | main accuracy | Byzantine accuracy |",
                  "|---|---|---|---|"]
        for rule, row in bd.items():
            if not isinstance(row, Mapping):
                continue
            lines.append(f"| {rule} | {_fmt(row.get('success_rate'))} | "
                         f"{_fmt(row.get('main_accuracy'))} | "
                         f"{_fmt(by.get(rule, {}).get('accuracy'))} |")
    return "\n".join(lines) + "\n"


def plot_pngs(card: Scorecard) -> dict[str, bytes]:
    """Privacy-utility scatter (Pareto front marked), accuracy per round, membership ROC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedcollab.grading.grades import privacy_score

    out: dict[str, bytes] = {}

    def save(fig: Any, name: str) -> None:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        out[name] = buf.getvalue()

    fig, ax = plt.subplots(figsize=(6, 4.2))
    front = []
    for m in card.mixes:
        p, u = privacy_score(m["grades"]), m["utility"].get("accuracy")
        if p is None or u is None:
            continue
        on = m["name"] in card.pareto_front
        ax.scatter([p], [u], s=90 if on else 40, marker="*" if on else "o",
                   color="tab:red" if on else "tab:blue", zorder=3)
        ax.annotate(m["name"], (p, u), textcoords="offset points", xytext=(5, 4), fontsize=8)
        if on:
            front.append((p, u))
    if len(front) > 1:
        xs, ys = zip(*sorted(front))
        ax.plot(xs, ys, color="tab:red", linestyle="--", label="Pareto front")
        ax.legend(loc="lower left")
    ax.set_xlabel("privacy (mean grade points, A=4 … F=0)")
    ax.set_ylabel("test accuracy")
    ax.set_title("privacy vs utility")
    ax.grid(alpha=0.3)
    save(fig, "privacy_utility")

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, accs in card.curves.get("accuracy", {}).items():
        ax.plot(range(1, len(accs) + 1), accs, marker=".", label=name)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy per round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, "accuracy")

    fig, ax = plt.subplots(figsize=(6, 4.2))
    membership = {m["name"]: m["attacks"].get("membership", {}) for m in card.mixes}
    floor, y_floor = 1.0, 1.0
    for name, (fpr, tpr) in card.curves.get("roc", {}).items():
        # log axes cannot show FPR or TPR = 0: those points are left out, not moved
        pts = [(f, t) for f, t in zip(fpr, tpr) if f > 0 and t > 0]
        if not pts:
            continue
        line, = ax.plot(*zip(*pts), label=name)
        row = membership.get(name, {})
        ci, n_neg = row.get("tpr_at_1pct_fpr_ci"), row.get("n_nonmembers") or 0
        if n_neg:
            floor = min(floor, 1.0 / n_neg)
        n_pos = row.get("n_members") or 0
        low = 0.5 / n_pos if n_pos else 1e-4  # below one member: drawn at the axis floor
        y_floor = min(y_floor, low)
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and ci[1] > 0:
            mid = max(row.get("tpr_at_1pct_fpr") or 0.0, low)
            ax.errorbar([0.01], [mid], yerr=[[mid - max(ci[0], low)], [max(ci[1] - mid, 0.0)]],
                        color=line.get_color(), capsize=3, fmt="o", markersize=3)
    ax.plot([floor, 1], [floor, 1], color="grey", linestyle=":", label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(left=floor / 2)
    ax.set_ylim(bottom=min(y_floor, floor) / 2)
    ax.set_xlabel("false positive rate (resolved down to 1 / non-members)")
    ax.set_ylabel("true positive rate")
    ax.set_title("membership ROC (log-log, graded attack; bars: 95% CI at 1% FPR)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, "membership_roc")
    if card.frontier:
        save(_frontier_figure(plt, card), "privacy_utility_frontier")
    return out


def _frontier_figure(plt: Any, card: Scorecard) -> Any:
    """Accuracy per party against the accountant's epsilon, and against the measured
    membership TPR at 1% FPR (its upper bound), per swept mix; Pareto points ringed, the
    recommended mix's figures as a dashed line."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"community": "-", "vendor": "--", "vendor_own_model": ":"}
    for base in sorted({p["base"] for p in card.frontier}):
        pts = sorted((p for p in card.frontier if p["base"] == base and p.get("epsilon")),
                     key=lambda p: p["epsilon"])
        for party, style in styles.items():
            xs = [p["epsilon"] for p in pts if p["accuracy"].get(party) is not None]
            ys = [p["accuracy"][party] for p in pts if p["accuracy"].get(party) is not None]
            if not xs:
                continue
            line, = left.plot(xs, ys, style, marker="o", label=f"{base}: {party}")
            tpr = [p["attack_success"].get("membership_tpr_at_1pct_fpr_upper") for p in pts
                   if p["accuracy"].get(party) is not None]
            right.plot([t if t is not None else float("nan") for t in tpr], ys, style,
                       marker="o", color=line.get_color())
            for p in pts:
                if p.get("pareto") and p["accuracy"].get(party) is not None:
                    left.scatter([p["epsilon"]], [p["accuracy"][party]], s=140,
                                 facecolors="none", edgecolors="tab:red", zorder=4)
    best = next((m for m in card.mixes if m["name"] == card.recommendation.get("mix")), None)
    if best is not None and best["utility"].get("accuracy") is not None:
        for ax in (left, right):
            ax.axhline(best["utility"]["accuracy"], color="grey", linestyle="--", linewidth=1,
                       label=f"recommended: {best['name']}" if ax is left else None)
    left.set_xscale("log")
    left.set_xlabel("epsilon (accountant, delta on the card)")
    left.set_ylabel("accuracy per party")
    left.set_title("privacy-utility frontier (red rings: Pareto)", fontsize=9)
    right.set_xlabel("membership TPR at 1% FPR (95% upper bound)")
    right.set_title("accuracy against measured attack success", fontsize=9)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    return fig


def render_html(card: Scorecard, pngs: Mapping[str, bytes]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>"
                   for r in _rows(card))
    imgs = "".join(
        f'<figure><img alt="{esc(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(data).decode()}"><figcaption>{esc(name.replace("_", " "))}'
        f"</figcaption></figure>" for name, data in pngs.items())
    skipped = "".join(f"<li>{esc(k)}: {esc(v)}</li>" for k, v in card.skipped.items())
    frontier = ""
    if card.frontier:
        frontier = ("<h2>Privacy-utility frontier</h2><table id=\"frontier\"><thead><tr>"
                    + "".join(f"<th>{esc(h)}</th>" for h in FRONTIER_HEADER)
                    + "</tr></thead><tbody>"
                    + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>"
                              for r in _frontier_rows(card)) + "</tbody></table>")
    repeats = ""
    if _repeat_rows(card):
        repeats = ("<h2>DP mixes, repeated (only the noise differs)</h2><table id=\"repeats\">"
                   "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in REPEAT_HEADER)
                   + "</tr></thead><tbody>"
                   + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>"
                             for r in _repeat_rows(card)) + "</tbody></table>")
    observers = ("<h2>Epsilon per observer: accountant and canary audit</h2>"
                 "<table id=\"observers\"><thead><tr>"
                 + "".join(f"<th>{esc(h)}</th>" for h in OBSERVER_HEADER)
                 + "</tr></thead><tbody>"
                 + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>"
                           for r in _observer_rows(card)) + "</tbody></table>")
    sample = (f'<p id="membership-sample">Membership attacked on {esc(_sample(card))}.</p>'
              if _sample(card) else "")
    party_head = "".join(f"<th>{esc(h)}</th>" for h in PARTY_HEADER)
    party_body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>"
                         for r in _party_rows(card))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Scorecard: {esc(card.spec)}</title>
<style>
body{{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}}
table{{border-collapse:collapse;font-size:14px}}
th,td{{border:1px solid #bbb;padding:4px 8px;text-align:left}}
th{{background:#eee}}figure{{display:inline-block;margin:1em}}img{{max-width:540px}}
.rec{{background:#f4f8ff;border-left:4px solid #36c;padding:0.5em 1em}}
</style></head><body>
<h1>Scorecard: {esc(card.spec)}</h1>
<p>Priority <b>{esc(card.priority)}</b>, budget {esc(card.budget)}, {card.seconds:.0f} s.
Grades A–F per docs/grading.md; ★ recommended.</p>
{sample}
<table id="mixes"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
<h2>Per party</h2>
<table id="parties"><thead><tr>{party_head}</tr></thead><tbody>{party_body}</tbody></table>
{observers}
{frontier}
{repeats}
<p><b>Pareto front (privacy, utility):</b> {esc(", ".join(card.pareto_front))}</p>
<div class="rec"><h2>Recommendation: {esc(card.recommendation.get("mix", ""))}</h2>
<p>{esc(card.recommendation.get("text", ""))}</p></div>
{"<h2>Mixes not run</h2><ul>" + skipped + "</ul>" if skipped else ""}
<h2>Plots</h2>{imgs}
</body></html>
"""


def write_scorecard(card: Scorecard, out: Path) -> dict[str, Path]:
    """Write scorecard.json, scorecard.md and scorecard.html atomically."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "scorecard.json", "md": out / "scorecard.md",
             "html": out / "scorecard.html"}
    atomic_write_json(paths["json"], finite(json.loads(json.dumps(card.to_json(), default=_plain))))
    atomic_write_bytes(paths["md"], render_markdown(card).encode())
    atomic_write_bytes(paths["html"], render_html(card, plot_pngs(card)).encode())
    return paths


def finite(value: Any) -> Any:
    """The same data with NaN and infinities as null (scorecard.json is strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def mix_names(card: Scorecard) -> Sequence[str]:
    return [str(m["name"]) for m in card.mixes]
