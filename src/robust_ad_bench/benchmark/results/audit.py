"""``robust-ad-bench audit``: per method, which attacks ran, the per-image worst-case figure, which checks
failed or raised, and how many models have no checks at all."""

from __future__ import annotations

import pandas as pd
from rich.table import Table

from robust_ad_bench.benchmark.results.leaderboard import eps_label, is_worst, top_winner, worst_per_model


def _attacks_run(rows: pd.DataFrame) -> str:
    parts = []
    for attack, group in rows[(rows["norm"] != "none") & ~is_worst(rows["attack"])].groupby("attack"):
        details = sorted({d for d in group["attack_detail"].fillna("") if d})
        parts.append(f"{attack} ({'; '.join(details)})" if details else str(attack))
    return ", ".join(parts) or "clean only"


def _worst(rows: pd.DataFrame) -> str:
    """Per norm and eps: mean over models of each model's per-image worst-case AUROC (or its only attack's),
    the attack that won most images, and the models whose figure is a fall-back (and why)."""
    worst = worst_per_model(rows)
    if worst.empty:
        return "–"
    parts = []
    for (norm, eps), group in worst.groupby(["norm", "eps"]):
        winners = [top_winner(d) if w else a for a, d, w in
                   zip(group["attack"], group["attack_detail"], is_worst(group["attack"]))]
        top = pd.Series([w for w in winners if w]).value_counts()
        fallbacks = sorted({f for f in group["fallback"] if f})
        parts.append(f"{norm} {eps_label(eps, norm)}: {group['auroc'].mean():.3f}"
                     + (f" ({top.index[0]})" if not top.empty else "")
                     + (f" [fallback in {sum(bool(f) for f in group['fallback'])}/{len(group)} models: "
                        f"{'; '.join(fallbacks)}]" if fallbacks else ""))
    return "\n".join(parts)


def _failed_checks(checks: pd.DataFrame, models: set[str]) -> str:
    """Failed and raising checks, and the models whose checks did not run; "all passed" only when every
    model was checked and nothing failed."""
    if not models:
        return "nothing attacked: no checks"
    mine = checks[checks["train_key"].isin(models)] if not checks.empty else checks
    unchecked = len(models - set(mine["train_key"])) if not mine.empty else len(models)
    lines = [f"checks not run: {unchecked}/{len(models)} models"] if unchecked else []
    failed = mine[~mine["passed"].astype(bool)] if not mine.empty else mine
    for (name, attack), group in failed.groupby(["name", "attack"]) if not failed.empty else []:
        detail = next((d for d in group["detail"] if d), "")
        lines.append(f"{name} on {attack}: {group['train_key'].nunique()}/{len(models)} models"
                     + (f" — {detail}" if detail else ""))
    if not lines:
        return f"all {mine['name'].nunique()} kinds passed"
    return "\n".join(lines)


def audit_tables(results: pd.DataFrame, checks: pd.DataFrame) -> list[Table]:
    """One table per dataset: method, attacks run, worst case per eps, failed checks."""
    ok = results[results["status"] == "ok"]
    tables = []
    for dataset in sorted(ok["dataset"].unique()):
        table = Table(title=f"Audit of {dataset}", show_lines=True)
        for column in ("method", "attacks run", "per-image worst case (mean AUROC, top attack)", "failed checks"):
            table.add_column(column, overflow="fold")
        data = ok[ok["dataset"] == dataset]
        for method in sorted(data["method"].unique()):
            rows = data[data["method"] == method]
            models = set(rows.loc[rows["norm"] != "none", "train_key"])
            table.add_row(method, _attacks_run(rows), _worst(rows), _failed_checks(checks, models))
        tables.append(table)
    return tables
