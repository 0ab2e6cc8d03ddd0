"""The anomaly-map gallery: for one trained model, a few test images chosen by rule, each shown clean and
attacked, with the perturbation scaled to its eps and the anomaly map before and after.

The rule (on the model's largest eps of its first norm, Linf before L2): the normal image whose score the
per-image worst case raised most, the anomaly whose score it lowered most, and a typical image (the one
whose score moved by the median amount). The attacked image shown is, of the stored adversarial images
(the model's own attacks at that eps or below, and images transferred from other methods), the one with
the highest attack objective for that image on this model; when the worst case was won by a check's image
(not kept on disk) the image shown can be a little weaker than the worst case, and its own score is shown.

The threshold drawn is the one that maximizes F1 on the clean test scores (anomalib's adaptive threshold).
What ``collect`` returns is saved as one ``.npz`` per model under ``OUT/gallery``; ``plot_galleries`` draws
the PNGs from those files without the model or the data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robust_ad_bench.benchmark.protocol.metrics import _binary_clf_curve

GALLERY_FOLDER = "gallery"
ROLES = ("normal raised most", "anomaly lowered most", "typical")


def f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold (flag scores at or above it) of the highest F1 on these scores."""
    y = np.asarray(labels).astype(bool)
    fps, tps, thresholds = _binary_clf_curve(y, np.asarray(scores, np.float64))
    precision = tps / (tps + fps)
    recall = tps / max(int(y.sum()), 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0)
    return float(thresholds[int(np.argmax(f1))])


def pick_images(labels: np.ndarray, clean: np.ndarray, worst: np.ndarray) -> list[int]:
    """Indices of the normal raised most, the anomaly lowered most and the typical image (median move),
    without repeats (a role with no image of its class is left out)."""
    labels = np.asarray(labels)
    move = np.asarray(worst, np.float64) - np.asarray(clean, np.float64)
    picked: list[int] = []
    normal, anomal = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    if normal.size:
        picked.append(int(normal[np.argmax(move[normal])]))
    if anomal.size:
        picked.append(int(anomal[np.argmin(move[anomal])]))
    size = np.abs(move)
    order = np.argsort(size, kind="stable")
    rest = [int(i) for i in order if int(i) not in picked]
    if rest:
        median = np.median(size)
        picked.append(min(rest, key=lambda i: (abs(size[i] - median), i)))
    return picked


def collect(detector: Any, x: torch.Tensor, x_adv: torch.Tensor, labels: np.ndarray, clean: np.ndarray,
            adv: np.ndarray, worst: np.ndarray, index: list[int], meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of one model's gallery: ``x``/``x_adv`` are the chosen clean and attacked images, ``clean``,
    ``adv`` their scores, ``worst`` the worst case's per-image scores of all test images."""
    maps_clean = maps_adv = None
    if detector.has_anomaly_map():
        with torch.no_grad():
            maps_clean = detector.anomaly_map(x)
            maps_adv = detector.anomaly_map(x_adv)
    out = {"clean": x.detach().float().cpu().numpy(), "adversarial": x_adv.detach().float().cpu().numpy(),
           "labels": np.asarray(labels)[index].astype(np.uint8), "index": np.asarray(index),
           "clean_scores": np.asarray(clean, np.float32), "adv_scores": np.asarray(adv, np.float32),
           "worst_scores": np.asarray(worst, np.float32)[index], "meta": np.asarray(json.dumps(meta))}
    if maps_clean is not None and maps_adv is not None:
        out["maps_clean"] = maps_clean.detach().float().cpu().numpy()
        out["maps_adv"] = maps_adv.detach().float().cpu().numpy()
    return out


def save(folder: Path, train_key: str, arrays: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{train_key}.npz"
    tmp = folder / f".{train_key}.tmp.npz"
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path


def load_all(folder: Path) -> list[dict[str, Any]]:
    """Every saved gallery of a results folder, each with its ``meta`` decoded (sorted by method, dataset)."""
    found = []
    for path in sorted(Path(folder).glob("*.npz")):
        with np.load(path, allow_pickle=False) as data:
            entry = {k: data[k] for k in data.files}
        entry["meta"] = json.loads(str(entry["meta"]))
        found.append(entry)
    return sorted(found, key=lambda e: (e["meta"]["method"], e["meta"]["dataset"], str(e["meta"]["normal_class"]),
                                        e["meta"]["seed"]))


def _show(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """An image array for imshow (H×W×C or H×W) and its colour map."""
    image = np.clip(image, 0, 1)
    if image.shape[0] == 1:
        return image[0], "gray"
    return np.moveaxis(image[:3], 0, -1), None


def plot_galleries(source: Path, folder: Path, methods: list[str] | None = None,
                   datasets: list[str] | None = None) -> list[Path]:
    """One PNG per (method, dataset) from the first (class, seed) gallery saved under ``source``."""
    import matplotlib.pyplot as plt

    from robust_ad_bench.benchmark.results.leaderboard import eps_label
    from robust_ad_bench.benchmark.results.plots import _save, safe_name

    paths: list[Path] = []
    seen: set[tuple[str, str]] = set()
    for entry in load_all(source):
        meta = entry["meta"]
        if (meta["method"], meta["dataset"]) in seen or (methods is not None and meta["method"] not in methods) \
                or (datasets is not None and meta["dataset"] not in datasets):
            continue
        seen.add((meta["method"], meta["dataset"]))
        has_maps = "maps_clean" in entry
        columns = ["clean", "adversarial", "perturbation"] + (["map clean", "map attacked"] * has_maps)
        rows = len(entry["index"])
        fig, axes = plt.subplots(rows, len(columns), figsize=(2.3 * len(columns), 2.5 * rows + 0.6), squeeze=False,
                                 layout="constrained")
        threshold = float(meta["threshold"])
        for r in range(rows):
            clean, adv = entry["clean"][r], entry["adversarial"][r]
            # scaled so that -eps is black and +eps white (grey: unchanged), whatever the eps
            delta = np.clip(0.5 + (adv - clean) / (2 * float(meta["eps"])), 0, 1)
            images = [clean, adv, delta]
            cs, ad = float(entry["clean_scores"][r]), float(entry["adv_scores"][r])
            label = "anomaly" if entry["labels"][r] else "normal"
            texts = [f"{label} #{int(entry['index'][r])}\nscore {cs:.3g} {'≥' if cs >= threshold else '<'} thr",
                     f"{meta['sources'][r]}\nscore {ad:.3g} {'≥' if ad >= threshold else '<'} thr",
                     f"{ROLES[r] if r < len(ROLES) else ''}\nperturbation (black -eps, white +eps)"]
            for c, (image, text) in enumerate(zip(images, texts)):
                shown, cmap = _show(image)
                axes[r][c].imshow(shown, cmap=cmap, vmin=0, vmax=1)
                axes[r][c].set_title(text, fontsize=8)
            if has_maps:
                maps = (entry["maps_clean"][r], entry["maps_adv"][r])
                low, high = float(min(m.min() for m in maps)), float(max(m.max() for m in maps))
                for c, (m, text) in enumerate(zip(maps, ("map clean", "map attacked")), start=3):
                    axes[r][c].imshow(np.squeeze(m), cmap="inferno", vmin=low, vmax=high)
                    axes[r][c].set_title(text, fontsize=8)
            for ax in axes[r]:
                ax.set_xticks([])
                ax.set_yticks([])
        eps = eps_label(float(meta["eps"]), meta["norm"])
        fig.suptitle(f"{meta['dataset']} / {meta['method']} (class {meta['normal_class']}, seed {meta['seed']}): "
                     f"{meta['norm']} eps {eps}, threshold {threshold:.3g} (best F1 on clean)", fontsize=9)
        paths.append(_save(fig, folder / f"gallery_{safe_name(meta['dataset'])}_{safe_name(meta['method'])}.png"))
    return paths
