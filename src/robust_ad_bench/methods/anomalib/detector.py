"""anomalib's image models as detectors of the suite: ``anomalib-padim``, ``anomalib-patchcore``,
``anomalib-stfpm``, ``anomalib-fastflow`` (importing this module needs anomalib: ``pip install
'robust-ad-bench[anomalib]'``).

Each wraps anomalib's own torch model (``model_params``: its keyword arguments, passed through), trains it by
anomalib's own code for that model (PaDiM: the embedding memory bank and ``PadimModel.fit``, the Gaussian per
position; PatchCore: the embedding store and ``subsample_embedding``, k-center-greedy coreset; STFPM and
FastFlow: anomalib's loss, ``STFPMLoss`` / ``FastflowLoss``, with the optimizer of anomalib's Lightning module
for a few epochs), and scores by the model's image score ``pred_score`` with its ``anomaly_map``.

The input path is anomalib's default pre-processor: resize to ``image_size`` (bilinear, differentiable here),
ImageNet normalization; gray images are repeated to three channels. The anomaly map is resized back to the
image's H×W.

anomalib runs the frozen feature extractors under ``torch.no_grad`` (PaDiM, PatchCore, STFPM's teacher), so a
white-box attack through anomalib's ``forward`` sees a zero gradient. ``scores.py`` re-runs the same modules
with gradients enabled; ``tests/test_anomalib.py`` checks that path equal to anomalib's ``pred_score`` and map.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.detector import Detector, DetectorConfig
from robust_ad_bench.core.errors import BenchError, unknown_choice
from robust_ad_bench.core.registry import register_method
from robust_ad_bench.methods.anomalib import scores
from robust_ad_bench.methods.common.surrogates import relative_smooth_max, top_fraction_mean
from robust_ad_bench.methods.common.training import MinibatchTrainer, Stream
from robust_ad_bench.methods.common.weights import timm_weights_tag

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FIT_BATCH = 64  # images per forward when a memory bank is collected


@dataclass
class AnomalibConfig(DetectorConfig):
    """Options of every anomalib model; ``model_params`` go to anomalib's torch model over its defaults here."""

    model_params: dict[str, Any] = field(default_factory=dict)
    image_size: int = 64  # anomalib's pre-processor resizes to 256; 64 keeps the embedded data affordable on CPU
    weights_id: str = ""  # derived: the backbone's pretrained weights (part of the job key); never set by hand

    defaults: ClassVar[dict[str, Any]] = {}
    model_class: ClassVar[str] = ""  # anomalib's torch model, "module:Class"
    own_kwargs: ClassVar[tuple[str, ...]] = ()  # keywords taken here, not by the model (STFPM's pre_trained)

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16 (the backbone's stride-16 stage), got {self.image_size}")
        kwargs = self.model_kwargs()
        if self.model_class:  # unknown keywords fail with the grid's options, before anything runs
            module, name = self.model_class.split(":")
            accepted = set(inspect.signature(getattr(importlib.import_module(module), name)).parameters)
            accepted = (accepted | set(self.own_kwargs)) - {"input_size"}  # FastFlow's input size is image_size
            for key in kwargs:
                if key not in accepted:
                    raise unknown_choice(f"model_params keyword of {name}", key, sorted(accepted))
        pretrained = bool(kwargs.get("pre_trained", False))
        # anomalib loads pretrained backbones through timm: its hub id names the weights
        self.weights_id = f"timm:{timm_weights_tag(kwargs.get('backbone', 'resnet18'))[0]}" if pretrained else ""

    def model_kwargs(self) -> dict[str, Any]:
        return {**self.defaults, **self.model_params}


@dataclass
class PadimConfig(AnomalibConfig):
    model_class: ClassVar[str] = "anomalib.models.image.padim.torch_model:PadimModel"
    defaults: ClassVar[dict[str, Any]] = {"backbone": "resnet18", "layers": ["layer1", "layer2", "layer3"],
                                          "pre_trained": False}


@dataclass
class PatchcoreConfig(AnomalibConfig):
    coreset_sampling_ratio: float = 0.1  # anomalib's default
    model_class: ClassVar[str] = "anomalib.models.image.patchcore.torch_model:PatchcoreModel"
    defaults: ClassVar[dict[str, Any]] = {"backbone": "resnet18", "layers": ["layer2", "layer3"],
                                          "pre_trained": False, "num_neighbors": 9}


@dataclass
class TrainedConfig(AnomalibConfig):
    """Models trained by gradient steps: a short loop with the optimizer of anomalib's Lightning module."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.0
    weight_decay: float = 0.0


@dataclass
class StfpmConfig(TrainedConfig):
    lr: float = 0.4  # anomalib's SGD: lr 0.4, momentum 0.9, weight decay 1e-3
    weight_decay: float = 1e-3
    momentum: float = 0.9
    model_class: ClassVar[str] = "anomalib.models.image.stfpm.torch_model:STFPMModel"
    own_kwargs: ClassVar[tuple[str, ...]] = ("pre_trained",)
    defaults: ClassVar[dict[str, Any]] = {"backbone": "resnet18", "layers": ["layer1", "layer2", "layer3"],
                                          "pre_trained": False}


@dataclass
class FastflowConfig(TrainedConfig):
    lr: float = 1e-3  # anomalib's Adam: lr 1e-3, weight decay 1e-5
    weight_decay: float = 1e-5
    model_class: ClassVar[str] = "anomalib.models.image.fastflow.torch_model:FastflowModel"
    defaults: ClassVar[dict[str, Any]] = {"backbone": "resnet18", "pre_trained": False, "flow_steps": 8,
                                          "conv3x3_only": False, "hidden_ratio": 1.0}


class AnomalibDetector(Detector):
    """An anomalib torch model behind the Detector contract (subclasses: which model, how it trains)."""

    Config = AnomalibConfig
    version = "1"
    # Named, not in `--methods all`: the default grid stays the same whether the optional extra is installed
    # or not (its jobs, its time, the tests that count it).
    hidden = True

    def __init__(self, image_shape, config=None) -> None:
        super().__init__(image_shape, config)
        if self.image_shape[0] not in (1, 3):
            raise BenchError(f"method '{self.name}' takes 1- or 3-channel images, got {self.image_shape[0]} channels")
        self.register_buffer("imagenet_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("imagenet_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        try:
            self.model: nn.Module = self.build(self.config.model_kwargs())
        except (TypeError, ValueError) as exc:  # anomalib's own message names the bad keyword or value
            raise BenchError(f"method '{self.name}' model_params: {exc}") from None

    # -- what differs per model ----------------------------------------------------------------------
    def build(self, kwargs: dict[str, Any]) -> nn.Module:
        raise NotImplementedError

    def fit_model(self, z: torch.Tensor) -> None:
        """Train ``self.model`` on preprocessed normal images ``z`` by anomalib's code for the model."""
        raise NotImplementedError

    def score_and_maps(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Differentiable (image score, anomaly map N×1×h×w, smooth map for the surrogates) of preprocessed
        images, equal to anomalib's ``pred_score`` and ``anomaly_map``."""
        raise NotImplementedError

    # -- the contract --------------------------------------------------------------------------------
    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """anomalib's default pre-processing, differentiable: resize to ``image_size``, ImageNet normalization."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        size = (self.config.image_size, self.config.image_size)
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return (x - self.imagenet_mean) / self.imagenet_std

    def anomalib_output(self, x: torch.Tensor) -> Any:
        """anomalib's own ``InferenceBatch`` (pred_score, anomaly_map) for images ``x`` in [0, 1]."""
        self.model.eval()
        return self.model(self.preprocess(x))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.score_and_maps(self.preprocess(x))[0]

    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        amap = self.score_and_maps(self.preprocess(x))[1]
        return F.interpolate(amap, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]

    def surrogates(self) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        # the score is a max over the map (PatchCore: reweighted): gradients reach one position per step
        def smooth(x: torch.Tensor) -> torch.Tensor:
            return self.score_and_maps(self.preprocess(x))[2]

        return {"lse": lambda x: relative_smooth_max(smooth(x)), "top5": lambda x: top_fraction_mean(smooth(x), 0.05)}

    def fit(self, train: TrainSet) -> None:
        images = train.images.to(self.device)
        self.set_input_stats(images)  # not used by the score (anomalib normalizes by ImageNet's statistics)
        with torch.no_grad():
            z = torch.cat([self.preprocess(b) for b in images.split(FIT_BATCH)])
        self.fit_model(z)
        self.eval()

    def collect(self, z: torch.Tensor) -> None:
        """anomalib's training step of the memory-bank models: the forward in training mode stores embeddings."""
        self.model.train()
        with torch.no_grad():
            for batch in z.split(FIT_BATCH):
                self.model(batch)
        self.model.eval()


@register_method("anomalib-padim")
class AnomalibPadim(AnomalibDetector):
    """anomalib's PaDiM: a Gaussian per position of pretrained-backbone embeddings; Mahalanobis distance map."""

    Config = PadimConfig

    def build(self, kwargs: dict[str, Any]) -> nn.Module:
        from anomalib.models.image.padim.torch_model import PadimModel

        return PadimModel(**kwargs)

    def fit_model(self, z: torch.Tensor) -> None:
        self.collect(z)
        self.model.fit()  # anomalib's Gaussian fit of the memory bank
        self.report(1, 1, f"Gaussian of {len(z)} images' embeddings")

    def score_and_maps(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return scores.padim(self.model, z)


@register_method("anomalib-patchcore")
class AnomalibPatchcore(AnomalibDetector):
    """anomalib's PatchCore: coreset memory bank of patch embeddings; nearest-neighbour distance, reweighted."""

    Config = PatchcoreConfig

    def build(self, kwargs: dict[str, Any]) -> nn.Module:
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel

        if not 0 < self.config.coreset_sampling_ratio <= 1:
            raise BenchError(f"method '{self.name}'.coreset_sampling_ratio must be in (0, 1], got "
                             f"{self.config.coreset_sampling_ratio}")
        return PatchcoreModel(**kwargs)

    def fit_model(self, z: torch.Tensor) -> None:
        self.collect(z)
        # anomalib's k-center-greedy coreset
        self.model.subsample_embedding(sampling_ratio=self.config.coreset_sampling_ratio)
        self.report(1, 1, f"coreset of {len(self.model.memory_bank)} patch embeddings")

    def score_and_maps(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return scores.patchcore(self.model, z)


class GradientTrained(AnomalibDetector):
    """Models trained by anomalib's loss over a few epochs of shuffled minibatches."""

    def optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def fit_model(self, z: torch.Tensor) -> None:
        c = self.config
        trainer = MinibatchTrainer(self.model, c.epochs, c.batch_size, report=self.report, min_batch=2)
        trainer.run(Stream((z,), self.loss, self.optimizer()))


@register_method("anomalib-stfpm")
class AnomalibStfpm(GradientTrained):
    """anomalib's STFPM: a student network regresses the teacher's feature pyramid; their discrepancy is the map."""

    Config = StfpmConfig

    def build(self, kwargs: dict[str, Any]) -> nn.Module:
        from anomalib.models.image.stfpm.loss import STFPMLoss

        self.stfpm_loss = STFPMLoss()
        return scores.build_stfpm(**kwargs)

    def optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        return torch.optim.SGD(self.model.student_model.parameters(), lr=c.lr, momentum=c.momentum,
                               weight_decay=c.weight_decay)

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        teacher, student = self.model(batch)
        return self.stfpm_loss(teacher, student)

    def score_and_maps(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return scores.stfpm(self.model, z)


@register_method("anomalib-fastflow")
class AnomalibFastflow(GradientTrained):
    """anomalib's FastFlow: 2-D normalizing flows on backbone features; the map is minus their likelihood."""

    Config = FastflowConfig

    def build(self, kwargs: dict[str, Any]) -> nn.Module:
        from anomalib.models.image.fastflow.loss import FastflowLoss
        from anomalib.models.image.fastflow.torch_model import FastflowModel

        self.fastflow_loss = FastflowLoss()
        size = self.config.image_size
        return FastflowModel(input_size=(size, size), **kwargs)

    def optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        return torch.optim.Adam(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay)

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        hidden, jacobians = self.model(batch)
        return self.fastflow_loss(hidden, jacobians)

    def score_and_maps(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return scores.fastflow(self.model, z)
