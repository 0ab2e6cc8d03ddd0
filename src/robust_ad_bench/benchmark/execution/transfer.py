"""Transfer: the adversarial test images each method's attacks made (kept on disk as int16 steps, see
``worst_case.AdversarialImages``) scored by every other method trained on the same split, and the
anomaly-map gallery of each model (``gallery``), in one pass after the grid's steps (it needs every
model of a split, and loads each target model once from the model cache; a model not in the cache is
left out, never trained here).

- The matrix: per (source method, target model, norm, eps), the target's AUROC on the source's images,
  chosen per image by the source's own objective (the per-image worst of the source's attacks at that eps,
  judged by the source: what a black-box attacker holding the source model would send). The diagonal is the
  method's own white-box figure over its attacks at that eps (the checks' images are not kept, so it can be
  above its worst-case column).
- Black-box candidates: every transferred image at an eps at or below a worst case's enters the target's
  per-image worst case (deterministic targets: per image, exactly; stochastic ones: a transferred set whose
  own AUROC is lower is reported in its place, marked as a fall-back, like ``worst_case`` does). When the
  transfers lower the target's worst case beyond noise, that is the masking signal of Carlini et al. (2019,
  "On Evaluating Adversarial Robustness", transfer attacks as a check): a check row ``transfer`` fails for
  each white-box attack of that norm (flag ``!T``), when the model's checks ran.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from robust_ad_bench.benchmark.evaluation import scoring
from robust_ad_bench.benchmark.execution.model_cache import ModelCache
from robust_ad_bench.benchmark.grid.jobs import Job, content_key
from robust_ad_bench.benchmark.grid.runtime import key_seed
from robust_ad_bench.benchmark.protocol import metrics
from robust_ad_bench.benchmark.protocol.masking import FLOAT_TOLERANCE, difference_threshold, worse
from robust_ad_bench.benchmark.protocol.worst_case import FALLBACK, AdversarialImages, choose
from robust_ad_bench.benchmark.results import gallery
from robust_ad_bench.benchmark.results.store import CheckRow, JobResult, Store, TransferRow
from robust_ad_bench.datasets.protocols import make_split

TRANSFER_VERSION = "1"
CHECK_NAME = "transfer"
SIGMAS = 3.0  # stochastic targets: how many paired standard deviations a transfer must beat the worst case by
ROUNDS = 200
MARK = "transfer="  # in a worst-case row's attack_detail: the transfers folded into it (key)


@dataclass
class TransferSummary:
    targets: int = 0  # target models scored
    rows: int = 0  # matrix rows stored
    flagged: list[str] = field(default_factory=list)  # "method dataset/class seed norm eps: detail"
    skipped: list[str] = field(default_factory=list)  # models left out (not in the model cache)
    transfer_seconds: float = 0.0
    gallery_seconds: float = 0.0


def transfer_lines(summary: TransferSummary | None) -> list[str]:
    """What the run says about the transfer pass (nothing when it scored no target)."""
    if summary is None or not (summary.targets or summary.flagged or summary.skipped):
        return []
    lines = [f"transfer: {summary.targets} target models scored on the other methods' adversarial images "
             f"({summary.rows} matrix rows, {summary.transfer_seconds:.1f} s; "
             f"galleries {summary.gallery_seconds:.1f} s)"]
    lines += [f"  !T {text}" for text in summary.flagged]
    if summary.skipped:
        lines.append(f"  left out (no cached model): {', '.join(summary.skipped)}")
    return lines


def split_groups(jobs: Sequence[Job]) -> dict[str, list[Job]]:
    """The grid's jobs by the split their model trained on (one group per dataset, class, seed, protocol)."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(repr(job.model.split), []).append(job)
    return groups


def transfer_key(train_key: str, sources: Sequence[str]) -> str:
    return content_key({"target": train_key, "sources": sorted(sources), "version": TRANSFER_VERSION})


class SplitTransfer:
    """The transfer scoring and galleries of one split's models."""

    def __init__(self, jobs: Sequence[Job], store: Store, out: Path, device: torch.device) -> None:
        self.store, self.out, self.device = store, Path(out), device
        keys = [j.key for j in jobs]
        done = store.results(status="ok", keys=keys)
        self.ok = set(done["key"])
        self.images = AdversarialImages(self.out / "adversarial")
        self.jobs = [j for j in jobs if j.key in self.ok]
        self.attacked = [j for j in self.jobs if j.norm != "none" and j.eps > 0 and self.images.path(j.key).is_file()]
        self.models = list(dict.fromkeys(j.train_key for j in self.jobs))
        self.rows = store.results(status="ok", keys=keys + self._worst_keys())
        self.split = None

    def _worst_keys(self) -> list[str]:
        train_keys = {j.train_key for j in self.jobs}
        frame = self.store.results(status="ok")
        return list(frame.loc[frame["train_key"].isin(train_keys) & frame["attack"].str.startswith("worst-"), "key"])

    def scores(self, key: str) -> np.ndarray:
        found = self.store.scores(key)
        if found is None:
            raise ValueError(f"no stored scores for job {key}")
        return found[1].astype(np.float64)

    def x_adv(self, job: Job) -> torch.Tensor | None:
        """A job's adversarial images, read again each time: a split's images can outgrow memory (every
        job of every method), and reading is cheap next to scoring them."""
        return self.images.load(job.key, self.x)

    def run(self, summary: TransferSummary, stop: Callable[[], bool] | None = None) -> None:
        if not self.attacked:
            return
        for train_key in self.models:
            if stop and stop():
                return
            mine = [j for j in self.jobs if j.train_key == train_key]
            key = transfer_key(train_key, [j.key for j in self.attacked])
            done_gallery = (self.out / gallery.GALLERY_FOLDER / f"{train_key}.npz").is_file()
            mine_worst = self.rows[(self.rows["train_key"] == train_key) & self.rows["attack"].str.startswith("worst-")]
            folded = all(MARK + key in str(d) for d in mine_worst["attack_detail"])
            if self.store.has_transfer(key) and done_gallery and folded:
                continue
            cache = ModelCache(self.out / "models", self.device)
            path = cache.path(mine[0].model.weights_key)
            if path is None or not path.is_file():
                summary.skipped.append(f"{mine[0].method} {mine[0].dataset}/{mine[0].normal_class} (not cached)")
                continue
            if self.split is None:
                self.split = make_split(mine[0].model.split)
                self.x = self.split.test.to(self.device)
                self.labels = self.split.test_labels.numpy().astype(np.uint8)
            detector, _ = cache.get(mine[0].model, self.split)
            start = time.perf_counter()
            on_target = self.score_sources(detector, mine, key)
            if not self.store.has_transfer(key):
                self.matrix(mine, key, on_target, time.perf_counter() - start, summary)
                summary.targets += 1
            self.fold(mine, key, on_target, detector.stochastic, summary)
            summary.transfer_seconds += time.perf_counter() - start
            start = time.perf_counter()
            self.gallery(detector, mine, on_target)
            summary.gallery_seconds += time.perf_counter() - start

    def score_sources(self, detector, mine: list[Job], key: str) -> dict[str, np.ndarray]:
        """Every attacked job's images scored by the target: its own from the store, the others' now."""
        out = {j.key: self.scores(j.key) for j in self.attacked if j.train_key == mine[0].train_key}
        draws = mine[0].eval_samples
        for job in self.attacked:
            if job.key in out:
                continue
            images = self.x_adv(job)
            if images is not None:
                out[job.key] = scoring.score_images(detector, images, draws,
                                                       scoring.score_seed(f"{key}:{job.key}")).astype(np.float64)
        return out

    def matrix(self, mine: list[Job], key: str, on_target: dict[str, np.ndarray], seconds: float,
               summary: TransferSummary) -> None:
        target = mine[0]
        rows = []
        by_source: dict[tuple[str, str, float], list[Job]] = {}
        for job in self.attacked:
            if job.key in on_target:
                by_source.setdefault((job.method, job.norm, round(job.eps, 10)), []).append(job)
        for (source, norm, eps), jobs in sorted(by_source.items()):
            own = np.stack([self.scores(j.key) for j in jobs])  # the source's own scores: it chooses
            pick = choose(self.labels, own)
            scored = np.stack([on_target[j.key] for j in jobs])[pick, np.arange(len(self.labels))]
            rows.append(TransferRow(key, target.dataset, str(target.normal_class), target.seed, source, target.method,
                                    target.train_key, norm, eps, metrics.auroc(self.labels, scored),
                                    len(self.labels), seconds))
        self.store.put_transfer(rows)
        summary.rows += len(rows)

    def fold(self, mine: list[Job], key: str, on_target: dict[str, np.ndarray], stochastic: bool,
             summary: TransferSummary) -> None:
        """Transferred images into the target's worst cases; the masking check when they beat them."""
        target = mine[0]
        worst = self.rows[(self.rows["train_key"] == target.train_key) & self.rows["attack"].str.startswith("worst-")]
        flags: dict[str, list[str]] = {}
        for _, row in worst.iterrows():
            if MARK + key in str(row["attack_detail"]):
                continue
            others = [j for j in self.attacked if j.train_key != target.train_key and j.norm == row["norm"]
                      and round(j.eps, 10) <= round(float(row["eps"]), 10) and j.key in on_target]
            if not others:
                continue
            base = self.scores(row["key"])
            candidates = np.stack([on_target[j.key] for j in others])
            before = metrics.auroc(self.labels, base)
            names = sorted({j.method for j in others})
            if stochastic:
                lowest = int(np.argmin([metrics.auroc(self.labels, c) for c in candidates]))
                after = metrics.auroc(self.labels, candidates[lowest])
                limit = difference_threshold(self.labels, base, candidates[lowest], SIGMAS, ROUNDS, key_seed(key))
                beaten = before - after > limit
                new = candidates[lowest] if after < before else base
                text = (f"{FALLBACK} transfer from {others[lowest].method} ({others[lowest].attack}) alone is lower "
                        f"({after:.3f} < {before:.3f}): reported") if after < before else ""
            else:
                best = candidates[choose(self.labels, candidates), np.arange(len(self.labels))]
                new = worse(self.labels, base, best)
                won = int((new != base).sum())
                after = metrics.auroc(self.labels, new)
                beaten = before - after > FLOAT_TOLERANCE
                text = f"transferred images won {won} images" if won else ""
            detail = ",".join(p for p in (str(row["attack_detail"] or ""), f"{MARK}{key} from {'+'.join(names)}",
                                          text) if p)
            self.store.put(self.worst_row(row, np.asarray(new, np.float32), detail))
            if beaten:
                what = (f"{row['norm']} eps {float(row['eps']):g}: transfers from {'+'.join(names)} lowered the "
                        f"worst case {before:.4f} -> {after:.4f}")
                flags.setdefault(row["norm"], []).append(what)
                summary.flagged.append(f"{target.method} {target.dataset}/{target.normal_class} seed {target.seed} "
                                       + what)
        self.check_rows(mine, key, flags, set(worst["norm"]))

    def worst_row(self, row: pd.Series, scores: np.ndarray, detail: str) -> JobResult:
        result = scoring.metrics_of(self.labels, scores, row["key"])
        return JobResult(key=row["key"], train_key=row["train_key"], status="ok", method=row["method"],
                         dataset=row["dataset"], normal_class=row["normal_class"], seed=int(row["seed"]),
                         attack=row["attack"], norm=row["norm"], eps=float(row["eps"]),
                         config=json.loads(row["config"]), metrics=result, n_test=len(self.labels),
                         seconds=float(row["seconds"] or 0.0), adversarially_trained=bool(row["adversarially_trained"]),
                         attack_detail=detail, labels=self.labels, scores=scores)

    def check_rows(self, mine: list[Job], key: str, flags: dict[str, list[str]], norms: set[str]) -> None:
        """One ``transfer`` check row per white-box attack of each norm, when the model's checks ran."""
        target = mine[0]
        checks = self.store.checks()
        if checks.empty or target.train_key not in set(checks["train_key"]):
            return
        rows = [CheckRow(key, target.train_key, target.method, target.dataset, str(target.normal_class), target.seed,
                         job.attack, CHECK_NAME, job.norm not in flags, None, None,
                         "; ".join(flags.get(job.norm, [])) or "no transferred image beat the white-box attacks")
                for job in {j.attack: j for j in mine if j.norm in norms}.values()]
        if rows:
            self.store.put_checks(rows)

    def gallery(self, detector, mine: list[Job], on_target: dict[str, np.ndarray]) -> None:
        target = mine[0]
        clean_jobs = [j for j in mine if j.attack == "clean"]
        worst = self.store.results(status="ok")
        worst = worst[(worst["train_key"] == target.train_key) & worst["attack"].str.startswith("worst-")]
        attacked = [j for j in mine if j.norm != "none" and j.eps > 0]
        if not clean_jobs or not attacked:
            return
        norms = [n for n in ("linf", "l2") if any(j.norm == n for j in attacked)] or [attacked[0].norm]
        norm = norms[0]
        eps = max(j.eps for j in attacked if j.norm == norm)
        clean = self.scores(clean_jobs[0].key)
        here = worst[(worst["norm"] == norm) & np.isclose(worst["eps"].astype(float), eps)]
        pool = [j for j in self.attacked if j.norm == norm and round(j.eps, 10) <= round(eps, 10)
                and j.key in on_target]
        if not pool:
            return
        candidates = np.stack([on_target[j.key] for j in pool])
        pick = choose(self.labels, candidates)
        best = candidates[pick, np.arange(len(self.labels))]
        worst_scores = self.scores(here["key"].iloc[0]) if not here.empty else best
        index = gallery.pick_images(self.labels, clean, np.asarray(worst_scores))
        x_adv = torch.stack([self.x_adv(pool[pick[i]])[i] for i in index])  # a few images: read per image
        sources = [f"{pool[pick[i]].method}:{pool[pick[i]].attack}@{pool[pick[i]].eps:.3g}" for i in index]
        meta = {"method": target.method, "dataset": target.dataset, "normal_class": str(target.normal_class),
                "seed": target.seed, "norm": norm, "eps": eps, "sources": sources,
                "threshold": gallery.f1_threshold(self.labels, clean)}
        arrays = gallery.collect(detector, self.x[index], x_adv, self.labels, clean[index], best[index],
                                 np.asarray(worst_scores), index, meta)
        gallery.save(self.out / gallery.GALLERY_FOLDER, target.train_key, arrays)


def run_transfer(jobs: Sequence[Job], store: Store, out: Path, device: torch.device,
                 stop: Callable[[], bool] | None = None) -> TransferSummary:
    """The transfer matrix, black-box folding and galleries of every split of ``jobs``."""
    summary = TransferSummary()
    for group in split_groups(jobs).values():
        if stop and stop():
            break
        SplitTransfer(group, store, out, device).run(summary, stop)
    return summary

