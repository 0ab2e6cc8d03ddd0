"""``robust-ad-bench audit``: per method, which attacks ran, the worst-case figure, which checks failed."""

from __future__ import annotations

import pandas as pd
from rich.table import Table

from robust_ad_bench.benchmark.leaderboard import eps_label, lowest_per_model


def _attacks_run(rows: pd.DataFrame) -> str:
    parts = []
    for attack, group in rows[rows["norm"] != "none"].groupby("attack"):
        details = sorted({d for d in group["attack_detail"].fillna("") if d})
        parts.append(f"{attack} ({'; '.join(details)})" if details else str(attack))
    return ", ".join(parts) or "clean only"


def _worst(rows: pd.DataFrame) -> str:
    """Per norm and eps: mean over models of each model's lowest AUROC, and the attack behind it."""
    lowest = lowest_per_model(rows)
    if lowest.empty:
        return "–"
    parts = []
    for (norm, eps), group in lowest.groupby(["norm", "eps"]):
        parts.append(f"{norm} {eps_label(eps, norm)}: {group['auroc'].mean():.3f} "
                     f"({group['attack'].value_counts().index[0]})")
    return "\n".join(parts)


def _failed_checks(checks: pd.DataFrame, models: int) -> str:
    if checks.empty:
        return "not run"
    failed = checks[~checks["passed"].astype(bool)]
    if failed.empty:
        return f"all {checks['name'].nunique()} kinds passed"
    parts = []
    for (name, attack), group in failed.groupby(["name", "attack"]):
        detail = next((d for d in group["detail"] if d), "")
        parts.append(f"{name} on {attack}: {group['train_key'].nunique()}/{models} models"
                     + (f" — {detail}" if detail else ""))
    return "\n".join(parts)


def audit_tables(results: pd.DataFrame, checks: pd.DataFrame) -> list[Table]:
    """One table per dataset: method, attacks run, worst case per eps, failed checks."""
    ok = results[results["status"] == "ok"]
    tables = []
    for dataset in sorted(ok["dataset"].unique()):
        table = Table(title=f"Audit of {dataset}", show_lines=True)
        for column in ("method", "attacks run", "worst case (mean AUROC, attack)", "failed checks"):
            table.add_column(column, overflow="fold")
        data = ok[ok["dataset"] == dataset]
        for method in sorted(data["method"].unique()):
            rows = data[data["method"] == method]
            mine = checks[(checks["method"] == method) & (checks["dataset"] == dataset)] if not checks.empty \
                else checks
            table.add_row(method, _attacks_run(rows), _worst(rows),
                          _failed_checks(mine, rows["train_key"].nunique()))
        tables.append(table)
    return tables
