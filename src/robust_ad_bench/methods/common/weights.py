"""Pretrained backbone weights as users get them: torchvision's ``weights=`` enums and timm's ``pretrained``.

How weights are supplied (the README points here):

- ``pretrained: true`` (the library's default weights) or a named torchvision weights enum member such as
  ``IMAGENET1K_V1`` / ``IMAGENET1K_V2``: the file is torchvision's own (``resnet50-0676ba61.pth`` for V1,
  ``resnet50-11ad3fa6.pth`` for V2, ``efficientnet_b6_lukemelas-24a108a5.pth``). It is read from the folder
  named by ``ROBUST_AD_BENCH_WEIGHTS``, else from torch hub's cache (``torch.hub.get_dir()/checkpoints``), else
  downloaded there by torchvision (``load_state_dict_from_url``). Offline, a one-line error names the file and
  the folders to put it in.
- timm models (``tf_efficientnet_b6``, when timm is installed): a local file ``<model>.<tag>.safetensors``
  (or ``.pth``/``.bin``) in those folders, else timm's own download (the Hugging Face cache).
- an explicit file (the method's ``weights`` parameter): that file.

The weights' identity (torchvision's file name, which carries the first hex digits of its SHA-256; timm's hub id;
an explicit file's name and SHA-256) is what ``weights_id`` returns, for the job key: ResNet-50 V1 and V2 train
different models and get different keys.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from robust_ad_bench.core.errors import BenchError, unknown_choice

WEIGHTS_ENV = "ROBUST_AD_BENCH_WEIGHTS"
TIMM_SUFFIXES = (".safetensors", ".pth", ".bin")


def weight_folders() -> list[Path]:
    """Where local weight files are looked for: ``$ROBUST_AD_BENCH_WEIGHTS``, then torch hub's checkpoints."""
    folders = [Path(os.environ[WEIGHTS_ENV])] if os.environ.get(WEIGHTS_ENV) else []
    return folders + [Path(torch.hub.get_dir()) / "checkpoints"]


def _folders_text() -> str:
    return " or ".join(str(f) for f in weight_folders())


def is_torchvision_model(name: str) -> bool:
    import torchvision

    return name in torchvision.models.list_models()


def torchvision_enum(name: str, pretrained: bool | str) -> Any:
    """The torchvision weights enum member that ``pretrained`` names for model ``name`` (True: its DEFAULT)."""
    from torchvision.models import get_model_weights

    members = get_model_weights(name)
    if pretrained is True:
        return members.DEFAULT
    if isinstance(pretrained, str) and pretrained in members.__members__:
        return members[pretrained]
    raise unknown_choice(f"weights of torchvision model '{name}'", str(pretrained), ["true", *members.__members__])


def torchvision_file_names(name: str) -> list[str]:
    """torchvision's file names of every weights enum member of model ``name``, in the enum's order (V1 before V2:
    the lookup by name finds what it found before these names were known, and V1 is what the papers used)."""
    from torchvision.models import get_model_weights

    try:
        members = get_model_weights(name)
    except (ValueError, KeyError):
        return []
    return list(dict.fromkeys(os.path.basename(m.url) for m in members))


def local_file(file_name: str) -> Path | None:
    for folder in weight_folders():
        if (folder / file_name).is_file():
            return folder / file_name
    return None


def local_weights(name: str) -> Path | None:
    """The first local weights file of torchvision model ``name``: its real file names first, in the enum's order
    (e.g. ``efficientnet_b6_lukemelas-24a108a5.pth``; ResNet-50's V1 before V2), then any ``name-<hash>.pth``."""
    for file_name in torchvision_file_names(name):
        found = local_file(file_name)
        if found is not None:
            return found
    for folder in weight_folders():
        found = sorted(folder.glob(f"{name}-*.pth")) if folder.is_dir() else []
        if found:
            return found[0]
    return None


def find_weights(name: str, weights: str = "") -> Path:
    """The weights file of a torchvision backbone: ``weights`` if given, else ``local_weights(name)``."""
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BenchError(f"backbone weights file '{weights}' does not exist")
        return path
    found = local_weights(name)
    if found is None:
        names = ", ".join(torchvision_file_names(name)) or f"{name}-*.pth"
        raise BenchError(
            f"no pretrained weights for backbone '{name}': looked for {names} in {_folders_text()}. Put "
            f"torchvision's file there (or set {WEIGHTS_ENV} to its folder), or pass its path as the method "
            f"parameter 'weights', or set 'pretrained' to download it, or use features trained on the normal data")
    return found


def enum_named(name: str, weights: str, pretrained: bool | str) -> tuple[str, bool | str]:
    """A ``weights`` value that names a torchvision weights enum member (``IMAGENET1K_V1``) rather than a file
    means ``pretrained: <that name>`` (so a method with only a ``weights`` parameter takes enum names too)."""
    if weights and not Path(weights).expanduser().exists() and is_torchvision_model(name):
        from torchvision.models import get_model_weights

        if weights in get_model_weights(name).__members__:
            return "", weights
    return weights, pretrained


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def timm_weights_tag(name: str) -> tuple[str, str]:
    """(hub id, local file stem) of timm model ``name``'s default pretrained weights."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise unknown_choice("timm model with pretrained weights", name, timm.list_pretrained()[:20])
    tag = getattr(cfg, "tag", "") or ""
    stem = f"{name}.{tag}" if tag else name
    hub_id = getattr(cfg, "hf_hub_id", "") or getattr(cfg, "url", "") or stem
    return hub_id, stem


def weights_id(name: str, pretrained: bool | str, weights: str = "") -> str:
    """What identifies the weights in the job key ('' when none are used): torchvision's file name (with its
    hash digits), timm's hub id, or an explicit file's name and SHA-256. Computed without downloading."""
    weights, pretrained = enum_named(name, weights, pretrained)
    if weights:
        path = find_weights(name, weights)
        return f"{path.name} sha256:{file_sha256(path)[:16]}"
    if pretrained is False or pretrained == "":
        return ""
    if is_torchvision_model(name):
        return os.path.basename(torchvision_enum(name, pretrained).url)
    if pretrained is not True:
        raise BenchError(f"pretrained '{pretrained}' of timm model '{name}': timm takes pretrained: true")
    return f"timm:{timm_weights_tag(name)[0]}"


def offline_error(what: str, file_name: str, url: str, exc: BaseException) -> BenchError:
    return BenchError(f"could not download {what} ({file_name}) from {url}: {type(exc).__name__}: {exc}; "
                      f"offline, put {file_name} in {_folders_text()}")


def load_torchvision(name: str, pretrained: bool | str = False, weights: str = "") -> torch.nn.Module:
    """torchvision model ``name`` (eval mode) with weights: an explicit file, a weights enum member / ``True``
    (local file, else torchvision's download), or, when neither is given, a local file found by name."""
    import torchvision

    weights, pretrained = enum_named(name, weights, pretrained)
    model = torchvision.models.get_model(name, weights=None)
    if weights or pretrained is False or pretrained == "":
        state = torch.load(find_weights(name, weights), map_location="cpu", weights_only=True)
    else:
        member = torchvision_enum(name, pretrained)
        file_name = os.path.basename(member.url)
        path = local_file(file_name)
        if path is not None:
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            try:
                state = member.get_state_dict(progress=False, check_hash=True)
            except Exception as exc:  # URLError, timeouts, HTTP errors: all mean "not reachable"
                raise offline_error(f"torchvision weights {name} {member.name}", file_name, member.url, exc) from None
    model.load_state_dict(state)
    return model.eval()


def create_timm(name: str, pretrained: bool = True, **kwargs: Any) -> torch.nn.Module:
    """timm model ``name`` with its pretrained weights: a local ``<model>.<tag>.safetensors`` (or .pth/.bin)
    in the weight folders, else timm's own download. ``kwargs`` go to ``timm.create_model``."""
    try:
        import timm
    except ImportError:
        raise BenchError(f"backbone '{name}' needs timm: pip install 'robust-ad-bench[timm]'") from None
    if name not in timm.list_models():
        raise unknown_choice("timm model", name, timm.list_models("*efficientnet_b*")[:20])
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs).eval()
    hub_id, stem = timm_weights_tag(name)
    for suffix in TIMM_SUFFIXES:
        path = local_file(stem + suffix)
        if path is not None:
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                                     **kwargs).eval()
    try:
        return timm.create_model(name, pretrained=True, **kwargs).eval()
    except Exception as exc:  # offline: huggingface_hub or urllib errors
        raise offline_error(f"timm weights {name}", stem + ".safetensors", hub_id, exc) from None
