"""BGAD (Yao et al., CVPR 2023): normalizing flows on frozen CNN features with an explicit boundary and
the semi-push-pull loss on a few known anomalies; ``bgad-unsup`` is the same flow without anomalies.

Per feature level, every spatial feature vector is one flow sample, conditioned on a 2-D positional
encoding. ``l`` = log p / C (C = feature size). ``bgad-unsup``, the authors' unsupervised form: −log σ(l) on
normal vectors for the first ``normal_only_epochs``, then the (focal) likelihood term plus the pull term on the
normals below the boundary b_n (the β order statistic of the batch's l / normalizer). ``bgad``, as the
authors' ``train_meta_epoch``: the first ``normal_only_epochs`` on the normal images alone, then every epoch
on the normal images plus each known anomaly ``real_repeats`` times as it is and ``pasted_repeats`` times
copy-pasted onto a normal image after 3 random augmentation ops (fresh every epoch, ``augment.py``). A cell
of an anomalous image is anomalous where its mask (nearest-neighbour downsampled) is set, normal elsewhere.
Per batch of cells: the (focal-weighted) likelihood term on the normal cells, plus, when the batch holds
anomalous cells, the pull/push terms around the boundary b_n (the β order statistic of the batch's normal
l / normalizer) and b_a = b_n − τ (``losses.py``).
Score: per level exp(l − max training l), upsampled and summed; map = levels − sum; image score = max.
Surrogates for the attacks (the exp saturates: its gradient is exactly 0 in float32 once l − max < −103,
and the max moves one pixel a step): the per-pixel negative log-likelihood map, pooled by logsumexp
(``nll-lse``) or by the mean of its top 5 % (``nll-top5``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.detector import Detector, DetectorConfig
from robust_ad_bench.core.errors import unknown_choice
from robust_ad_bench.core.registry import register_method
from robust_ad_bench.methods.bgad.augment import copy_paste
from robust_ad_bench.methods.bgad.flow import ConditionalFlow, positional_encoding
from robust_ad_bench.methods.bgad.losses import likelihood_loss, pull_term, pushed_weight_max, semi_push_pull
from robust_ad_bench.methods.common.backbones import PretextFeatures, TorchvisionFeatures
from robust_ad_bench.methods.common.networks import Padding
from robust_ad_bench.methods.common.surrogates import smooth_max, top_fraction_mean
from robust_ad_bench.methods.common.training import (
    MinibatchTrainer,
    Stream,
    make_optimizer,
    steps_per_epoch,
    warmup_cosine_schedule,
)

STANDARDIZE = ("auto", "always", "never")
CELL_LABELS = ("nearest", "area")


@dataclass
class FlowADConfig(DetectorConfig):
    backbone: str = "pretext"  # "pretext" (trained on the normal data) or resnet18, wide_resnet50_2, ...
    weights: str = ""  # weights file of a torchvision backbone; "" = torchvision's cache
    image_size: int = 256  # input size of a torchvision backbone
    pretext_width: int = 8
    pretext_epochs: int = 30
    pretext_lr: float = 2e-3
    # The pretext encoder stands in for a pretrained backbone: it is initialised and trained under its own
    # seed, so `bgad` and `bgad-unsup` (whose runs are seeded by their own job keys) share the same
    # features and differ only in the flow's loss, as with a pretrained backbone.
    pretext_seed: int = 0
    levels: int = 3
    coupling_blocks: int = 8
    clamp: float = 1.9
    pos_dim: int = 32  # the paper: 128
    epochs: int = 12
    batch_size: int = 4096  # feature vectors per step
    lr: float = 1e-3  # the paper: 2e-4 (with 25×8 epochs)
    warmup_fraction: float = 0.1  # of the steps, then cosine decay
    # per-channel standardization of the features with the normal training images' statistics: "auto" only
    # for the pretext encoder (its features have no fixed scale), "always", "never" (the authors: raw
    # features of a pretrained backbone, on which their normalizer and focal cut-offs were set)
    standardize: str = "auto"
    # the authors' boundary terms (shared with bgad-unsup, whose unsupervised form adds the pull term)
    beta: float = 0.01  # rank (fraction) of the normal log-likelihoods that sets the boundary (paper command)
    normalizer: float = 10.0  # l / normalizer in the boundary maths
    boundary_weight: float = 1.0  # weight of the boundary terms (the authors' bgspp_lambda; 0 = likelihood only)
    focal_weighting: bool = True  # the authors' asymmetric focal weights (their paper command sets it)
    normal_only_epochs: int = 1  # first epochs on −log σ(l) alone (the authors' first meta-epoch)

    def __post_init__(self) -> None:
        if self.standardize not in STANDARDIZE:
            raise unknown_choice("standardize setting", self.standardize, STANDARDIZE)
        if not 0 <= self.beta < 1:
            raise ValueError(f"beta must be in [0, 1), got {self.beta}")


@dataclass
class BGADConfig(FlowADConfig):
    tau: float = 0.1  # margin between the normal and the anomaly boundary
    real_repeats: int = 5  # each known anomaly this many times per epoch as it is (the authors' reuse_times)
    pasted_repeats: int = 5  # and this many times copy-pasted after random augmentation (repeat_num - reuse)
    # labels of the feature cells of anomalous images: "nearest" (the authors: the mask downsampled by
    # nearest neighbour) or "area" (anomalous when at least ``cell_area_fraction`` of the cell is defect)
    cell_labels: str = "nearest"
    cell_area_fraction: float = 0.25

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cell_labels not in CELL_LABELS:
            raise unknown_choice("cell labelling", self.cell_labels, CELL_LABELS)
        if not 0 < self.cell_area_fraction <= 1:
            raise ValueError(f"cell_area_fraction must be in (0, 1], got {self.cell_area_fraction}")
        if self.real_repeats < 0 or self.pasted_repeats < 0 or self.real_repeats + self.pasted_repeats < 1:
            raise ValueError(f"real_repeats and pasted_repeats must be >= 0 with a sum >= 1, got "
                             f"{self.real_repeats} and {self.pasted_repeats}")


def _flatten(features: torch.Tensor) -> torch.Tensor:
    """N×C×h×w → (N·h·w)×C."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


@register_method("bgad-unsup")
class FlowAD(Detector):
    """Conditional normalizing flows on frozen multi-level features, maximum likelihood on normals only."""

    Config = FlowADConfig
    version = "3"  # 3: the authors' unsupervised form (pull term after the first epochs), raw torchvision features

    def __init__(self, image_shape, config=None) -> None:
        super().__init__(image_shape, config)
        c = self.config
        if c.backbone == "pretext":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(c.pretext_seed)
                self.backbone: nn.Module = PretextFeatures(self.image_shape, c.pretext_width, c.levels)
        else:
            self.backbone = TorchvisionFeatures(c.backbone, c.weights, c.image_size)
        channels = self.backbone.channels
        self.flows = nn.ModuleList(ConditionalFlow(ch, c.pos_dim, c.coupling_blocks, c.clamp, seed=i)
                                   for i, ch in enumerate(channels))
        for i, ch in enumerate(channels):
            self.register_buffer(f"feat_mean{i}", torch.zeros(1, ch, 1, 1))
            self.register_buffer(f"feat_std{i}", torch.ones(1, ch, 1, 1))
        self.register_buffer("level_max", torch.zeros(len(channels)))

    # -- features and likelihoods --------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Standardized feature maps of each level (stats of the normal training features)."""
        return [(f - getattr(self, f"feat_mean{i}")) / getattr(self, f"feat_std{i}")
                for i, f in enumerate(self.backbone(x))]

    def condition(self, level: int, n: int, height: int, width: int) -> torch.Tensor:
        pos = positional_encoding(self.config.pos_dim, height, width).to(self.device)
        return _flatten(pos.unsqueeze(0)).repeat(n, 1)

    def log_likelihood_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per level, N×h×w maps of l = log p / C."""
        maps = []
        for level, feat in enumerate(self.features(x)):
            n, ch, h, w = feat.shape
            logp = self.flows[level].log_prob(_flatten(feat), self.condition(level, n, h, w))
            maps.append((logp / ch).view(n, h, w))
        return maps

    @property
    def padding(self) -> Padding:
        """How the feature maps cover the image: the pretext encoder's padding, none for a torchvision
        backbone (it resizes the whole image)."""
        if isinstance(self.backbone, PretextFeatures):
            return self.backbone.padding
        return Padding(*self.image_shape[1:], multiple=1)

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        padding = self.padding
        total = torch.zeros(len(x), *padding.padded, device=x.device)
        for level, l_map in enumerate(self.log_likelihood_maps(x)):
            prob = torch.exp(l_map - self.level_max[level]).unsqueeze(1)
            total = total + F.interpolate(prob, size=padding.padded, mode="bilinear",
                                          align_corners=False).squeeze(1)
        return len(self.flows) - padding.crop(total)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.anomaly_map(x).flatten(1).amax(1)

    def nll_map(self, x: torch.Tensor) -> torch.Tensor:
        """The anomaly map before the exp: per level max training l − l, upsampled and summed (N×H×W)."""
        total = torch.zeros(len(x), *self.image_shape[1:], device=x.device)
        for level, l_map in enumerate(self.log_likelihood_maps(x)):
            nll = (self.level_max[level] - l_map).unsqueeze(1)
            total = total + F.interpolate(nll, size=self.image_shape[1:], mode="bilinear",
                                          align_corners=False).squeeze(1)
        return total

    def surrogates(self) -> dict:
        return {"nll-lse": lambda x: smooth_max(self.nll_map(x)),
                "nll-top5": lambda x: top_fraction_mean(self.nll_map(x), 0.05)}

    # -- training -------------------------------------------------------------------------------------
    def fit(self, train: TrainSet) -> None:
        c = self.config
        images = train.images.to(self.device)
        if isinstance(self.backbone, PretextFeatures):
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(c.pretext_seed)
                self.backbone.fit(images, c.pretext_epochs, c.pretext_lr, report=self.report)
        self.backbone.eval()
        with torch.no_grad():
            raw = [torch.cat(parts) for parts in zip(*(self.backbone(b) for b in images.split(256)))]
        if self.standardizes:  # otherwise the buffers stay mean 0, std 1: raw features
            for i, f in enumerate(raw):
                getattr(self, f"feat_mean{i}").copy_(f.mean((0, 2, 3), keepdim=True))
                getattr(self, f"feat_std{i}").copy_(f.std((0, 2, 3), keepdim=True).clamp_min(1e-4))
        normal = [self.level_vectors(i, f) for i, f in enumerate(raw)]
        trainer = MinibatchTrainer(self, c.epochs, c.batch_size, report=self.report)
        trainer.run(*self.streams(train, images, normal, trainer))
        with torch.no_grad():  # the per-level maximum of the training log-likelihoods anchors the score
            maps = [torch.cat(parts) for parts in zip(*(self.log_likelihood_maps(b) for b in images.split(256)))]
            self.level_max.copy_(torch.stack([m.max() for m in maps]))

    @property
    def standardizes(self) -> bool:
        """Whether the features are standardized per channel (``standardize``; "auto": the pretext encoder)."""
        s = self.config.standardize
        return s == "always" or (s == "auto" and isinstance(self.backbone, PretextFeatures))

    def streams(self, train: TrainSet, images: torch.Tensor, normal: list[tuple[torch.Tensor, torch.Tensor]],
                trainer: MinibatchTrainer) -> list[Stream]:
        """One training stream per level: the level's normal feature vectors and their conditions."""
        c = self.config
        return [self.level_stream(level, data, trainer, c.epochs * steps_per_epoch(len(data[0]), c.batch_size))
                for level, data in enumerate(normal)]

    def level_stream(self, level: int, data: tuple[torch.Tensor, ...], trainer: MinibatchTrainer, total: int,
                     refresh: Callable[[int], tuple[torch.Tensor, ...]] | None = None) -> Stream:
        """The training stream of one level's flow: its own Adam, linear warm-up over ``warmup_fraction``
        of its ``total`` steps, then cosine decay to zero."""
        c = self.config
        optimizer = make_optimizer(self.flows[level].parameters(), c.lr)
        schedule = warmup_cosine_schedule(optimizer, total, warmup=max(1, round(c.warmup_fraction * total)))

        def loss(*batch: torch.Tensor) -> torch.Tensor:
            return self.step_loss(level, *batch, epoch=trainer.epoch)

        return Stream(data, loss, optimizer, schedule, refresh)

    def train(self, mode: bool = True) -> FlowAD:
        super().train(mode)
        self.backbone.eval()  # frozen feature extractor
        return self

    def level_vectors(self, level: int, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature vectors of one level (standardized when ``standardizes``) and their positional conditions."""
        feat = (raw - getattr(self, f"feat_mean{level}")) / getattr(self, f"feat_std{level}")
        n, _, h, w = feat.shape
        return _flatten(feat), self.condition(level, n, h, w)

    def step_loss(self, level: int, x: torch.Tensor, cond: torch.Tensor, epoch: int) -> torch.Tensor:
        """The authors' unsupervised loss (``engines/bgad_train_engine.py``): on the first ``normal_only_epochs``
        mean −log σ(l); then the (focal-weighted) likelihood term plus the pull term on the batch's normals
        at or below the boundary b_n (the lowest β of them), focal-weighted when set."""
        c = self.config
        l_normal = self.flows[level].log_prob(x, cond) / x.shape[1]
        if epoch < c.normal_only_epochs:
            return likelihood_loss(l_normal, c.normalizer)
        loss = likelihood_loss(l_normal, c.normalizer, focal=c.focal_weighting)
        if c.boundary_weight == 0:
            return loss
        pull, _ = pull_term(l_normal, c.beta, c.normalizer, c.focal_weighting)
        return loss + c.boundary_weight * pull


@register_method("bgad")
class BGAD(FlowAD):
    """BGAD (Yao et al., 2023): flows + explicit boundary + semi-push-pull loss on a few known anomalies."""

    Config = BGADConfig
    version = "4"  # 4: raw torchvision features, cell_labels, the pushed focal weight's maximum kept
    needs_anomalies = True

    def __init__(self, image_shape, config=None) -> None:
        super().__init__(image_shape, config)
        # per level, the largest abnormal focal weight of a pushed anomalous cell over the run (the weight
        # 0.53(1 + e^u)²/|u| grows without bound as u = l/normalizer nears 0; the authors divide unguarded)
        self.register_buffer("push_weight_max", torch.zeros(len(self.flows)))

    def fit(self, train: TrainSet) -> None:
        self.push_weight_max.zero_()
        super().fit(train)
        values = ", ".join(f"{v:.3g}" for v in self.push_weight_max.tolist())
        self.report(self.config.epochs, self.config.epochs, f"largest pushed focal weight per level: {values}")

    def streams(self, train: TrainSet, images: torch.Tensor, normal: list[tuple[torch.Tensor, torch.Tensor]],
                trainer: MinibatchTrainer) -> list[Stream]:
        """Per level, a stream of labelled cells (vector, condition, 0 normal / 1 anomalous) rebuilt every epoch:
        the normal images' cells, and after ``normal_only_epochs`` those of the anomalous images of the epoch."""
        c = self.config
        labelled = [(v, cond, torch.zeros(len(v), device=self.device)) for v, cond in normal]
        if train.anomalies is None or len(train.anomalies) == 0:
            warnings.warn("bgad got no known anomalies: trained on normal data only (the few-anomaly protocol is "
                          "off for this dataset; set n_anomalies)", stacklevel=2)
            return [self.level_stream(level, data, trainer, c.epochs * steps_per_epoch(len(data[0]), c.batch_size))
                    for level, data in enumerate(labelled)]
        anomalies = train.anomalies.to(self.device)
        masks = train.anomaly_masks
        if masks is None:  # no pixel labels: the whole image counts as anomalous
            masks = torch.ones(len(anomalies), *anomalies.shape[2:], dtype=torch.bool)
        masks = masks.to(self.device).bool()
        real = self.labelled_cells(anomalies.repeat(c.real_repeats, 1, 1, 1), masks.repeat(c.real_repeats, 1, 1))
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
        pasted_for: dict[int, list[tuple[torch.Tensor, ...]]] = {}

        def epoch_cells(epoch: int) -> list[tuple[torch.Tensor, ...]]:
            """The anomalous images' cells of ``epoch`` per level: the real ones and fresh pastes (made once
            per epoch, when the first level asks)."""
            if epoch not in pasted_for:
                pasted_for.clear()
                n = c.pasted_repeats
                pasted = copy_paste(anomalies.repeat(n, 1, 1, 1), masks.repeat(n, 1, 1), images, generator)
                pasted_for[epoch] = self.labelled_cells(*pasted)
            return [tuple(torch.cat(parts) for parts in zip(*levels)) for levels in zip(real, pasted_for[epoch])]

        def refresher(level: int):
            def refresh(epoch: int) -> tuple[torch.Tensor, ...]:
                if epoch < c.normal_only_epochs:
                    return labelled[level]
                return tuple(torch.cat(parts) for parts in zip(labelled[level], epoch_cells(epoch)[level]))
            return refresh

        streams = []
        for level, data in enumerate(labelled):
            rows = len(data[0]) + len(anomalies) * (c.real_repeats + c.pasted_repeats) * len(data[0]) // len(images)
            normal_epochs = min(c.normal_only_epochs, c.epochs)
            total = (normal_epochs * steps_per_epoch(len(data[0]), c.batch_size)
                     + (c.epochs - normal_epochs) * steps_per_epoch(rows, c.batch_size))
            streams.append(self.level_stream(level, data, trainer, total, refresh=refresher(level)))
        return streams

    def labelled_cells(self, images: torch.Tensor, masks: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Per level: the feature vectors of every cell of ``images``, their conditions, and their labels.
        ``cell_labels: nearest``: 1 where the nearest-neighbour downsampled mask is set (the authors'
        ``F.interpolate(mode='nearest')``: one pixel per cell decides); ``area``: 1 where at least
        ``cell_area_fraction`` of the cell's pixels are defect."""
        c = self.config
        with torch.no_grad():
            raw = [torch.cat(parts) for parts in zip(*(self.backbone(b) for b in images.split(256)))]
        cells = self.padding.pad(masks[:, None].float())  # the feature maps cover the padded image
        out = []
        for level, f in enumerate(raw):
            if c.cell_labels == "nearest":
                labels = F.interpolate(cells, size=f.shape[-2:], mode="nearest")
            else:
                labels = (F.adaptive_avg_pool2d(cells, f.shape[-2:]) >= c.cell_area_fraction).float()
            vectors, cond = self.level_vectors(level, f)
            out.append((vectors, cond, _flatten(labels).squeeze(1)))
        return out

    def step_loss(self, level: int, x: torch.Tensor, cond: torch.Tensor, labels: torch.Tensor,  # type: ignore[override]
                  epoch: int) -> torch.Tensor:
        """The authors' per-batch loss: on the normal-only epochs −log σ(l) on normals; later the (focal)
        likelihood term on the normal cells, plus λ·(pull + push) when the batch holds anomalous cells."""
        c = self.config
        l_all = self.flows[level].log_prob(x, cond) / x.shape[1]
        anomalous = labels > 0.5
        l_normal, l_anomalous = l_all[~anomalous], l_all[anomalous]
        if epoch < c.normal_only_epochs:
            return likelihood_loss(l_normal, c.normalizer)
        loss = likelihood_loss(l_normal, c.normalizer, focal=c.focal_weighting)
        if len(l_anomalous) == 0 or len(l_normal) == 0:
            return loss
        pull, push, _ = semi_push_pull(l_normal, l_anomalous, c.beta, c.tau, c.normalizer, c.focal_weighting)
        with torch.no_grad():
            weight = pushed_weight_max(l_normal, l_anomalous, c.beta, c.tau, c.normalizer)
            self.push_weight_max[level] = torch.maximum(self.push_weight_max[level], weight)
        return loss + c.boundary_weight * (pull + push)
