"""SLA²P (Wang et al., arXiv 2111.12896, CIKM 2022): random-projection pseudo-classes, scored after a
one-step adversarial perturbation of the projected features.

1. A frozen feature extractor embeds each image; features are L2-normalized per sample.
2. K fixed Gaussian matrices W_k (D×d) project a feature f to f·W_k; k is its pseudo-class.
3. An MLP classifier (d → 2d → 4d → K, batch norm, LeakyReLU) learns to tell the projections apart; it
   stops as soon as its running training accuracy passes a threshold (the paper's early stop).
4. Scoring: each projected feature z_k takes one raw-gradient step that raises the cross-entropy of the
   classifier's own predicted label, z'_k = z_k + ε·∇CE, and the anomaly score is
   mean_k ‖softmax(g(z'_k)) − onehot(k)‖² / K (the negative of the paper's normality score).

The score contains its own gradient step. With ``attack_through_inner_step`` (default) that step is
differentiated when the input requires grad (double backpropagation, ``create_graph=True``), so a
white-box attack sees the whole score; switched off, the step is a constant for the attacker (a weaker
attack, kept to show the difference). ``sla`` is the ablation without the perturbation (ε = 0). The
softmax saturates on confident predictions: attacks also follow the surrogate ``log-loss``, the mean
cross-entropy −log p_k(k) of the perturbed projections (the same direction, no saturation).

ε: the authors step on the gradient of a *batch mean* of cross-entropies (batch 128, ε = 1000 on
CIFAR-10), i.e. ε/128 per feature. Ours uses the per-feature gradient (a sum), so it does not depend on
the batch size: ``perturbation`` = ε_paper / 128 (1000 → 7.8125). The authors' projected features have
norm √256 = 16 (unit features, Gaussian 2048×256 matrices); the norm grows with √d, so the same raw step
is relatively larger at a smaller d. Ours is scaled by the mean norm of the training projected features
over 16: ε_eff = ``perturbation`` · mean‖z‖ / 16, which is the paper's step at K = d = 256 and keeps the
step relative to the features' size at any d.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.detector import Detector, DetectorConfig
from robust_ad_bench.core.errors import unknown_choice
from robust_ad_bench.core.registry import register_method
from robust_ad_bench.methods.common.backbones import (
    BACKBONES,
    PretrainedFeatures,
    fit_by_reconstruction,
    local_weights,
)
from robust_ad_bench.methods.common.networks import ConvEncoder
from robust_ad_bench.methods.common.training import MinibatchTrainer, Stream, make_optimizer

FEATURES = ("auto", "pixels", "autoencoder", *BACKBONES)
PAPER_BATCH = 128  # batch over which the authors' scoring loss is averaged
PAPER_NORM = 16.0  # norm of the authors' projected features: unit features times Gaussian D×256 matrices (√256)
MAX_ROWS = 32768  # projected features per scoring chunk (bounds memory of the no-grad path)


@dataclass
class SLA2PConfig(DetectorConfig):
    # "auto": ResNet-50 when local ImageNet weights exist and the input is an image, else an autoencoder's
    # encoder trained on the normal data; vectors (H or W below 8) use the raw values ("pixels")
    features: str = "auto"
    n_projections: int = 256  # K pseudo-classes (paper: 256)
    projection_dim: int = 64  # d (paper: 256, projecting 2048-d ResNet-50 features)
    projection_seed: int = 0  # of the Gaussian projections (stored with the model as well)
    accuracy_threshold: float = 0.6  # stop training when the running training accuracy passes it (authors)
    max_epochs: int = 20  # cap when the threshold is never passed
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 5e-4
    # ε per projected feature at the authors' feature norm (scaled by mean‖z‖ / 16); 0: no perturbation (SLA)
    perturbation: float = 1000 / PAPER_BATCH
    attack_through_inner_step: bool = True  # differentiate through the inner step (double backprop)
    encoder_epochs: int = 30  # "autoencoder" features: training of the encoder on the normal data
    encoder_width: int = 8
    encoder_latent: int = 64
    backbone_size: int = 224  # input size of a pretrained backbone

    def __post_init__(self) -> None:
        if self.features not in FEATURES:
            raise unknown_choice("sla2p features", self.features, FEATURES)
        if self.n_projections < 2 or self.projection_dim < 1:
            raise ValueError(f"need n_projections >= 2 and projection_dim >= 1, got {self.n_projections} "
                             f"and {self.projection_dim}")
        if not 0 < self.accuracy_threshold <= 1:
            raise ValueError(f"accuracy_threshold must be in (0, 1], got {self.accuracy_threshold}")
        if self.perturbation < 0:
            raise ValueError(f"perturbation must be >= 0, got {self.perturbation}")


def resolve_features(name: str, image_shape: tuple[int, int, int]) -> str:
    """The feature extractor that ``name`` stands for on inputs of ``image_shape``."""
    channels, height, width = image_shape
    is_image = min(height, width) >= 8
    if name != "auto":
        return name
    if not is_image:
        return "pixels"
    if channels in (1, 3) and local_weights("resnet50") is not None:
        return "resnet50"
    return "autoencoder"


class PseudoClassifier(nn.Module):
    """The authors' classifier: d → 2d → 4d → K with batch norm and LeakyReLU."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, 2 * dim), nn.BatchNorm1d(2 * dim), nn.LeakyReLU(),
            nn.Linear(2 * dim, 4 * dim), nn.BatchNorm1d(4 * dim), nn.LeakyReLU(),
            nn.Linear(4 * dim, classes),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class RunningAccuracy:
    """Share of correct predictions over all training batches so far (SLA²P's early stop)."""

    def __init__(self) -> None:
        self.correct = self.seen = self.batches = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.correct += int((logits.argmax(1) == labels).sum())
        self.seen += len(labels)
        self.batches += 1

    @property
    def value(self) -> float:
        return self.correct / max(self.seen, 1)


@register_method("sla2p")
class SLA2P(Detector):
    """SLA²P: random-projection pseudo-classes, scored after a one-step adversarial feature perturbation."""

    Config = SLA2PConfig
    version = "2"

    def __init__(self, image_shape, config=None) -> None:
        super().__init__(image_shape, config)
        c = self.config
        self.feature_kind = resolve_features(c.features, self.image_shape)
        self.encoder: nn.Module | None = None
        if self.feature_kind == "pixels":
            feature_dim = int(torch.tensor(self.image_shape).prod())
        elif self.feature_kind == "autoencoder":
            self.encoder = ConvEncoder(self.image_shape, c.encoder_width, c.encoder_latent)
            feature_dim = c.encoder_latent
        else:
            self.encoder = PretrainedFeatures(self.feature_kind, c.backbone_size)
            feature_dim = self.encoder.out_features
        if self.encoder is not None:
            self.encoder.requires_grad_(False)  # frozen at scoring; the autoencoder path unfreezes to fit
        generator = torch.Generator().manual_seed(c.projection_seed)
        # D×(K·d): all K projections in one matmul; column block k is W_k
        projections = torch.randn(feature_dim, c.n_projections * c.projection_dim, generator=generator)
        self.register_buffer("projections", projections)
        self.classifier = PseudoClassifier(c.projection_dim, c.n_projections)
        self.register_buffer("train_accuracy", torch.zeros(()))  # running accuracy when training stopped
        self.register_buffer("projected_norm", torch.full((), PAPER_NORM))  # mean ‖z‖ of the training features
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))

    # -- features and projections ----------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalized features of images in [0, 1], N×D."""
        if self.feature_kind == "pixels":
            f = self.normalize(x).flatten(1)
        elif self.feature_kind == "autoencoder":
            f = self.encoder(self.normalize(x))
        else:
            f = self.encoder(x)  # the backbone normalizes with ImageNet statistics itself
        return F.normalize(f, dim=1)

    def project(self, f: torch.Tensor) -> torch.Tensor:
        """All K projections of N features at once: N×K×d."""
        c = self.config
        return (f @ self.projections).view(len(f), c.n_projections, c.projection_dim)

    # -- scoring ---------------------------------------------------------------------------------------
    def perturb(self, z: torch.Tensor) -> torch.Tensor:
        """One raw-gradient step on projected features (rows of ``z``) that raises the cross-entropy of
        the classifier's own predicted label. Differentiated (create_graph) when the caller needs
        gradients and ``attack_through_inner_step`` is on; otherwise a constant shift."""
        through = torch.is_grad_enabled() and z.requires_grad and self.config.attack_through_inner_step
        with torch.enable_grad():  # the runner scores under no_grad; the inner step needs a gradient
            inner = z if through else z.detach().requires_grad_(True)
            logits = self.classifier(inner)
            labels = logits.detach().argmax(1)
            # sum, not mean: each row's gradient is its own, whatever the batch size
            loss = F.cross_entropy(logits, labels, reduction="sum")
            (grad,) = torch.autograd.grad(loss, inner, create_graph=through)
        return z + self.step_size * grad

    @property
    def step_size(self) -> torch.Tensor:
        """ε_eff = ``perturbation`` · mean‖z_train‖ / 16: the authors' step, relative to the features' norm."""
        return self.config.perturbation * self.projected_norm / PAPER_NORM

    def _score_rows(self, z: torch.Tensor, log_loss: bool = False) -> torch.Tensor:
        n, k, d = z.shape
        rows = z.reshape(n * k, d)
        if self.config.perturbation > 0:
            rows = self.perturb(rows)
        logits = self.classifier(rows)
        if log_loss:  # the surrogate: cross-entropy of each projection's own pseudo-label
            own = torch.arange(k, device=z.device).repeat(n)
            return F.cross_entropy(logits, own, reduction="none").view(n, k).mean(1)
        probs = logits.softmax(1).view(n, k, k)
        target = torch.eye(k, device=z.device, dtype=z.dtype)  # projection k has pseudo-label k
        return (probs - target).pow(2).mean(2).mean(1)

    def score(self, x: torch.Tensor, log_loss: bool = False) -> torch.Tensor:
        z = self.project(self.features(x))
        chunk = max(1, MAX_ROWS // self.config.n_projections)
        # chunks of samples only bound memory: in eval mode every row is scored independently
        return torch.cat([self._score_rows(part, log_loss) for part in z.split(chunk)])

    def surrogates(self) -> dict:
        return {"log-loss": lambda x: self.score(x, log_loss=True)}

    # -- training --------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> SLA2P:
        super().train(mode)
        if self.encoder is not None:
            self.encoder.eval()  # frozen feature extractor
        return self

    def fit(self, train: TrainSet) -> None:
        images = train.images.to(self.device)
        self.set_input_stats(images)
        if self.feature_kind == "autoencoder":
            self._fit_encoder(images)
        with torch.no_grad():
            feats = torch.cat([self.features(b) for b in images.split(256)])
        self._fit_classifier(feats)
        self.eval()

    def _fit_encoder(self, images: torch.Tensor) -> None:
        """Train the encoder as half of an autoencoder on the normal data (MSE), then freeze it."""
        c = self.config
        fit_by_reconstruction(self.encoder, self.normalize(images), c.encoder_width, c.encoder_latent,
                              epochs=c.encoder_epochs, lr=1e-3, report=self.report)
        self.encoder.requires_grad_(False)

    def _fit_classifier(self, feats: torch.Tensor) -> None:
        """Cross-entropy on (projected feature, projection index) pairs, shuffled over samples and
        projections; stops when the running accuracy since the start passes the threshold."""
        c = self.config
        k = c.n_projections
        rows = self.project(feats).reshape(-1, c.projection_dim)
        self.projected_norm.fill_(float(rows.norm(dim=1).mean()))
        labels = torch.arange(k, device=rows.device).repeat(len(feats))
        optimizer = make_optimizer(self.classifier.parameters(), c.lr, c.weight_decay, eps=1e-7)
        accuracy = RunningAccuracy()

        def loss(batch: torch.Tensor, batch_labels: torch.Tensor) -> torch.Tensor:
            logits = self.classifier(batch)
            accuracy.add(logits.detach(), batch_labels)
            return F.cross_entropy(logits, batch_labels)

        trainer = MinibatchTrainer(self.classifier, c.max_epochs, c.batch_size, report=self.report,
                                   describe=lambda _: f"running accuracy {accuracy.value:.3f}",
                                   stop=lambda: accuracy.value > c.accuracy_threshold,
                                   min_batch=2)  # batch norm needs two samples
        trainer.run(Stream((rows, labels), loss, optimizer))
        self.train_accuracy.fill_(accuracy.value)
        self.train_steps.fill_(accuracy.batches)


@dataclass
class SLAConfig(SLA2PConfig):
    perturbation: float = 0.0
    accuracy_threshold: float = 0.8  # the authors' sla.py (sla2p.py: 0.6)


@register_method("sla")
class SLA(SLA2P):
    """SLA: the SLA²P ablation without the adversarial perturbation (pseudo-class uncertainty only)."""

    Config = SLAConfig


@dataclass
class SLA2PConstantInnerConfig(SLA2PConfig):
    attack_through_inner_step: bool = False


@register_method("sla2p-const-inner")
class SLA2PConstantInner(SLA2P):
    """SLA²P scored the same, but attacks treat its inner gradient step as a constant (weaker attack)."""

    Config = SLA2PConstantInnerConfig
    hidden = True  # a diagnostic of the attack on sla2p, not a separate detector
