"""Differentiable score paths of anomalib's torch models: the same modules as their ``forward``, with gradients.

anomalib computes the frozen backbone's features under ``torch.no_grad`` (``TimmFeatureExtractor.forward`` and
the models' own ``forward``), which is right for inference and leaves an attacker with a zero gradient. Each
function here runs the model's own sub-modules and methods in the order of its ``forward`` (anomalib 2.7) with
gradients enabled, and returns (``pred_score``, ``anomaly_map`` N×1×h×w, a smooth map for the surrogates).
``tests/test_anomalib.py`` checks each against anomalib's ``forward`` on the same images (to 1e-5).

The one change: PatchCore's patch-to-bank distance is sqrt(clamp(d², 1e-12)) instead of sqrt(clamp(d², 0)) with
in-place operations, so a patch equal to a bank entry (a flat background) has a finite gradient, not NaN.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import torch
import torch.nn.functional as F
from torch import nn

Result = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def timm_features(extractor: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``TimmFeatureExtractor.forward`` without its ``no_grad``: the timm model in eval mode, outputs by layer."""
    extractor.feature_extractor.eval()
    features = extractor.feature_extractor(x)
    if not isinstance(features, dict):
        features = dict(zip(extractor.layers, features, strict=True))
    return features


def padim(model: nn.Module, z: torch.Tensor) -> Result:
    """``PadimModel.forward`` in eval mode: embedding, Mahalanobis distance map, upsampled and blurred; max."""
    embedding = model.generate_embedding(timm_features(model.feature_extractor, z))
    amap = model.anomaly_map_generator(embedding=embedding, mean=model.gaussian.mean,
                                       inv_covariance=model.gaussian.inv_covariance, image_size=z.shape[-2:])
    return amap.amax(dim=(-2, -1)).flatten(), amap, amap


def _distances(x: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """``PatchcoreModel.euclidean_dist`` out of place, with a clamp that keeps the square root's gradient finite."""
    d2 = x.pow(2).sum(-1, keepdim=True) - 2 * x @ bank.transpose(-2, -1) + bank.pow(2).sum(-1).unsqueeze(-2)
    return d2.clamp_min(1e-12).sqrt()


def patchcore(model: nn.Module, z: torch.Tensor) -> Result:
    """``PatchcoreModel.forward`` in eval mode: pooled multi-layer embedding, distance of every patch to its nearest
    bank entry (the map), image score = that of the farthest patch reweighted by its bank neighbourhood."""
    bank = model.memory_bank
    features = {layer: model.feature_pooler(f) for layer, f in timm_features(model.feature_extractor,
                                                                            z.type(bank.dtype)).items()}
    embedding = model.generate_embedding(features)
    batch, _, width, height = embedding.shape
    embedding = model.reshape_embedding(embedding)
    patch_scores, locations = _distances(embedding, bank).min(1)
    patch_scores, locations = patch_scores.reshape(batch, -1), locations.reshape(batch, -1)
    score = _patchcore_score(model, patch_scores, locations, embedding)
    patch_map = patch_scores.reshape(batch, 1, width, height)
    return score, model.anomaly_map_generator(patch_map, z.shape[-2:]), patch_map


def _patchcore_score(model: nn.Module, patch_scores: torch.Tensor, locations: torch.Tensor,
                     embedding: torch.Tensor) -> torch.Tensor:
    """``PatchcoreModel.compute_anomaly_score`` with the distances of ``_distances``."""
    if model.num_neighbors == 1:
        return patch_scores.amax(1)
    batch, patches = patch_scores.shape
    rows = torch.arange(batch, device=patch_scores.device)
    max_patches = patch_scores.argmax(1)
    max_features = embedding.reshape(batch, patches, -1)[rows, max_patches]
    score = patch_scores[rows, max_patches]
    nn_sample = model.memory_bank[locations[rows, max_patches], :]
    with torch.no_grad():  # which bank entries form the support: an index, no gradient in anomalib either
        _, support = model.nearest_neighbors(nn_sample, n_neighbors=min(model.num_neighbors, len(model.memory_bank)))
    distances = _distances(max_features.unsqueeze(1), model.memory_bank[support])
    weights = (1 - F.softmax(distances.squeeze(1), 1))[..., 0]
    return weights * score


def stfpm(model: nn.Module, z: torch.Tensor) -> Result:
    """``STFPMModel.forward`` in eval mode: teacher and student feature pyramids, the product of their per-layer
    normalized distances (upsampled) is the map; max."""
    teacher = timm_features(model.teacher_model, z)
    student = timm_features(model.student_model, z)
    amap = model.anomaly_map_generator(teacher_features=teacher, student_features=student, image_size=z.shape[-2:])
    return amap.amax(dim=(-2, -1)).flatten(), amap, amap


def fastflow(model: nn.Module, z: torch.Tensor) -> Result:
    """``FastflowModel.forward`` in eval mode (anomalib runs it with gradients already: its backbone's parameters
    are frozen, not its input). Map: minus the mean over levels of exp(−½·mean h²); the smooth map is the
    mean of ½·mean h² (the log-likelihood before the exp, which saturates)."""
    model.feature_extractor.eval()
    if hasattr(model, "norms"):  # CNN backbones (resnet18, wide_resnet50_2)
        features = model._get_cnn_features(z)
    elif model.feature_extractor.__class__.__name__ == "Cait":
        features = model._get_cait_features(z)
    else:
        features = model._get_vit_features(z)
    hidden = [block(f)[0] for block, f in zip(model.fast_flow_blocks, features, strict=True)]
    amap = model.anomaly_map_generator(hidden)
    nll = [F.interpolate(0.5 * h.pow(2).mean(1, keepdim=True), size=amap.shape[-2:], mode="bilinear",
                         align_corners=False) for h in hidden]
    return amap.amax(dim=(-2, -1)).flatten(), amap, torch.stack(nll, -1).mean(-1)


def build_stfpm(pre_trained: bool = False, **kwargs: Any) -> nn.Module:
    """anomalib's ``STFPMModel``; its teacher is always built with ``pre_trained=True`` (a download), so without
    ``pre_trained`` the teacher is built with random weights (the only choice offline)."""
    from anomalib.models.image.stfpm import torch_model

    if pre_trained:
        return torch_model.STFPMModel(**kwargs)
    extractor = torch_model.TimmFeatureExtractor

    def offline_extractor(*args: Any, **options: Any) -> nn.Module:
        return extractor(*args, **{**options, "pre_trained": False})

    with mock.patch.object(torch_model, "TimmFeatureExtractor", offline_extractor):
        return torch_model.STFPMModel(**kwargs)
