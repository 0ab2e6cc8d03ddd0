"""Any image shape: every method the package ships trains, scores, maps and is attacked on odd C×H×W
(odd sides, non-square, 1 or 3 channels) at a tiny budget. A method that assumes a size fails here: the
size-assuming double below shows the check catching one. 3×64×96 stands in for 224 px (kept small for
the suite's run time)."""

from __future__ import annotations

import math
import textwrap

import pytest
import torch
from torch import nn

from conftest import TINY_METHOD_PARAMS
from robust_ad_bench.benchmark.cli import main
from robust_ad_bench.benchmark.results.store import Store
from robust_ad_bench.core.dataset import TrainSet
from robust_ad_bench.core.detector import Detector
from robust_ad_bench.core.registry import ATTACKS, METHODS
from robust_ad_bench.methods.advrad.diffusion import SmallUNet, multiscale_error
from robust_ad_bench.methods.common.networks import ConvDecoder, ConvEncoder, Padding, halvings

SHAPES = [(1, 25, 25), (3, 32, 48), (1, 28, 28), (3, 64, 96)]
# every registered method of the package, hidden ones included; plugins (test doubles) are not
SHIPPED = [n for n in METHODS.names() if METHODS.get(n).__module__.startswith("robust_ad_bench.")]
# the smallest budgets that still train every part (shapes are under test here, not detection)
_FLOW = {"pretext_epochs": 1, "epochs": 1, "coupling_blocks": 1, "pos_dim": 4}
_SLA = {"n_projections": 4, "projection_dim": 4, "encoder_epochs": 1, "max_epochs": 1}
_CONTRASTIVE = {"epochs": 1, "width": 4, "proj_dim": 8, "train_steps": 1}
PARAMS = {
    **TINY_METHOD_PARAMS, "ae": {"epochs": 1}, "ae-at": {"epochs": 1, "train_steps": 1}, "deep-svdd": {"epochs": 1},
    "bgad": _FLOW, "bgad-unsup": _FLOW, "sla2p": _SLA, "sla": _SLA, "sla2p-const-inner": _SLA,
    "advrad": {"epochs": 1, "width": 4}, "diffpure-ae": {"epochs": 1, "width": 4, "detector_params": {"epochs": 1}},
    "diffpure": {"epochs": 1, "width": 4, "detector": "knn"},
    "contrastive": {k: v for k, v in _CONTRASTIVE.items() if k != "train_steps"},
    "contrastive-at": _CONTRASTIVE, "cobra": _CONTRASTIVE, "cobra-no-opposite": _CONTRASTIVE,
}
EPS = 8 / 255


def random_train(shape: tuple[int, int, int]) -> TrainSet:
    """Eight normal images and four anomalies with a defect mask (for methods that need anomalies)."""
    g = torch.Generator().manual_seed(0)
    images = 0.25 + 0.5 * torch.rand(8, *shape, generator=g)
    anomalies = torch.rand(4, *shape, generator=g)
    masks = torch.zeros(4, *shape[1:], dtype=torch.bool)
    masks[:, 2:9, 3:10] = True
    return TrainSet(images, anomalies, masks, default_eps={"linf": (EPS,)})


def check_any_shape(cls: type[Detector], shape: tuple[int, int, int], params: dict | None) -> None:
    """The Detector contract on ``shape``: fit; score finite, one per image, with a finite non-zero
    gradient in x; anomaly map (if any) N×H×W; one PGD step; a restored copy scores the same."""
    torch.manual_seed(0)
    detector = cls(shape, params)
    detector.fit(random_train(shape))
    detector.eval()
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    score = detector.score(x)
    assert score.shape == (4,) and torch.isfinite(score).all()
    (grad,) = torch.autograd.grad(score.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    x = x.detach()
    with torch.no_grad():
        maps = detector.anomaly_map(x)
    assert maps is None or (maps.shape == (4, *shape[1:]) and torch.isfinite(maps).all())
    y = torch.tensor([0, 1, 0, 1])
    x_adv = ATTACKS.get("pgd")({"steps": 1}).perturb(detector, x, y, EPS)
    assert x_adv.shape == x.shape and (x_adv - x).abs().max() <= EPS + 1e-6
    clone = cls(shape, params)
    clone.restore({k: v.clone() for k, v in detector.state_dict().items()})
    with torch.no_grad():
        torch.manual_seed(2)  # stochastic scores draw the same noise for both
        expected = detector.score(x)
        torch.manual_seed(2)
        torch.testing.assert_close(clone.score(x), expected)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name", SHIPPED)
def test_every_method_works_on_any_shape(name, shape):
    check_any_shape(METHODS.get(name), shape, PARAMS.get(name))


def test_networks_keep_todays_layers_at_powers_of_two_and_size_themselves_otherwise():
    assert [halvings(s) for s in (8, 16, 32, 64, 256)] == [1, 2, 3, 4, 6]  # log2(size) - 2, at least 1
    assert [halvings(s) for s in (9, 15, 25, 28, 48, 224)] == [1, 1, 2, 2, 3, 5]  # down to 4-7 px
    with pytest.raises(ValueError, match=">= 8"):
        halvings(7)
    for shape, grid in [((1, 32, 32), (4, 4)), ((1, 25, 25), (7, 7)), ((3, 32, 48), (4, 6)), ((3, 224, 224), (7, 7)),
                        ((1, 9, 13), (5, 7))]:
        encoder, decoder = ConvEncoder(shape, width=2, latent=3), ConvDecoder(shape, width=2, latent=3)
        assert decoder.grid == grid and encoder.head.in_features == encoder.out_channels * grid[0] * grid[1]
        x = torch.rand(2, *shape)
        assert encoder(x).shape == (2, 3) and decoder(encoder(x)).shape == x.shape


def test_padding_crops_back_what_it_pads():
    padding = Padding(25, 19, 4)
    x = torch.rand(2, 3, 25, 19)
    assert padding.padded == (28, 20) and padding.pad(x).shape == (2, 3, 28, 20)
    assert torch.equal(padding.crop(padding.pad(x)), x)
    assert Padding(32, 48, 8).pad(x) is x  # multiples already: untouched


def test_multiscale_error_on_odd_sizes_is_zero_when_perfect_and_local():
    x = torch.rand(2, 3, 25, 19)
    assert multiscale_error(x, x).abs().max() == 0
    y = x.clone()
    y[:, :, 24, 18] += 1.0  # the last pixel: dropped by plain pooling of an odd side
    error = multiscale_error(x, y)
    assert error.shape == (2, 25, 19) and error[:, 24, 18].min() > 10 * error[:, :12, :9].max()


def test_unet_returns_exactly_h_w():
    unet = SmallUNet(3, (25, 19), width=4, levels=3)
    assert unet(torch.randn(2, 3, 25, 19), torch.tensor([1, 999])).shape == (2, 3, 25, 19)


class SizeAssuming(Detector):
    """A double written as the built-in networks were before any shape worked: stride-2 stages from
    log2 of the height and a linear map of a 4×4 grid."""

    def __init__(self, image_shape, config=None) -> None:
        super().__init__(image_shape, config)
        channels, size, _ = self.image_shape
        stages = max(int(math.log2(size)) - 2, 1)
        self.body = nn.Sequential(*(nn.Conv2d(channels, channels, 4, stride=2, padding=1) for _ in range(stages)))
        self.head = nn.Linear(channels * 16, 1)

    def fit(self, train: TrainSet) -> None:
        self.set_input_stats(train.images)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.normalize(x)).flatten(1)).squeeze(1)


def test_the_check_fails_a_method_that_assumes_a_size():
    check_any_shape(SizeAssuming, (3, 32, 32), None)  # a power-of-two square passes
    for shape in SHAPES:
        with pytest.raises(RuntimeError):
            check_any_shape(SizeAssuming, shape, None)


PLUGIN = '''
import torch
from robust_ad_bench import Dataset, Split, register_dataset

@register_dataset("odd-blobs")
class OddBlobs(Dataset):
    """25×19 gray noise; anomalies carry a bright square."""

    image_shape = (1, 25, 19)

    def classes(self):
        return ["0"]

    def split(self, normal_class, seed):
        g = torch.Generator().manual_seed(seed)
        train = 0.4 + 0.2 * torch.rand(16, 1, 25, 19, generator=g)
        test = 0.4 + 0.2 * torch.rand(8, 1, 25, 19, generator=g)
        masks = torch.zeros(8, 25, 19, dtype=torch.bool)
        masks[4:, 8:14, 6:12] = True
        test = torch.where(masks[:, None], torch.ones_like(test), test)
        return Split(train, test, torch.tensor([0] * 4 + [1] * 4), test_masks=masks)
'''


def test_a_grid_runs_on_a_non_square_plugin_dataset(tmp_path, capsys):
    plugin = tmp_path / "odd_blobs.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    code = main(["run", "--plugin", str(plugin), "--methods", "ae,knn", "--datasets", "odd-blobs",
                 "--attacks", "clean,pgd", "--eps", "8/255", "--no-checks", "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr()
    with Store(tmp_path / "out") as store:
        results = store.results()
    assert len(results) == 4 and (results["status"] == "ok").all()
    assert results.loc[results["method"] == "ae", "pixel_auroc"].notna().all()  # knn has no map
