"""The sanity checks and per-image worst cases of one trained detector (pure computation, like
``evaluation``: files only in the adversarial-image folder the caller names).

The checks (``checks``) run more attacks on the model; those at an eps of the grid are candidates of the
worst case too, so a checked model's worst cases are computed right after its checks, in the same step.
The masking test (check ``black-box``) runs Square on a stratified sample of the test set and compares it
image by image with the per-image worst white-box candidate (``masking``); when it flags, Square runs on
every test image at that eps and joins the worst case (the cells of smaller eps carry the flag).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from robust_ad_bench.benchmark.evaluation import scoring
from robust_ad_bench.benchmark.grid.jobs import Job, WorstCase
from robust_ad_bench.benchmark.grid.runtime import key_seed, seed_everything
from robust_ad_bench.benchmark.protocol import metrics, settling
from robust_ad_bench.benchmark.protocol.checks import (
    CheckConfig,
    CheckResult,
    Evaluated,
    masking_check_attack,
    run_checks,
)
from robust_ad_bench.benchmark.protocol.masking import deterministic_test, stochastic_test, stratified_sample
from robust_ad_bench.benchmark.protocol.worst_case import FALLBACK, AdversarialImages, Candidate, choose, wins_text
from robust_ad_bench.benchmark.results.store import CheckRow, JobResult
from robust_ad_bench.core.dataset import Split
from robust_ad_bench.core.detector import Detector
from robust_ad_bench.core.registry import ATTACKS

SAMPLE_SQUARE = "square-sample"  # the masking test's Square on the sample (a partial candidate)
FULL_SQUARE = "square-check"  # Square on every test image, run when the masking test flagged


def eps_key(eps: float) -> float:
    return round(float(eps), 10)


class ModelEvaluation:
    """Candidates, checks and worst cases of one trained model (``jobs``: all its jobs; ``scores``: their
    stored test scores by job key)."""

    def __init__(self, jobs: Sequence[Job], scores: dict[str, np.ndarray], detector: Detector, split: Split,
                 device: torch.device, images: AdversarialImages, check_key: str | None = None) -> None:
        self.jobs, self.scores, self.detector, self.split = list(jobs), scores, detector, split
        self.device, self.images, self.key = device, images, check_key or jobs[0].train_key
        self.labels = split.test_labels.numpy().astype(np.uint8)
        self.x = split.test.to(device)
        self.draws = jobs[0].eval_samples
        self.common = scoring.common_seed(jobs[0].train_key)
        self.stochastic = bool(detector.stochastic)
        self.found: list[Candidate] = []  # the checks' candidates at an eps of the grid
        self.loaded: dict[str, torch.Tensor] = {}
        self.regenerated = 0  # jobs whose kept images were missing (attacked again)
        self.grid_eps = {(j.norm, eps_key(j.eps)) for j in jobs if j.norm != "none" and j.eps > 0}

    # -- attack runs --------------------------------------------------------------------------------
    def attack(self, attack: str, params: dict[str, Any], eps: float, subset: np.ndarray | None = None,
               settled: np.ndarray | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """One attack run (on ``subset``); ``settled``: images other attacks settled (``settling``)."""
        seed_everything(self.key)
        # the same scoring draws for every check run: eps 0 must equal clean exactly
        x_adv, scores, _ = scoring.attacked_scores(self.detector, self.split, attack, params, eps, self.device,
                                                      self.draws, scoring.score_seed(self.key), self.common,
                                                      subset, self.jobs[0].train_key, settled)
        return x_adv, scores

    def evaluate(self, attack: str, params: dict[str, Any], eps: float, subset: np.ndarray | None = None
                 ) -> Evaluated:
        """A check's attack run (on the images ``subset`` names); kept as a candidate when it ran at an eps of
        the grid (nan where it attacked no image)."""
        x_adv, scores = self.attack(attack, params, eps, subset)
        norm = ATTACKS.get(attack).norm
        if (norm, eps_key(eps)) in self.grid_eps:
            full, images = self.whole(scores, x_adv, subset)
            self.keep(Candidate(f"{attack}-check", norm, eps, full), images)
        return Evaluated(scores, x_adv)

    def whole(self, scores: np.ndarray, x_adv: torch.Tensor, subset: np.ndarray | None
              ) -> tuple[np.ndarray, torch.Tensor | None]:
        """Scores (nan where not attacked) and, for a stochastic detector, images (clean where not attacked)
        of every test image, from a run on ``subset``."""
        if subset is None:
            return scores, x_adv
        full = np.full(len(self.labels), np.nan)
        full[subset] = scores
        images = None
        if self.stochastic:
            images = self.x.clone()
            images[torch.as_tensor(subset)] = x_adv
        return full, images

    def keep(self, candidate: Candidate, x_adv: torch.Tensor | None) -> None:
        candidate.images = x_adv.detach() if self.stochastic and x_adv is not None else None
        self.found.append(candidate)

    def job_images(self, job: Job) -> torch.Tensor:
        """A stochastic detector's adversarial images of ``job``: from disk, or attacked again from its seed."""
        if job.key not in self.loaded:
            x_adv = self.images.load(job.key, self.x)
            if x_adv is None:  # not kept: attacked again from the job's own seed
                x_adv = scoring.attack_job(job, self.detector, self.split, self.device)[1]
                self.regenerated += 1
            self.loaded[job.key] = x_adv
        return self.loaded[job.key]

    def candidate_images(self, c: Candidate) -> torch.Tensor:
        if c.images is not None:
            return c.images
        return self.job_images(next(j for j in self.jobs if j.key == c.key))

    def job_candidates(self, jobs: Sequence[Job], suffix: bool = False) -> list[Candidate]:
        return [Candidate(f"{j.attack}@{j.eps:.4g}" if suffix else j.attack, j.norm, j.eps, self.scores[j.key], j.key)
                for j in jobs]

    # -- choosing per image -------------------------------------------------------------------------
    def common_scores(self, candidates: list[Candidate], subset: np.ndarray | None = None) -> np.ndarray:
        """K×N scores to choose on: the stored scores (deterministic), or every candidate's images scored
        under the model's fixed draws (stochastic; nan where a candidate attacked no image)."""
        if not self.stochastic:
            rows = np.stack([c.scores for c in candidates])
            return rows if subset is None else rows[:, subset]
        rows = []
        for c in candidates:
            images = self.candidate_images(c)
            if subset is not None:
                images = images[torch.as_tensor(subset)]
            row = scoring.score_images(self.detector, images, self.draws, self.common)
            known = np.isfinite(c.scores if subset is None else c.scores[subset])
            rows.append(np.where(known, row, np.nan))
        return np.stack(rows)

    def chosen_images(self, candidates: list[Candidate], pick: np.ndarray, subset: np.ndarray | None = None
                      ) -> torch.Tensor:
        index = torch.as_tensor(subset) if subset is not None else None
        out = (self.x if index is None else self.x[index]).clone()
        for i, c in enumerate(candidates):
            mine = torch.as_tensor(pick == i, device=self.device)
            if bool(mine.any()):
                images = self.candidate_images(c)
                out[mine] = (images if index is None else images[index])[mine]
        return out

    def sample(self, cfg: CheckConfig) -> np.ndarray:
        """The checks' stratified sample of the test set (seeded by the model's checks)."""
        return stratified_sample(self.labels, cfg.masking_normals, cfg.masking_anomalies, key_seed(self.key))

    # -- the masking test ---------------------------------------------------------------------------
    def masking(self, cfg: CheckConfig, norm: str, target: str, names: list[str], eps: float) -> list[CheckResult]:
        sample = self.sample(cfg)
        labels = self.labels[sample]
        white = self.job_candidates([j for j in self.jobs if j.attack in names and eps_key(j.eps) == eps_key(eps)])
        white += [c for c in self.found if c.name.removesuffix("-check") in names and eps_key(c.eps) == eps_key(eps)]
        square = masking_check_attack(norm)
        params = {"queries": cfg.square_queries, "eot_samples": cfg.square_eot_samples, "target": target}
        # Square skips the images the white-box attacks settled (deterministic detectors: ``settling``)
        white_all = None if self.stochastic else self.common_scores(white)
        settled = self.settled_by(white_all)
        x_square, square_scores = self.attack(square, params, eps, sample, settled)
        partial, images = self.whole(square_scores, x_square, sample)
        # deterministic: the sample's columns of the scores already stacked; stochastic: scored on the sample
        rows = white_all[:, sample] if white_all is not None else self.common_scores(white, sample)
        pick = choose(labels, rows)
        if self.stochastic:
            x_white = self.chosen_images(white, pick, sample)
            base = key_seed(self.key) + 7919

            def rescore(x: torch.Tensor):
                return lambda seed: scoring.score_images(self.detector, x, self.draws, base + seed)

            test = stochastic_test(labels, rescore(x_white), rescore(x_square), cfg.masking_rounds)
        else:
            test = deterministic_test(labels, rows[pick, np.arange(len(sample))], square_scores)
        self.keep(Candidate(SAMPLE_SQUARE, norm, eps, partial), images)
        detail = f"{len(sample)} images: {test.detail()}"
        if test.flagged:
            # at the eps the test ran at (the grid's largest): the cost of the full-test check it replaces
            x_adv, scores = self.attack(square, params, eps, settled=settled)
            self.keep(Candidate(FULL_SQUARE, norm, eps, scores), x_adv)
            detail += (f"; gradient masking: Square run on all {len(self.labels)} test images (AUROC "
                       f"{metrics.auroc(self.labels, scores):.4f} at eps {eps:g}) and folded into the worst case")
        return [CheckResult(name, "black-box", not test.flagged, test.combined, test.white, detail) for name in names]

    def settled_by(self, rows: np.ndarray | None) -> np.ndarray | None:
        """The images that the per-image worst of the candidates' scores ``rows`` (K×N) settles (None: a
        stochastic detector, or the savings off)."""
        if rows is None or not settling.ENABLED:
            return None
        worst = rows[choose(self.labels, rows), np.arange(len(self.labels))]
        clean = scoring.clean_scores(self.detector, self.split, self.jobs[0].train_key, self.device)
        return settling.settled(self.labels, worst, settling.settle_bounds(self.labels, clean))

    # -- the worst case -----------------------------------------------------------------------------
    def worst_case(self, group: WorstCase) -> JobResult:
        """The per-image worst case of ``group`` over its jobs, smaller eps and the checks' candidates."""
        candidates = self.job_candidates(group.jobs) + self.job_candidates(group.smaller, suffix=True)
        candidates += [c for c in self.found if c.norm == group.norm and eps_key(c.eps) <= eps_key(group.eps)]
        rows = self.common_scores(candidates)
        pick = choose(self.labels, rows)
        names = [c.name for c in candidates]
        detail = f"per-image worst of {len(candidates)} candidates,won={wins_text(names, pick)}"
        if self.stochastic:
            chosen = self.chosen_images(candidates, pick)
            worst = scoring.score_images(self.detector, chosen, self.draws, scoring.score_seed(group.key))
            detail += f",chosen under common draws, scored with {self.draws} fresh draw{'s' * (self.draws > 1)}"
            if self.regenerated:
                detail += f",{self.regenerated} attack(s) run again from their seed"
        else:
            worst = np.asarray(rows)[pick, np.arange(len(self.labels))]
        mixed = metrics.auroc(self.labels, worst)
        complete = [c for c in candidates if c.complete]
        lowest = min(complete, key=lambda c: metrics.auroc(self.labels, c.scores))
        single = metrics.auroc(self.labels, lowest.scores)
        if single < mixed:  # noisy re-scoring only: never report more than a single candidate's own figure
            worst = lowest.scores
            detail += f",{FALLBACK} {lowest.name} alone is lower ({single:.3f} < per-image {mixed:.3f}): reported"
        result = scoring.metrics_of(self.labels, np.asarray(worst, np.float32), group.key)
        return scoring.job_result(group.job(), "ok", metrics=result, n_test=len(self.labels), labels=self.labels,
                                     scores=np.asarray(worst, np.float32), attack_detail=detail,
                                     config=group.config)


def model_checks(jobs: Sequence[Job], key: str, scores: dict[str, np.ndarray], detector: Detector, split: Split,
                 cfg: CheckConfig, device: torch.device, images: AdversarialImages,
                 groups: Sequence[WorstCase] = ()) -> tuple[list[CheckRow], list[JobResult]]:
    """The sanity checks of one model (``scores``: every job's stored test scores), then its worst cases
    ``groups`` over every candidate, the checks' included (a worst case that raises is a failed row)."""
    model = ModelEvaluation(jobs, scores, detector, split, device, images, key)
    attacks = {job.attack: job.attack_spec.params for job in jobs}
    grid = {(job.attack, job.eps): scores[job.key] for job in jobs}
    found = run_checks(attacks, grid, model.labels, model.evaluate,
                       lambda *args: model.masking(cfg, *args), cfg, int(split.test[0].numel()), key_seed(key),
                       model.sample(cfg))
    return scoring.check_rows(jobs, key, found), [worst_case_or_failure(model, group) for group in groups]


def model_worst_case(group: WorstCase, detector: Detector, split: Split, scores: dict[str, np.ndarray],
                     images: AdversarialImages, device: torch.device) -> JobResult:
    """The worst case of an unchecked model (its jobs' candidates only)."""
    return ModelEvaluation(group.members, scores, detector, split, device, images).worst_case(group)


def worst_case_or_failure(model: ModelEvaluation, group: WorstCase) -> JobResult:
    try:
        return model.worst_case(group)
    except Exception as exc:  # stored as a failed row of its own; the other worst cases go on
        return scoring.job_result(group.job(), "failed", error=f"{type(exc).__name__}: {exc}",
                                     config=group.config)
