"""COBRA (Mirzaei et al., ICLR 2025) and its two ablations, one model family:

- ``contrastive``: a contrastive encoder over normal images and their pseudo-anomalies (multi-positive
  NT-Xent + a transformation classifier, as CSI); no adversarial training.
- ``contrastive-at``: the same, adversarially trained with one attack (maximize NT-Xent between a view and
  its positive) and plain NT-Xent over [view 1, view 2, adversarial view 1]: spurious negatives kept, no
  opposite-pair attack.
- ``cobra``: three attacks per batch (intra-group, opposite-pair, transformation classification) and
  multi-positive NT-Xent over [view 1, view 2, intra copy, opposite copy] + cross-entropy of the
  transformation classifier on clean and attacked views.
- ``cobra-no-opposite``: ``cobra`` with the opposite-pair attack replaced by a second intra-group attack (the
  ablation arm that isolates the paper's contribution).
All four share the encoder and the authors' CSI-style score over the training feature bank (every group,
averaged over seeded augmentation draws). The score takes a max
over the bank (one bank row gets the gradient at a time): attacks also follow its surrogate ``bank-lse``,
the same score with a logsumexp over the bank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robust_ad_bench.attacks.gradient import pgd
from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.detector import Detector, DetectorConfig
from robust_ad_bench.core.errors import unknown_choice
from robust_ad_bench.core.registry import register_method
from robust_ad_bench.methods.cobra import losses
from robust_ad_bench.methods.cobra.pseudo_anomalies import (
    PSEUDO_ANOMALIES,
    choose_pseudo_anomaly,
    expand_groups,
    num_groups,
    random_flip,
    simclr_augment,
)
from robust_ad_bench.methods.common.networks import ENCODERS, encoder_for
from robust_ad_bench.methods.common.surrogates import relative_smooth_max
from robust_ad_bench.methods.common.training import (
    OPTIMIZERS,
    MinibatchTrainer,
    Stream,
    make_optimizer,
    resample,
    steps_per_epoch,
    training_eps,
    warmup_cosine_schedule,
)

SCORE_GROUPS = ("all", "identity")


@dataclass
class ContrastiveConfig(DetectorConfig):
    # encoder: "auto" = small CNN below 32 px, ResNet from 32 px (ImageNet stem from 224 px);
    # ResNet-18 is width 64, blocks (2, 2, 2, 2), stem_stride 1. The defaults are sized for the embedded
    # default run on a CPU (a 3×PGD step per batch on a full ResNet-18 would take minutes there).
    backbone: str = "auto"
    width: int = 8
    blocks: tuple[int, ...] = (1, 1)
    stem_stride: int = 2  # 2: the ResNet's CIFAR stem halves the resolution (cheaper); 1 as ResNet-18
    proj_dim: int = 128
    # pseudo-anomalies: "rotation" (4 groups; on non-square images the 90° and 270° turns are resized back
    # to H×W, see ``quarter_turn``), "scar" (2 groups), "auto" (rotation when rotated training images lie
    # clearly off the training set, see ``auto_rotation_threshold``; else scar)
    pseudo_anomaly: str = "auto"
    auto_rotation_threshold: float = 2.0
    # scar strip sides as fractions of the smaller image side. The authors' 7–40 × 10–40 px at 224 px
    # (scar.STRIP_WIDTH/LENGTH, set by the paper configs) is 1–6 px at the embedded 32 px, which the
    # transformation classifier does not learn; the default is the smallest size tried whose classifier
    # accuracy on held-out training normals is >= 0.6 on every texture (README, "Choices")
    scar_width: tuple[float, float] = (0.15, 0.4)
    scar_length: tuple[float, float] = (0.25, 0.6)
    # the views' colour jitter as the authors' ColorJitterLayer: contrast, saturation and value factors in
    # 1 ± color_jitter, hue turned by ± hue_jitter (times 255/360 of the circle), p = 0.8
    color_jitter: float = 0.4
    hue_jitter: float = 0.1
    crop_min_scale: float = 1.0  # random resized crop of the views, area in [crop_min_scale, 1] (1 = off)
    # the score's views, when the views are cropped (crop_min_scale < 1, the authors' low-resolution setting):
    # crop area fixed at this fraction (the authors' eval.py: resize_factor 0.54, resize_fix); None: the
    # training range
    score_crop_scale: float | None = 0.54
    temperature: float = 0.5
    # optimization: "adam", or the paper's "lars" (SGD + layer-wise trust ratio, momentum 0.9);
    # linear warm-up from lr to warmup_multiplier·lr (the authors' 10×; none without warm-up epochs), then
    # cosine decay to zero
    optimizer: str = "adam"
    lr: float = 3e-3
    weight_decay: float = 1e-6
    warmup_epochs: int = 0
    warmup_multiplier: float = 10.0
    epochs: int = 20
    batch_size: int = 64
    # images per epoch: the training set repeated and topped up with a random subset, drawn once (the
    # authors' 10,000 on MVTec); 0 = the training set as it is
    samples_per_epoch: int = 0
    # the score averages each group's features over this many augmented draws (flip, pseudo-anomaly, view
    # augmentation) made from a generator seeded with score_seed at every call: the score is deterministic
    score_draws: int = 10
    score_seed: int = 0
    # score groups: "all" (the image and its pseudo-anomalies, the authors' score) or "identity" (the image
    # only; the scar-group terms rank defective textures as more normal at the embedded budget, README)
    score_groups: str = "all"

    def __post_init__(self) -> None:
        for kind, value, valid in (("backbone", self.backbone, ENCODERS), ("optimizer", self.optimizer, OPTIMIZERS),
                                   ("pseudo-anomaly", self.pseudo_anomaly, PSEUDO_ANOMALIES),
                                   ("score groups", self.score_groups, SCORE_GROUPS)):
            if value not in valid:
                raise unknown_choice(kind, value, valid)
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"epochs must be >= 1 and batch_size >= 2, got {self.epochs}, {self.batch_size}")
        if self.score_crop_scale is not None and not 0 < self.score_crop_scale <= 1:
            raise ValueError(f"score_crop_scale must be in (0, 1] or null, got {self.score_crop_scale}")
        if self.score_draws < 1 or self.samples_per_epoch < 0 or self.warmup_multiplier < 1:
            raise ValueError("score_draws must be >= 1, samples_per_epoch >= 0 and warmup_multiplier >= 1, got "
                             f"{self.score_draws}, {self.samples_per_epoch}, {self.warmup_multiplier}")


@dataclass
class ContrastiveATConfig(ContrastiveConfig):
    train_eps: float | None = None  # Linf budget of the training attacks; None: the dataset's largest
    train_steps: int = 2  # PGD steps of each training attack (paper: 10)


@dataclass
class CobraConfig(ContrastiveATConfig):
    # the opposite-pair attack (the paper's contribution); off: the 4th view is an intra-group attack of view
    # 2 instead (same views and cost), which is the ablation arm ``cobra-no-opposite``
    opposite_pair_attack: bool = True
    opposite_pair_loss: bool = False  # the explicit opposite-pair term (off in the authors' training loop)
    opposite_pair_weight: float = 1.0


class ContrastiveEncoder(nn.Module):
    """Backbone + projection MLP (d → d → proj_dim) + K-way transformation classifier."""

    def __init__(self, image_shape: tuple[int, int, int], c: ContrastiveConfig, groups: int) -> None:
        super().__init__()
        self.backbone = encoder_for(c.backbone, image_shape, c.width, c.blocks, c.stem_stride)
        d = self.backbone.out_dim
        self.projection = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, c.proj_dim))
        self.classifier = nn.Linear(d, groups)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone(x)
        return self.projection(h), self.classifier(h)


@register_method("contrastive")
class Contrastive(Detector):
    """Contrastive encoder on normal images + pseudo-anomalies (CSI-style), no adversarial training."""

    # 2: the authors' scar, score over both groups and 10 draws, LARS on every parameter; 3: the authors' view
    # colour jitter (hue, contrast/HSV in random order, jitter before the crop), the fixed scoring crop, and no
    # bias before batch norm in the small CNN (digits)
    version = "3"
    Config = ContrastiveConfig
    below_chance_note = ("the authors' score over both groups: on the 32-px textures the scarred copies' terms rank "
                         "defects as normal (methods/cobra/README.md); score_groups: identity scores without them")

    def __init__(self, image_shape, config=None) -> None:
        super().__init__(image_shape, config)
        c = self.config
        # "auto" is decided in fit; the classifier is built for 4 groups then and trimmed if scar wins
        self.groups = 4 if c.pseudo_anomaly in ("auto", "rotation") else 2
        self.encoder = ContrastiveEncoder(self.image_shape, c, self.groups)
        # decided in fit and saved with the model: 1 = rotation, 0 = scar
        self.register_buffer("uses_rotation", torch.tensor(int(c.pseudo_anomaly != "scar")))
        self.register_buffer("bank", torch.zeros(0, 0, 0))  # score groups × training images × proj_dim
        self.register_buffer("weight_sim", torch.ones(0))
        self.register_buffer("weight_cls", torch.ones(0))

    @property
    def pseudo_anomaly(self) -> str:
        return "rotation" if int(self.uses_rotation) else "scar"

    # -- score -------------------------------------------------------------------------------------
    def _group_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projection features (G×N×d) and each group's own-class logit (G×N) for every group (the image
        and its pseudo-anomalies), averaged over ``score_draws`` augmented draws, as the authors' score.
        The draws come from a generator seeded afresh at every call (deterministic score) and each draw is
        one set of parameters for the whole batch, so an image's score does not depend on its batch
        (only the scar's destination, chosen by the image's content, differs per image)."""
        c = self.config
        generator = torch.Generator().manual_seed(c.score_seed)
        draws = []
        for _ in range(c.score_draws):  # a handful of draws, each a batched op
            v = random_flip(x, generator, shared=True)
            if c.score_groups == "all":
                v = expand_groups(v, self.pseudo_anomaly, (c.scar_width, c.scar_length), generator, shared=True)
            draws.append(simclr_augment(v, c.color_jitter, self.score_crop, generator, shared=True, hue=c.hue_jitter))
        z, logits = self.encoder(self.normalize(torch.cat(draws)))
        g, n = (self.groups if c.score_groups == "all" else 1), len(x)
        z = z.view(c.score_draws, g, n, -1).mean(0)
        logits = logits.view(c.score_draws, g, n, -1).mean(0)
        own = logits[torch.arange(g), :, torch.arange(g)]  # logit of each group's own class
        return z, own

    @property
    def score_crop(self) -> tuple[float, float]:
        """The crop-area range of the score's views: fixed at ``score_crop_scale`` where the views are cropped
        (the authors' scoring at low resolution), else the training range."""
        c = self.config
        if c.crop_min_scale < 1 and c.score_crop_scale is not None:
            return (c.score_crop_scale, c.score_crop_scale)
        return (c.crop_min_scale, 1.0)

    def score(self, x: torch.Tensor, smooth: bool = False) -> torch.Tensor:
        z, own = self._group_features(x)
        g = len(z)  # the bank's first g groups (group 0 = identity) match the scored groups
        # max cosine similarity to the bank times the feature norm = max inner product with unit bank rows
        sims = torch.einsum("gnd,gmd->gnm", z, self.bank[:g])
        sim = relative_smooth_max(sims.flatten(0, 1)).view(sims.shape[:2]) if smooth else sims.max(2).values
        normality = sim * self.weight_sim[:g, None] + own * self.weight_cls[:g, None]
        return -normality.mean(0)

    def surrogates(self) -> dict:
        return {"bank-lse": lambda x: self.score(x, smooth=True)}

    @torch.no_grad()
    def _build_bank(self, images: torch.Tensor) -> None:
        self.eval()
        z, own = zip(*(self._group_features(b) for b in images.split(256)), strict=True)
        z, own = torch.cat(z, 1), torch.cat(own, 1)
        self.bank = F.normalize(z, dim=2)
        # each term divided by its mean on the training data (the sign kept: a negative mean logit must
        # not flip the direction of the term)
        self.weight_sim = 1 / z.norm(dim=2).mean(1).clamp_min(1e-6)
        self.weight_cls = 1 / own.mean(1).abs().clamp_min(1e-6)

    # -- training ----------------------------------------------------------------------------------
    def fit(self, train: TrainSet) -> None:
        c = self.config
        images = train.images.to(self.device)
        self.set_input_stats(images)
        kind = choose_pseudo_anomaly(c.pseudo_anomaly, images.cpu(), c.auto_rotation_threshold)
        self.uses_rotation.fill_(int(kind == "rotation"))
        self._resize_classifier(num_groups(kind))
        self.prepare_training(train)
        optimizer = make_optimizer(self.encoder.parameters(), c.lr, c.weight_decay, kind=c.optimizer)
        epoch_images = resample(images, c.samples_per_epoch)
        steps = steps_per_epoch(len(epoch_images), c.batch_size)
        schedule = warmup_cosine_schedule(optimizer, c.epochs * steps, warmup=c.warmup_epochs * steps,
                                          multiplier=c.warmup_multiplier)
        trainer = MinibatchTrainer(self, c.epochs, c.batch_size, report=self.report)
        trainer.run(Stream((epoch_images,), self.training_loss, optimizer, schedule))
        self._build_bank(images)

    def _resize_classifier(self, groups: int) -> None:
        self.groups = groups
        if self.encoder.classifier.out_features != groups:
            self.encoder.classifier = nn.Linear(self.encoder.classifier.in_features, groups).to(self.device)

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        self._resize_classifier(len(state["encoder.classifier.weight"]))
        super().restore(state)

    def prepare_training(self, train: TrainSet) -> None:
        """Hook for subclasses (the attack budget)."""

    def views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Two augmented views of the batch, each expanded with its pseudo-anomaly groups (group-major),
        and the transformation label of each row."""
        c = self.config
        size = (c.scar_width, c.scar_length)
        v1, v2 = random_flip(x.repeat(2, 1, 1, 1)).chunk(2)
        crop = (c.crop_min_scale, 1.0)
        v1 = simclr_augment(expand_groups(v1, self.pseudo_anomaly, size), c.color_jitter, crop, hue=c.hue_jitter)
        v2 = simclr_augment(expand_groups(v2, self.pseudo_anomaly, size), c.color_jitter, crop, hue=c.hue_jitter)
        labels = torch.arange(self.groups, device=x.device).repeat_interleave(len(x))
        return v1, v2, labels

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(self.normalize(x))

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        v1, v2, labels = self.views(x)
        self.train()
        z, logits = self.embed(torch.cat([v1, v2]))
        contrastive = losses.multi_positive_nt_xent(z, views=2, temperature=self.config.temperature).mean()
        return contrastive + F.cross_entropy(logits, labels.repeat(2))


@register_method("contrastive-at")
class ContrastiveAT(Contrastive):
    """Contrastive encoder adversarially trained with plain NT-Xent (no opposite-pair attack)."""

    Config = ContrastiveATConfig
    adversarially_trained = True

    def prepare_training(self, train: TrainSet) -> None:
        self.train_eps = training_eps(train, self.config.train_eps)

    def attack(self, objective, x: torch.Tensor) -> torch.Tensor:
        """Linf PGD maximizing ``objective`` per sample, model in eval mode (frozen batch-norm statistics)."""
        self.eval()
        try:
            return pgd(objective, x, eps=self.train_eps, norm="linf", steps=self.config.train_steps,
                       keep_best=False)
        finally:
            self.train()

    def intra_group_attack(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        """Push each row of view 1 away from its positive in view 2 (maximize their NT-Xent)."""
        with torch.no_grad():
            self.eval()
            target = self.embed(v2)[0]
        t = self.config.temperature
        return self.attack(lambda a: losses.pair_nt_xent(self.embed(a)[0], target, t), v1)

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        v1, v2, labels = self.views(x)
        adv = self.intra_group_attack(v1, v2)
        z, logits = self.embed(torch.cat([v1, v2, adv]))
        contrastive = losses.multi_positive_nt_xent(z, views=3, temperature=self.config.temperature).mean()
        return contrastive + F.cross_entropy(logits[: 2 * len(labels)], labels.repeat(2))


@register_method("cobra")
class Cobra(ContrastiveAT):
    """COBRA (Mirzaei et al., ICLR 2025): contrastive AT with opposite-pair and transformation attacks."""

    Config = CobraConfig

    def opposite_pair_attack(self, v2: torch.Tensor) -> torch.Tensor:
        """Move each row toward its opposite: the same image under another group, a random cyclic shift of
        the groups (normal ↔ scar for two groups). The training loss then treats the result as a positive
        of its clean source, which pulls the opposite pair apart."""
        batch = len(v2) // self.groups
        shift = int(torch.randint(1, self.groups, ()))
        order = (torch.arange(self.groups, device=v2.device) + shift) % self.groups
        rows = (order[:, None] * batch + torch.arange(batch, device=v2.device)).flatten()
        with torch.no_grad():
            self.eval()
            target = self.embed(v2[rows])[0]
        t = self.config.temperature
        return self.attack(lambda a: -losses.pair_nt_xent(self.embed(a)[0], target, t), v2)

    def classification_attack(self, v2: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.attack(lambda a: F.cross_entropy(self.embed(a)[1], labels, reduction="none"), v2)

    def training_loss(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        v1, v2, labels = self.views(x)
        # the 4th view: view 2 moved toward its opposite, or (ablation) away from its positive in view 1
        fourth = self.opposite_pair_attack(v2) if c.opposite_pair_attack else self.intra_group_attack(v2, v1)
        adv_cls = self.classification_attack(v2, labels)
        intra = self.intra_group_attack(v1, v2)
        z, logits = self.embed(torch.cat([v1, v2, intra, fourth]))
        loss = losses.multi_positive_nt_xent(z, views=4, temperature=c.temperature).mean()
        if c.opposite_pair_loss:
            m = len(labels)
            loss = loss - c.opposite_pair_weight * 0.5 * (
                losses.opposite_pair_term(z[:m], self.groups, c.temperature)
                + losses.opposite_pair_term(z[m: 2 * m], self.groups, c.temperature))
        cls_logits = torch.cat([logits[: 2 * len(labels)], self.embed(adv_cls)[1]])
        return loss + F.cross_entropy(cls_logits, labels.repeat(3))


@dataclass
class CobraNoOppositeConfig(CobraConfig):
    opposite_pair_attack: bool = False


@register_method("cobra-no-opposite")
class CobraNoOpposite(Cobra):
    """Ablation of COBRA: everything as ``cobra`` (three attacks, four views, the classifier attack) except the
    opposite-pair attack, whose view is an intra-group attack of view 2 instead. ``contrastive`` →
    ``contrastive-at`` → ``cobra-no-opposite`` → ``cobra`` isolates the paper's contribution."""

    Config = CobraNoOppositeConfig
