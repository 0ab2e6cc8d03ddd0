"""Leaderboard: methods as rows, (dataset, attack, eps) as columns, mean ± std AUROC over classes and seeds.

Built only from the store. One configuration per cell (``cells``): rows that differ in any attack or method
parameter are never averaged; a cell shows its latest configuration and notes older ones (``[+1 older]``;
``configurations=True`` lists them side by side), failed rows and fall-backs. Rendered with rich in the
terminal; written as CSV (long, numeric), Markdown and LaTeX (wide, "mean ± std"). A cell whose sanity checks
failed carries their flags (``!B``: Square beat the white-box attacks, see ``FLAG_LEGEND``; ``!?``: the
model's checks did not run; ``…``: pending, a run in progress holds the model or may still check it). For
each norm and eps attacked by several attacks a ``worst-<norm>`` column holds the AUROC of the per-image
worst case over every candidate (a derived row the runner stores, see ``benchmark.protocol.worst_case``), with
the candidate that won most images and the flags of every attack it combines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from robust_ad_bench.benchmark.grid.jobs import StoredConfig
from robust_ad_bench.benchmark.protocol.checks import flag_of
from robust_ad_bench.benchmark.results.cells import (
    WORST_PREFIX,
    cell_notes,
    is_worst,
    latest,
    older_rows,
    worst_per_model,
)
from robust_ad_bench.core.registry import METHODS

GROUP = ["method", "dataset", "attack", "norm", "eps"]
METRICS = {"auroc": "Image AUROC", "aupr": "AUPR", "fpr95": "FPR at 95% TPR", "pixel_auroc": "Pixel AUROC",
           "aupro": "AUPRO (30 % FPR)"}
FLAG_LEGEND = {
    "B": "Square beat the per-image worst white-box attack on the masking sample beyond noise: gradient masking "
         "(or white-box attacks that miss some images); Square then ran on every image and joined the worst case",
    "T": "adversarial images made for another method (transferred, black-box) lowered this model's per-image worst "
         "case beyond noise: gradient masking suspected; the transferred images joined the worst case",
    "s": "more attack steps changed the AUROC beyond noise: not converged (or inconsistent)",
    "L": "a very large eps did not break the detector",
    "m": "AUROC rose as eps grew beyond noise",
    "0": "eps 0 changed the scores of the clean images",
    "!": "a check raised (its message: robust-ad-bench audit)",
    "?": "the model's sanity checks did not run (checks off, or one of its jobs failed)",
}
PENDING = "…"  # the model's checks are not stored yet and a live run may still store them
PENDING_LEGEND = ("…: pending: the model's sanity checks are not stored yet and a run in progress holds the model "
                  "or may still check it")
__all__ = ["is_worst", "worst_per_model", "wide", "summarize", "render", "write"]  # the first two: cells'
CELL_NOTES = ("[+N older]: the store holds N older configurations of the cell (other attack or method parameters, "
              "versions): never averaged with the latest one shown (leaderboard --configurations lists them); "
              "[N failed]: rows of the cell's configuration failed; [N fallback]: worst-case rows report a single "
              "candidate instead (robust-ad-bench audit says which).")


def eps_label(eps: float, norm: str) -> str:
    """``8/255`` for Linf budgets on the 1/255 grid, else the plain number."""
    if eps == 0:
        return "0"
    k = eps * 255
    if norm == "linf" and abs(k - round(k)) < 1e-6 and round(k) > 0:
        return f"{round(k)}/255"
    return f"{eps:g}"


def column_label(dataset: str, attack: str, norm: str, eps: float) -> str:
    return f"{dataset} {attack}" if norm == "none" else f"{dataset} {attack} {eps_label(eps, norm)}"


def check_flags(checks: pd.DataFrame | None, results: pd.DataFrame | None = None,
                live: set[str] | None = None) -> dict[tuple[str, str, str], str]:
    """(method, dataset, attack) -> the flags of every check that failed for it, e.g. ``"Bs"``; a check of
    the whole model (attack ``*``) flags all its attacks. With ``results``, the attacked cells of models
    that have no check rows at all get ``?``, or ``…`` (pending) while a live run may still check them:
    ``live`` (training keys live runs hold) names the model, or holds some model and none of its jobs failed."""
    if checks is None:
        return {}
    found: dict[tuple[str, str, str], set[str]] = {}
    failed = checks[~checks["passed"].astype(bool)] if not checks.empty else checks
    for key, group in failed.groupby(["method", "dataset", "attack"]) if not failed.empty else []:
        found.setdefault(key, set()).update(flag_of(n) for n in group["name"])
    if results is not None and not results.empty:
        attacked = results[(results["status"] == "ok") & (results["norm"] != "none")]
        checked = set(checks["train_key"]) if not checks.empty else set()
        failed_models = set(results.loc[results["status"] == "failed", "train_key"])
        for method, dataset, attack, train_key in attacked[["method", "dataset", "attack", "train_key"]].values:
            if train_key not in checked:
                pending = bool(live) and (train_key in live or train_key not in failed_models)  # type: ignore[operator]
                found.setdefault((method, dataset, attack), set()).add(PENDING if pending else "?")
            found.setdefault((method, dataset, attack), set()).update(found.get((method, dataset, "*"), set()))
    return {key: "".join(sorted(v)) for key, v in found.items() if v and key[2] != "*"}


def flag_text(flags: str) -> str:
    """``!Bs`` for failed checks, ``…`` for pending ones (both: ``!B …``), "" for none."""
    failed = flags.replace(PENDING, "")
    return " ".join(p for p in (f"!{failed}" if failed else "", PENDING if PENDING in flags else "") if p)


def top_winner(detail: str | None) -> str:
    """The attack that won most images of a worst-case row (its ``attack_detail``: ``won=pgd:61%+...``)."""
    text = str(detail or "")
    return text.split("won=", 1)[1].split(":", 1)[0] if "won=" in text else ""


def _worst_notes(worst: pd.DataFrame, flags: dict[tuple[str, str, str], str]) -> dict[tuple, str]:
    """Per worst-case cell: the attack that won most images most often, and the flags of every attack it
    combines (and its own ``?``)."""
    notes = {}
    for key, rows in worst.groupby(GROUP):
        method, dataset, attack = key[0], key[1], key[2]
        combined = {a for c in rows["config"] for a in StoredConfig.parse(c).payload.get("attacks", [])}
        found = "".join(sorted({f for a in combined | {attack} for f in flags.get((method, dataset, a), "")}))
        winners = rows["attack_detail"].map(top_winner)
        notes[key] = " ".join(p for p in (winners.value_counts().index[0] if winners.any() else "",
                                          flag_text(found)) if p)
    return notes


def summarize(results: pd.DataFrame, metric: str = "auroc") -> pd.DataFrame:
    """Long table: one row per method × dataset × attack × eps with mean, std and count of ``metric`` over
    the classes and seeds of the cell's latest configuration."""
    shown = latest(results)[0]
    ok = shown[shown["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame(columns=[*GROUP, "mean", "std", "n"])
    table = ok.groupby(GROUP, sort=False)[metric].agg(["mean", "std", "count"]).reset_index()
    table = table.rename(columns={"count": "n"})
    if metric == "auroc" and {"auroc_ci_low", "auroc_ci_high"} <= set(ok.columns):
        # a cell of one run (one class, one seed) has no spread: its bootstrap 95 % CI over the test images says
        # how far the figure can be trusted (the small test sets of the default grid: wide)
        ci = ok.groupby(GROUP, sort=False)[["auroc_ci_low", "auroc_ci_high"]].first().reset_index()
        table = table.merge(ci.rename(columns={"auroc_ci_low": "ci_low", "auroc_ci_high": "ci_high"}), on=GROUP,
                            how="left")
    table = table[table["n"] > 0]  # e.g. pixel AUROC of datasets without masks
    table["std"] = table["std"].fillna(0.0)  # a single run has no spread
    # clean first, then attacks by name and eps, within each dataset
    table["_order"] = (table["norm"] != "none").astype(int)
    return table.sort_values(["dataset", "_order", "attack", "eps", "method"]).drop(columns="_order")


def _cell(mean: float, std: float, n: int, note: str, ci: tuple[float, float] | None = None) -> str:
    # one run has no spread: show the bare number (with its bootstrap CI when known) rather than a fake ± 0
    text = f"{mean:.3f} ± {std:.3f}" if n > 1 else f"{mean:.3f}"
    if n == 1 and ci is not None and all(pd.notna(c) and np.isfinite(float(c)) for c in ci):
        text += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
    return f"{text} {note}" if note else text


def wide(results: pd.DataFrame, metric: str = "auroc", checks: pd.DataFrame | None = None,
         reported: dict[tuple, str] | None = None, configurations: bool = False,
         live: set[str] | None = None) -> pd.DataFrame:
    """Methods × columns of "mean ± std" strings with check flags, per-image worst-case columns included
    (their images are the worst per image for any ranking metric); extra columns flag training and failed
    jobs. ``reported`` ((method, dataset, attack, norm, eps) → a paper's figure, from
    ``reported.cell_reported``) adds a "<column> reported" column beside each column that has one;
    ``configurations`` adds, right of a cell's column, one column per older configuration of it. ``live``:
    the training keys live runs hold (``claims.live_claims``): their unchecked cells show pending (``…``)."""
    long = summarize(results, metric)
    if long.empty:
        return pd.DataFrame()
    shown = latest(results)[0]
    flags = check_flags(checks, shown, live)
    worst_notes = _worst_notes(shown[is_worst(shown["attack"]) & (shown["status"] == "ok")], flags)
    marks = cell_notes(results)
    notes = [" ".join(p for p in ((worst_notes.get(tuple(r), "") if str(r[2]).startswith(WORST_PREFIX)
                                   else flag_text(flags.get(tuple(r[:3]), ""))),
                                  marks.get(tuple(r), "")) if p) for r in long[GROUP].values]
    cis = (list(zip(long["ci_low"], long["ci_high"])) if "ci_low" in long else [None] * len(long))
    long = long.assign(column=[column_label(*r) for r in long[["dataset", "attack", "norm", "eps"]].values],
                       cell=[_cell(m, s, n, note, ci) for (m, s, n), note, ci in
                             zip(long[["mean", "std", "n"]].values, notes, cis)])
    table = long.pivot(index="method", columns="column", values="cell")
    table = table[list(dict.fromkeys(long["column"]))].fillna("–")
    if configurations:
        table = _with_older(table, results, metric)
    if reported:
        table = _with_reported(table, long, reported)
    at = results.groupby("method")["adversarially_trained"].any()
    failed = results[results["status"] == "failed"].groupby("method").size()
    table.insert(0, "AT", ["yes" if at.get(m, False) else "" for m in table.index])
    seen = saw_anomalies(results)
    if seen.any():  # only grids run with the few-anomaly protocol get the column
        datasets = set(results["dataset"])
        table.insert(1, "SA", [_sa_cell(seen, m, datasets) for m in table.index])
    table["failed"] = [int(failed.get(m, 0)) for m in table.index]
    table.index.name = "method"
    return table


def _with_older(table: pd.DataFrame, results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """A "<column> [older: what differs]" column right of each column with older configurations."""
    extra: dict[str, dict[str, pd.Series]] = {}
    for key, differs, rows in older_rows(results):
        column = column_label(key[1], key[2], key[3], key[4])
        values = rows[metric].dropna()
        if values.empty:
            continue
        label = f"{column} [older: {differs}]"
        cell = _cell(values.mean(), values.std() if len(values) > 1 else 0.0, len(values), "")
        extra.setdefault(column, {}).setdefault(label, pd.Series("–", index=table.index))[key[0]] = cell
    columns = {}
    for column in table.columns:
        columns[column] = table[column]
        columns.update(extra.get(column, {}))
    return pd.DataFrame(columns, index=table.index)


def _with_reported(table: pd.DataFrame, long: pd.DataFrame, reported: dict[tuple, str]) -> pd.DataFrame:
    """A "<column> reported" column right of each column where some method has a reported figure."""
    texts: dict[str, dict[str, str]] = {}
    for row in long.itertuples(index=False):
        text = reported.get((row.method, row.dataset, row.attack, row.norm, round(float(row.eps), 10)))
        if text is not None:
            texts.setdefault(row.column, {})[row.method] = text
    columns = {}
    for column in table.columns:
        columns[column] = table[column]
        if column in texts:
            columns[f"{column} reported"] = pd.Series([texts[column].get(m, "–") for m in table.index], table.index)
    return pd.DataFrame(columns, index=table.index)


def saw_anomalies(results: pd.DataFrame) -> pd.Series:
    """Per (method, dataset): whether it trained on labelled anomalies (the ``anomalies_seen`` entry of its
    config)."""
    if "config" not in results or results.empty:
        return pd.Series(dtype=bool)
    seen = results["config"].map(lambda c: StoredConfig.parse(c).saw_anomalies)
    return seen.groupby([results["method"], results["dataset"]]).any()


def _sa_cell(seen: pd.Series, method: str, datasets: set[str]) -> str:
    """"yes" when the method saw anomalies on every dataset of the results, the datasets where it did when
    only on some (the few-anomaly protocol can be per dataset), else ""."""
    if method not in seen.index.get_level_values(0):
        return ""
    on = {str(d) for d, flag in seen.loc[method].items() if flag}
    return "yes" if on and on >= {str(d) for d in datasets} else ",".join(sorted(on))


def sa_for(cell: str, dataset: str) -> str:
    """The SA flag of one dataset's table."""
    return "yes" if cell == "yes" or dataset in cell.split(",") else ""


def render(table: pd.DataFrame, console: Console, metric: str = "auroc") -> None:
    """One rich table per dataset (columns are named "<dataset> <attack> [eps]")."""
    if table.empty:
        console.print("[yellow]no finished jobs to show[/yellow]")
        return
    flags = [c for c in ("AT", "SA") if c in table.columns]
    metric_cols = [c for c in table.columns if c not in (*flags, "failed")]
    for dataset in dict.fromkeys(c.split(" ", 1)[0] for c in metric_cols):
        cols = [c for c in metric_cols if c.split(" ", 1)[0] == dataset]
        out = Table(title=f"{METRICS[metric]} on {dataset} (mean ± std over classes and seeds)")
        out.add_column("method", style="bold", no_wrap=True)
        for flag in flags:
            out.add_column(flag)
        for col in cols:
            out.add_column(escape(col.split(" ", 1)[1]), justify="right", no_wrap=True)
        out.add_column("failed", justify="right")
        for method, row in table.iterrows():
            failed = f"[red]{row['failed']}[/red]" if row["failed"] else ""
            marks = [sa_for(row[f], dataset) if f == "SA" else row[f] for f in flags]
            out.add_row(str(method), *marks, *(escape(str(row[c]).replace(" ± ", "±")) for c in cols), failed)
        console.print(out)
    seen = "SA: saw a few labelled test anomalies in training (held out of every method's test set). " \
        if "SA" in flags else ""
    console.print(f"AT: adversarially trained. {seen}Robust columns: the attack at that eps, both classes attacked; "
                  "worst-<norm>: per model, the AUROC of the per-image worst score over every candidate of that "
                  "norm at that eps or below, the checks' included (highest score of each normal, lowest of each "
                  "anomaly), and the candidate that won most images.")
    for line in flag_legend(table) + below_chance_notes(table) + note_legend(table):
        console.print(escape(line))


def note_legend(table: pd.DataFrame) -> list[str]:
    """The meaning of the cells' bracketed notes, when some cell has one."""
    cells = table.drop(columns=["AT", "SA", "failed"], errors="ignore").values.ravel()
    return [CELL_NOTES] if any("[" in str(v) for v in cells) else []


def below_chance_notes(table: pd.DataFrame) -> list[str]:
    """One line per method with a clean cell below 0.5 that documents why (``below_chance_note``)."""
    clean = [c for c in table.columns if str(c).endswith(" clean")]
    lines = []
    for method, row in table.iterrows():
        low = [str(c).split(" ", 1)[0] for c in clean if _mean_of(row[c]) < 0.5]
        note = METHODS.get(str(method)).below_chance_note if low and str(method) in METHODS else ""
        if note:
            lines.append(f"{method} below 0.5 clean on {', '.join(low)}: {note}")
    return lines


def _mean_of(cell: object) -> float:
    """The mean of a "mean ± std ..." cell (nan when there is none)."""
    try:
        return float(str(cell).split()[0])
    except (ValueError, IndexError):
        return float("nan")


def flag_legend(table: pd.DataFrame) -> list[str]:
    """One line per check flag that appears in the table."""
    text = " ".join(str(v) for v in table.drop(columns=["AT", "SA", "failed"], errors="ignore").values.ravel())
    shown = {c for word in text.split() if word.startswith("!") for c in word[1:]}
    pending = [PENDING_LEGEND] if PENDING in text.split() else []
    return [f"!{flag}: {meaning}" for flag, meaning in FLAG_LEGEND.items() if flag in shown] + pending


def to_markdown(table: pd.DataFrame) -> str:
    header = ["method", *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|"]
    for method, row in table.iterrows():
        lines.append("| " + " | ".join([str(method), *map(str, row.values)]) + " |")
    return "\n".join(lines) + "\n"


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(a, b)
    return text.replace("±", r"$\pm$").replace("–", "--")


def to_latex(table: pd.DataFrame) -> str:
    spec = "l" + "r" * len(table.columns)
    head = " & ".join(_tex(str(c)) for c in ["method", *table.columns])
    rows = [" & ".join(_tex(str(v)) for v in [m, *r.values]) + r" \\" for m, r in table.iterrows()]
    return "\n".join([rf"\begin{{tabular}}{{{spec}}}", r"\toprule", head + r" \\", r"\midrule",
                      *rows, r"\bottomrule", r"\end{tabular}", ""])


def write(results: pd.DataFrame, folder: str | Path, metric: str = "auroc", checks: pd.DataFrame | None = None,
          reported: dict[tuple, str] | None = None, configurations: bool = False,
          live: set[str] | None = None) -> list[Path]:
    """Write leaderboard.csv (long, numeric), leaderboard.md and leaderboard.tex (wide); other metrics
    than AUROC go to leaderboard_<metric>.*."""
    folder = Path(folder)
    table = wide(results, metric, checks, reported, configurations, live)
    stem = "leaderboard" if metric == "auroc" else f"leaderboard_{metric}"
    paths = [folder / f"{stem}.{ext}" for ext in ("csv", "md", "tex")]
    summarize(results, metric).to_csv(paths[0], index=False)
    legend = "".join(f"\n{line}\n" for line in flag_legend(table) + below_chance_notes(table) + note_legend(table)) \
        if not table.empty else ""
    paths[1].write_text(to_markdown(table) + legend if not table.empty else "no finished jobs\n")
    paths[2].write_text(to_latex(table) if not table.empty else "% no finished jobs\n")
    return paths
