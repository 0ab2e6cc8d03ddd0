"""Pretrained backbone weights as users get them (methods/common/weights.py): torchvision's real file names,
weights enums keyed apart, a one-line error offline. The network call is always stubbed: nothing downloads."""

from __future__ import annotations

import urllib.error

import pytest
import torch

from robust_ad_bench.core.errors import BenchError
from robust_ad_bench.methods.common import weights
from robust_ad_bench.methods.common.backbones import TorchvisionFeatures

torchvision = pytest.importorskip("torchvision")

V1, V2 = "resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"  # torchvision's names of IMAGENET1K_V1 and _V2


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """An empty weights folder (the env variable) and an empty torch hub cache; downloads fail as offline."""
    env, hub = tmp_path / "weights", tmp_path / "hub"
    env.mkdir()
    (hub / "checkpoints").mkdir(parents=True)
    monkeypatch.setenv(weights.WEIGHTS_ENV, str(env))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", offline)
    return env, hub / "checkpoints"


def fake_resnet18_file(path, seed):
    torch.manual_seed(seed)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)


def test_the_real_file_names_come_from_torchvision():
    assert weights.torchvision_file_names("resnet50") == [V1, V2]
    assert weights.torchvision_file_names("efficientnet_b6") == ["efficientnet_b6_lukemelas-24a108a5.pth"]
    assert weights.weights_id("resnet50", "IMAGENET1K_V1") == V1
    assert weights.weights_id("resnet50", "IMAGENET1K_V2") == V2 == weights.weights_id("resnet50", True)
    assert weights.weights_id("resnet50", False) == ""


def test_v1_and_v2_files_are_found_under_their_names_and_keyed_apart(folders):
    env, hub = folders
    # the lookup by model name finds torchvision's real names, the lukemelas EfficientNet too
    (hub / "efficientnet_b6_lukemelas-24a108a5.pth").write_bytes(b"x")
    assert weights.local_weights("efficientnet_b6") == hub / "efficientnet_b6_lukemelas-24a108a5.pth"
    # resnet18's one file under its real name; V1 and V2 of resnet50 (fake contents: resnet18's shapes do not
    # fit, so the lookup is tested by name and the loading on resnet18)
    fake_resnet18_file(hub / "resnet18-f37072fd.pth", seed=1)
    (env / V1).write_bytes(b"v1")
    (hub / V2).write_bytes(b"v2")
    assert weights.local_file(V1) == env / V1 and weights.local_file(V2) == hub / V2
    assert weights.local_weights("resnet50") == env / V1  # V1 first, as before the real names were known
    from robust_ad_bench.benchmark.grid.jobs import content_key

    keys = {p: content_key({"params": {"weights_id": weights.weights_id("resnet50", p)}})
            for p in ("IMAGENET1K_V1", "IMAGENET1K_V2")}
    assert keys["IMAGENET1K_V1"] != keys["IMAGENET1K_V2"]
    # loading by enum name reads the local file (no download): the weights are the file's
    features = TorchvisionFeatures("resnet18", pretrained="IMAGENET1K_V1", image_size=32)
    saved = torch.load(hub / "resnet18-f37072fd.pth", weights_only=True)
    torch.testing.assert_close(features.body.conv1.weight, saved["conv1.weight"])
    # a `weights` value that names an enum member means the same (methods with only a file parameter)
    same = TorchvisionFeatures("resnet18", weights="IMAGENET1K_V1", image_size=32)
    torch.testing.assert_close(same.body.conv1.weight, saved["conv1.weight"])


def test_offline_error_names_the_file_and_where_to_put_it(folders):
    env, hub = folders
    with pytest.raises(BenchError) as info:
        TorchvisionFeatures("resnet18", pretrained=True, image_size=32)
    message = str(info.value)
    assert "\n" not in message and "resnet18-f37072fd.pth" in message and str(env) in message and str(hub) in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message and "URLError" in message
    with pytest.raises(BenchError, match=r"unknown weights of torchvision model 'resnet50' 'IMAGENET1K_V9'.*V2"):
        weights.weights_id("resnet50", "IMAGENET1K_V9")


def test_online_download_goes_through_torchvision(folders, monkeypatch):
    env, hub = folders
    calls = []

    def download(url, *args, **kwargs):  # what torch.hub would fetch and cache, stubbed
        calls.append(url)
        return torchvision.models.resnet18(weights=None).state_dict()

    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", download)
    TorchvisionFeatures("resnet18", pretrained=True, image_size=32)
    assert calls == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]


def test_an_explicit_file_is_keyed_by_its_hash(tmp_path):
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    fake_resnet18_file(a, seed=1)
    fake_resnet18_file(b, seed=2)
    ids = weights.weights_id("resnet18", False, str(a)), weights.weights_id("resnet18", False, str(b))
    assert ids[0].startswith("a.pth sha256:") and ids[0].split(":")[1] != ids[1].split(":")[1]


def test_timm_backbone_from_a_local_file(folders):
    timm = pytest.importorskip("timm")
    env, hub = folders
    hub_id, stem = weights.timm_weights_tag("tf_efficientnet_b0")
    assert stem.startswith("tf_efficientnet_b0.")
    model = timm.create_model("tf_efficientnet_b0", pretrained=False)
    torch.save(model.state_dict(), env / f"{stem}.pth")
    features = TorchvisionFeatures("tf_efficientnet_b0", image_size=32)
    assert [f.shape[-1] for f in features(torch.rand(1, 1, 32, 32))] == [8, 4, 2]
    assert weights.weights_id("tf_efficientnet_b6", True).startswith("timm:")


def test_timm_offline_error_names_the_file(folders, monkeypatch):
    timm = pytest.importorskip("timm")
    env, hub = folders
    create = timm.create_model

    def offline(name, pretrained=False, **kwargs):  # huggingface_hub's error when the hub is unreachable, stubbed
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
        return create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(BenchError) as info:
        TorchvisionFeatures("tf_efficientnet_b0", image_size=32)
    stem = weights.timm_weights_tag("tf_efficientnet_b0")[1]
    message = str(info.value)
    assert "\n" not in message and f"{stem}.safetensors" in message and str(env) in message
