"""BGAD (Yao et al., CVPR 2023): normalizing flows on frozen CNN features with an explicit boundary and
the semi-push-pull loss on a few known anomalies; ``bgad-unsup`` is the same flow without anomalies.

Per feature level, every spatial feature vector is one flow sample, conditioned on a 2-D positional
encoding. ``l`` = log p / C (C = feature size). Normal-only loss: −log σ(l). With anomalies, the normal
boundary ``b_n`` is the β-quantile of the batch's normal ``l / normalizer`` (the anomalies never move
it), ``b_a = b_n − τ``, and the loss adds mean(b_n − l) over normals below b_n (pull) and
mean(l − b_a) over anomalous vectors above b_a (push).
Score: per level exp(l − max training l), upsampled and summed; map = levels − sum; image score = max.
Surrogates for the attacks (the exp saturates: its gradient is exactly 0 in float32 once l − max < −103,
and the max moves one pixel a step): the per-pixel negative log-likelihood map, pooled by logsumexp
(``nll-lse``) or by the mean of its top 5 % (``nll-top5``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.detector import Detector, DetectorConfig
from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.core.registry import register_method
from robust_ad_bench.methods.bgad.augment import paste_defects
from robust_ad_bench.methods.bgad.flow import ConditionalFlow, positional_encoding
from robust_ad_bench.methods.bgad.losses import semi_push_pull
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


@dataclass
class BGADConfig(FlowADConfig):
    beta: float = 0.01  # quantile of the normal log-likelihoods that sets the boundary
    tau: float = 0.1  # margin between the normal and the anomaly boundary
    normalizer: float = 10.0  # l / normalizer in the boundary maths
    boundary_weight: float = 1.0  # weight of the semi-push-pull terms
    focal_gamma: float = 0.0  # > 0: focal weighting of the terms
    normal_only_epochs: int = 1
    n_pasted: int = 200  # synthetic anomalies from defect cut-and-paste (0: off)
    anomaly_fraction: float = 0.25  # anomalous vectors per step, as a fraction of batch_size
    mask_threshold: float = 0.25  # a feature cell is anomalous when this fraction of its pixels is


def _flatten(features: torch.Tensor) -> torch.Tensor:
    """N×C×h×w → (N·h·w)×C."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


@register_method("bgad-unsup")
class FlowAD(Detector):
    """Conditional normalizing flows on frozen multi-level features, maximum likelihood on normals only."""

    Config = FlowADConfig
    version = "2"

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
        for i, f in enumerate(raw):
            getattr(self, f"feat_mean{i}").copy_(f.mean((0, 2, 3), keepdim=True))
            getattr(self, f"feat_std{i}").copy_(f.std((0, 2, 3), keepdim=True).clamp_min(1e-4))
        normal = [self.level_vectors(i, f) for i, f in enumerate(raw)]
        anomalous = self.anomaly_vectors(train, images)
        trainer = MinibatchTrainer(self, c.epochs, c.batch_size, report=self.report)
        trainer.run(*(self.level_stream(level, vectors, cond, anomalous[level], trainer)
                      for level, (vectors, cond) in enumerate(normal)))
        with torch.no_grad():  # the per-level maximum of the training log-likelihoods anchors the score
            maps = [torch.cat(parts) for parts in zip(*(self.log_likelihood_maps(b) for b in images.split(256)))]
            self.level_max.copy_(torch.stack([m.max() for m in maps]))

    def level_stream(self, level: int, vectors: torch.Tensor, cond: torch.Tensor,
                     anomalous: tuple[torch.Tensor, torch.Tensor], trainer: MinibatchTrainer) -> Stream:
        """The training stream of one level's flow: its own Adam, linear warm-up over ``warmup_fraction``
        of its steps, then cosine decay to zero."""
        c = self.config
        optimizer = make_optimizer(self.flows[level].parameters(), c.lr)
        total = c.epochs * steps_per_epoch(len(vectors), c.batch_size)
        schedule = warmup_cosine_schedule(optimizer, total, warmup=max(1, round(c.warmup_fraction * total)))

        def loss(x: torch.Tensor, x_cond: torch.Tensor) -> torch.Tensor:
            return self.step_loss(level, x, x_cond, anomalous, trainer.epoch)

        return Stream((vectors, cond), loss, optimizer, schedule)

    def train(self, mode: bool = True) -> FlowAD:
        super().train(mode)
        self.backbone.eval()  # frozen feature extractor
        return self

    def level_vectors(self, level: int, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardized feature vectors of one level and their positional conditions."""
        feat = (raw - getattr(self, f"feat_mean{level}")) / getattr(self, f"feat_std{level}")
        n, _, h, w = feat.shape
        return _flatten(feat), self.condition(level, n, h, w)

    def anomaly_vectors(self, train: TrainSet, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """No anomalies for the unsupervised flow."""
        empty = torch.zeros(0, device=self.device)
        return [(empty, empty) for _ in self.flows]

    def step_loss(self, level: int, x: torch.Tensor, cond: torch.Tensor,
                  anomalous: tuple[torch.Tensor, torch.Tensor], epoch: int) -> torch.Tensor:
        """Maximum likelihood on normal vectors: mean −log σ(l)."""
        l_normal = self.flows[level].log_prob(x, cond) / x.shape[1]
        return -F.logsigmoid(l_normal).mean()


@register_method("bgad")
class BGAD(FlowAD):
    """BGAD (Yao et al., 2023): flows + explicit boundary + semi-push-pull loss on a few known anomalies."""

    Config = BGADConfig
    version = "2"
    needs_anomalies = True

    def anomaly_vectors(self, train: TrainSet, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Feature vectors of the anomalous cells of the known (and pasted) anomalies, per level."""
        c = self.config
        if train.anomalies is None or len(train.anomalies) == 0:
            warnings.warn("bgad got no known anomalies: trained on normal data only (as bgad-unsup)",
                          stacklevel=2)
            return super().anomaly_vectors(train, images)
        anomalies = train.anomalies.to(self.device)
        masks = train.anomaly_masks
        if masks is None:  # no pixel labels: the whole image counts as anomalous
            masks = torch.ones(len(anomalies), *anomalies.shape[2:], dtype=torch.bool)
        masks = masks.to(self.device)
        if c.n_pasted > 0:
            g = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
            pasted, pasted_masks = paste_defects(anomalies, masks, images, c.n_pasted, g)
            anomalies, masks = torch.cat([anomalies, pasted]), torch.cat([masks, pasted_masks])
        with torch.no_grad():
            raw = [torch.cat(parts) for parts in zip(*(self.backbone(b) for b in anomalies.split(256)))]
        cells = self.padding.pad(masks.unsqueeze(1).float())  # the feature maps cover the padded image
        out = []
        for level, f in enumerate(raw):
            cell = F.adaptive_avg_pool2d(cells, f.shape[-2:])
            keep = _flatten(cell).squeeze(1) >= c.mask_threshold
            vectors, cond = self.level_vectors(level, f)
            out.append((vectors[keep], cond[keep]))
        if sum(len(v) for v, _ in out) == 0:
            raise BenchError(f"no feature cell of the known anomalies reaches mask_threshold {c.mask_threshold}")
        return out

    def step_loss(self, level: int, x: torch.Tensor, cond: torch.Tensor,
                  anomalous: tuple[torch.Tensor, torch.Tensor], epoch: int) -> torch.Tensor:
        c = self.config
        vectors, a_cond = anomalous
        if epoch < c.normal_only_epochs or len(vectors) == 0:
            return super().step_loss(level, x, cond, anomalous, epoch)
        k = max(1, round(c.batch_size * c.anomaly_fraction))
        pick = torch.randint(len(vectors), (min(k, len(vectors)),), device=self.device)
        logp = self.flows[level].log_prob(torch.cat([x, vectors[pick]]), torch.cat([cond, a_cond[pick]]))
        l_all = logp / x.shape[1]
        l_normal, l_anomalous = l_all[: len(x)], l_all[len(x):]
        pull, push, _ = semi_push_pull(l_normal, l_anomalous, c.beta, c.tau, c.normalizer, c.focal_gamma)
        return -F.logsigmoid(l_normal).mean() + c.boundary_weight * (pull + push)
