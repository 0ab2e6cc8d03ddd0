"""The grid's jobs as typed records, and every key built from them (this module is the only place keys
are made).

A key is a hash of everything that determines a result, so a finished job is never recomputed and a
changed setting always is:

- ``ModelSpec.key`` (the training key): method, its version and hyper-parameters, the dataset, its version,
  options, class and seed, the protocol, and the labelled anomalies the method trained on (if it did): one
  model on one test set;
- ``ModelSpec.weights_key``: the same without the dataset options that shape only the test set (its file
  under ``models/`` and the seed of its training), so the quick and the full profile share their models;
- ``Job.key``: the training key, the test set (the few-anomaly hold-out), the attack, its version and
  parameters, the norm and eps;
- ``check_key`` / ``certificate_key``: the sanity checks and certificates of one trained model;
- ``WorstCase.key``: the per-image worst case of one trained model at one norm and eps (a derived row).

The JSON payloads hashed here are also what the store keeps of a job (its ``config`` column); keys of
earlier runs stay valid only while these payloads stay the same (``tests/test_pinned_behaviour.py``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from robust_ad_bench.benchmark.protocol.certification import CertifyConfig
from robust_ad_bench.benchmark.protocol.checks import CHECKS_VERSION, CheckConfig
from robust_ad_bench.benchmark.protocol.worst_case import WORST_CASE_VERSION
from robust_ad_bench.core.params import config_dict
from robust_ad_bench.datasets.protocols import SplitSpec, stored_params, test_only_options


def content_key(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _few_payload(split: SplitSpec) -> dict[str, Any] | None:
    if split.n_anomalies <= 0:
        return None
    known = sorted(split.known_defects) if split.known_defects else None
    return {"n_anomalies": split.n_anomalies, "known_defects": known}


def _protocol_payload(split: SplitSpec) -> dict[str, Any]:
    """Empty for the default one-class protocol, so the keys of one-class jobs stay what they were."""
    if split.protocol == "one-class":
        return {}
    return {"protocol": split.protocol, "contamination": split.contamination}


@dataclass(frozen=True)
class ModelSpec:
    """What determines one trained model."""

    method: str
    method_version: str
    params: dict[str, Any]  # the method's hyper-parameters (``config_dict`` of its Config)
    dataset_version: str
    split: SplitSpec
    trains_on_anomalies: bool  # the method needs anomalies and the grid holds some out
    # the dataset options that change its data (``Dataset.key_params``: transforms, never the data root);
    # in the payload only when there are some, so the keys of datasets without options stay what they were
    dataset_params: dict[str, Any] = field(default_factory=dict)

    def _base_payload(self, dataset_params: dict[str, Any]) -> dict[str, Any]:
        s = self.split
        payload = {"method": self.method, "method_version": self.method_version, "params": self.params,
                   "dataset": s.dataset, "dataset_version": self.dataset_version, "normal_class": s.normal_class,
                   "seed": s.seed, **_protocol_payload(s)}
        if dataset_params:
            payload["dataset_params"] = dataset_params
        if self.trains_on_anomalies:
            payload["anomalies_seen"] = _few_payload(s)
        return payload

    def weights_payload(self) -> dict[str, Any]:
        """What determines the trained weights: the payload without the dataset options that shape only
        the test set, when the training data cannot depend on the test set (the one-class protocol, no
        labelled anomalies trained on: those are drawn from the test anomalies)."""
        params = self.dataset_params
        if self.split.protocol == "one-class" and not self.trains_on_anomalies:
            test_only = test_only_options(self.split.dataset)
            params = {k: v for k, v in params.items() if k not in test_only}
        return self._base_payload(params)

    @property
    def weights_key(self) -> str:
        """The key of the trained weights (their file, the seed of their training): a grid on a smaller test
        set evaluates the very model the full test set does."""
        return content_key(self.weights_payload())

    def payload(self) -> dict[str, Any]:
        """The training key's payload: the model and the data it is tested on. It names the weights' key when
        that differs (so a quick grid's results are keyed by the weights they were computed with)."""
        payload = self._base_payload(self.dataset_params)
        weights = self.weights_payload()
        if weights != payload:
            payload["weights"] = content_key(weights)
        return payload

    @property
    def key(self) -> str:
        return content_key(self.payload())


@dataclass(frozen=True)
class AttackSpec:
    """One attack at one budget."""

    name: str
    version: str
    params: dict[str, Any]  # ``config_dict`` of the attack's Config
    norm: str  # linf, l2, or none (clean)
    eps: float


@dataclass(frozen=True)
class Job:
    """One cell of the grid: a trained model under one attack at one eps."""

    model: ModelSpec
    attack_spec: AttackSpec
    train_key: str
    key: str
    eval_samples: int = 1  # draws averaged per evaluated score (> 1 only for stochastic detectors)

    @classmethod
    def build(cls, model: ModelSpec, attack: AttackSpec, eval_samples: int = 1) -> Job:
        train_key = model.key
        payload = {"train_key": train_key, **job_payload(model, attack, eval_samples)}
        return cls(model, attack, train_key, content_key(payload), eval_samples)

    # the identity of a job as the store, the leaderboard and the CLI read it
    method = property(lambda self: self.model.method)
    dataset = property(lambda self: self.model.split.dataset)
    normal_class = property(lambda self: self.model.split.normal_class)
    seed = property(lambda self: self.model.split.seed)
    attack = property(lambda self: self.attack_spec.name)
    norm = property(lambda self: self.attack_spec.norm)
    eps = property(lambda self: self.attack_spec.eps)

    @property
    def config(self) -> dict[str, Any]:
        """The payload the job key hashes (stored beside the result)."""
        return job_payload(self.model, self.attack_spec, self.eval_samples)


def job_payload(model: ModelSpec, attack: AttackSpec, eval_samples: int = 1) -> dict[str, Any]:
    payload = model.payload()
    few = _few_payload(model.split)
    if few:  # the reduced test set
        payload["few_anomalies"] = few
    if eval_samples > 1:  # only stochastic detectors: the keys of the others stay what they were
        payload["eval_samples"] = eval_samples
    return {**payload, "attack": attack.name, "attack_version": attack.version, "attack_params": attack.params,
            "norm": attack.norm, "eps": round(attack.eps, 10)}


@dataclass(frozen=True)
class WorstCase:
    """The per-image worst case of one trained model at one norm and eps: a derived result stored as a row
    of its own (attack ``worst-<norm>``), like any other cell. Its candidates are the images of the jobs at
    that eps (two or more attacks), of the model's jobs of that norm at smaller eps (so the worst case cannot
    rise with eps), and, when the model is checked, the checks' adversarial images at that eps or below
    (``checks``: the check key that produced them)."""

    norm: str
    eps: float
    jobs: tuple[Job, ...]  # the attacked jobs at this eps
    key: str
    smaller: tuple[Job, ...] = ()  # the model's jobs of this norm at a smaller eps
    checks: str | None = None  # the check key whose adversarial images join (None: checks off)

    attack = property(lambda self: f"worst-{self.norm}")

    @property
    def members(self) -> tuple[Job, ...]:
        return self.jobs + self.smaller

    @property
    def config(self) -> dict[str, Any]:
        """What the store keeps of it: its jobs' payload (model, test set, draws), the attacks combined with
        their versions and parameters (one configuration per leaderboard cell), and the candidates' sources."""
        shared = {k: v for k, v in self.jobs[0].config.items() if not k.startswith("attack")}
        return {**shared, "derived": "worst-case", "version": WORST_CASE_VERSION,
                "attacks": [j.attack for j in self.jobs],
                "attack_configs": {j.attack: {"version": j.attack_spec.version, "params": j.attack_spec.params}
                                   for j in self.jobs},
                "smaller_eps": sorted({round(j.eps, 10) for j in self.smaller}),
                "jobs": [j.key for j in self.members], "checks": self.checks, "norm": self.norm,
                "eps": round(self.eps, 10)}

    def job(self) -> Job:
        """A job record carrying the identity of the row (method, dataset, class, seed, norm, eps)."""
        first = self.jobs[0]
        spec = AttackSpec(self.attack, WORST_CASE_VERSION, {}, self.norm, self.eps)
        return Job(first.model, spec, first.train_key, self.key, first.eval_samples)


def worst_case_groups(jobs: Sequence[Job], checks: str | None = None) -> list[WorstCase]:
    """Per norm and eps > 0 that two or more attacks of one trained model ran: its worst case (over those
    attacks, the model's jobs of the norm at smaller eps and, with ``checks``, that check key's images)."""
    groups: dict[tuple[str, float], list[Job]] = {}
    for job in jobs:
        if job.norm != "none" and job.eps > 0:
            groups.setdefault((job.norm, round(job.eps, 10)), []).append(job)
    out = []
    for (norm, eps), members in groups.items():
        if len({j.attack for j in members}) >= 2:
            smaller = tuple(j for (n, e), js in groups.items() if n == norm and e < eps for j in js)
            key = content_key({"worst_case": WORST_CASE_VERSION, "train_key": members[0].train_key,
                               "jobs": sorted(j.key for j in (*members, *smaller)), "checks": checks})
            out.append(WorstCase(norm, members[0].eps, tuple(members), key, smaller, checks))
    return out


def check_key(jobs: Sequence[Job], checks: CheckConfig) -> str | None:
    """Key of the sanity checks of one trained model (``jobs``: all its jobs); None when checks are off."""
    if not checks.enabled:
        return None
    attacks = {job.attack: [job.attack_spec.version, job.attack_spec.params] for job in jobs}
    eps = sorted({(job.attack, job.eps) for job in jobs})
    payload = {"train_key": jobs[0].train_key, "checks": config_dict(checks), "version": CHECKS_VERSION,
               "attacks": attacks, "eps": eps, "test_set": _few_payload(jobs[0].model.split)}
    if jobs[0].eval_samples > 1:
        payload["eval_samples"] = jobs[0].eval_samples
    return content_key(payload)


def certificate_key(jobs: Sequence[Job], certify: CertifyConfig, certifiable: bool) -> str | None:
    """Key of the certificates of one trained model; None when the grid does not certify this method."""
    if certify.methods == "none" or certify.methods == "certifiable" and not certifiable:
        return None
    return content_key({"train_key": jobs[0].train_key, "certify": config_dict(certify),
                        "test_set": _few_payload(jobs[0].model.split)})


@dataclass(frozen=True)
class StoredConfig:
    """The parts of a stored job payload (the store's ``config`` column) that reports read."""

    payload: dict[str, Any]

    @classmethod
    def parse(cls, text: str | dict[str, Any] | None) -> StoredConfig:
        return cls(json.loads(text) if isinstance(text, str) else dict(text or {}))

    def weights_key(self, train_key: str) -> str:
        """The key of the weights (their file under ``models/``) of the job with training key ``train_key``."""
        return str(self.payload.get("weights") or train_key)

    @property
    def saw_anomalies(self) -> bool:
        """Whether the model trained on labelled anomalies."""
        return bool(self.payload.get("anomalies_seen"))

    def split(self, data_root: str | None = None) -> SplitSpec:
        """The split the job was tested on (files read under ``data_root``, else ``$ROBUST_AD_BENCH_DATA``)."""
        p = self.payload
        few = p.get("few_anomalies") or {}
        known = few.get("known_defects")
        return SplitSpec(p["dataset"], str(p["normal_class"]), int(p["seed"]), few.get("n_anomalies", 0),
                         tuple(known) if known else None, p.get("protocol", "one-class"), p.get("contamination"),
                         stored_params(p["dataset"], p.get("dataset_params")), data_root)
