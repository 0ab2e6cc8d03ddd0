"""The transfer matrix from the store's ``transfer`` table: per dataset, norm and eps, the target's AUROC
(rows: source method whose adversarial images were scored; columns: target method), mean over the classes
and seeds both were trained on; as heat-map PNGs and HTML tables."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

KEY = ["dataset", "norm", "eps"]


def matrices(transfers: pd.DataFrame) -> dict[tuple[str, str, float], pd.DataFrame]:
    """(dataset, norm, eps) -> source × target mean AUROC (nan where the pair never ran)."""
    out: dict[tuple[str, str, float], pd.DataFrame] = {}
    if transfers.empty:
        return out
    frame = transfers.assign(eps=transfers["eps"].astype(float).round(10))
    for key, rows in frame.groupby(KEY, sort=True):
        table = rows.pivot_table(index="source", columns="target", values="auroc", aggfunc="mean")
        methods = sorted(set(table.index) | set(table.columns))
        out[(str(key[0]), str(key[1]), float(key[2]))] = table.reindex(index=methods, columns=methods)
    return out


def largest_eps(transfers: pd.DataFrame) -> dict[tuple[str, str, float], pd.DataFrame]:
    """The matrices at the largest eps of each dataset and norm."""
    found = matrices(transfers)
    top: dict[tuple[str, str], float] = {}
    for dataset, norm, eps in found:
        top[(dataset, norm)] = max(eps, top.get((dataset, norm), eps))
    return {k: v for k, v in found.items() if top[(k[0], k[1])] == k[2]}


def plot_transfer(transfers: pd.DataFrame, folder: Path) -> list[Path]:
    """One PNG per dataset and norm: a heat map per eps (AUROC of the target on the source's images)."""
    import matplotlib.pyplot as plt

    from robust_ad_bench.benchmark.results.leaderboard import eps_label
    from robust_ad_bench.benchmark.results.plots import _save, safe_name

    found = matrices(transfers)
    paths = []
    for dataset, norm in dict.fromkeys((d, n) for d, n, _ in found):
        keys = [k for k in found if k[:2] == (dataset, norm)]
        n = len(found[keys[0]])
        side = max(4.6, 0.42 * n + 1.6)
        fig, axes = plt.subplots(1, len(keys), figsize=(side * len(keys) + 1.0, side), squeeze=False,
                                 layout="constrained")
        for ax, key in zip(axes[0], keys):
            table = found[key]
            image = ax.imshow(table.to_numpy(float), vmin=0, vmax=1, cmap="RdYlGn")
            ax.set_xticks(range(len(table.columns)), table.columns, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(len(table.index)), table.index, fontsize=8)
            if n <= 16:  # the figures themselves while they fit
                for (i, j), value in np.ndenumerate(table.to_numpy(float)):
                    if np.isfinite(value):
                        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
            ax.set_xlabel("target (scores)")
            ax.set_ylabel("source (made the images)")
            ax.set_title(f"eps {eps_label(key[2], norm)}")
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="AUROC")
        fig.suptitle(f"{dataset}: {norm} adversarial images of each source\n"
                     "scored by each target (diagonal: white-box)",
                     fontsize="medium")
        paths.append(_save(fig, folder / f"transfer_{safe_name(dataset)}_{safe_name(norm)}.png"))
    return paths


def transfer_html(transfers: pd.DataFrame) -> str:
    """One table per dataset, norm and eps (largest eps first), diagonal cells marked."""
    from robust_ad_bench.benchmark.results.leaderboard import eps_label

    parts = []
    for (dataset, norm, eps), table in sorted(matrices(transfers).items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                                            -kv[0][2])):
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
        rows = []
        for source, row in table.iterrows():
            cells = "".join(f'<td class="{"worst" if source == target else ""}" data-sort="{v:.4f}">'
                            f'{"–" if not np.isfinite(v) else f"{v:.3f}"}</td>'
                            for target, v in row.items())
            rows.append(f'<tr data-source="{html.escape(str(source))}"><td>{html.escape(str(source))}</td>{cells}</tr>')
        ident = html.escape(f"transfer-{dataset}-{norm}-{eps:g}")
        parts.append(f"<h3>{html.escape(dataset)}, {html.escape(norm)} eps {eps_label(eps, norm)}</h3>"
                     f'<table class="board" id="{ident}"><thead><tr><th>source \\ target</th>{head}</tr></thead>'
                     f"<tbody>{''.join(rows)}</tbody></table>")
    return "\n".join(parts)
