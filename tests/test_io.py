from pathlib import Path

import pytest
import torch
from torch import nn

import edgeslim
import edgeslim.io
from edgeslim.errors import ModelLoadError
from edgeslim.plugin.pruning import Method, PruneConfig, Target, prune
from edgeslim.plugin.pruning.unstructured import masks_of


def test_pruned_reference_round_trip_bit_exact(mobilenet_v2_fmnist: nn.Module, tmp_path: Path) -> None:
    x = torch.randn(2, 3, 32, 32)
    res = prune(mobilenet_v2_fmnist, x[:1], PruneConfig(target=Target.parse("ratio=0.4")))
    path = edgeslim.save(res.model, tmp_path / "m.pt", meta={"note": "hi"})
    raw = torch.load(path, weights_only=True)  # no pickled classes
    assert raw["kind"] == "pruned" and raw["arch"]["name"] == "mobilenet_v2"
    back = edgeslim.load(path)
    assert edgeslim.io.load_meta(path) == {"note": "hi"}
    with torch.no_grad():
        assert torch.equal(back(x), res.model.eval()(x))
    for (k, a), (k2, b) in zip(back.state_dict().items(), res.model.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)


class Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 16, 3)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.c(x)).mean((2, 3)))


def test_custom_architecture_needs_base(tmp_path: Path) -> None:
    x = torch.randn(1, 3, 16, 16)
    res = prune(Custom(), x, PruneConfig(target=Target.parse("ratio=0.5")))
    path = edgeslim.save(res.model, tmp_path / "c.pt")
    with pytest.raises(ModelLoadError, match="base=YourModel"):
        edgeslim.load(path)
    back = edgeslim.load(path, base=Custom())
    assert back.c.out_channels == 8 and torch.equal(back(x), res.model.eval()(x))


def test_masks_are_saved(tmp_path: Path) -> None:
    torch.manual_seed(0)
    res = prune(Custom(), torch.randn(1, 3, 16, 16), PruneConfig(method=Method.UNSTRUCTURED, target=Target.parse("sparsity=0.5")))
    assert res.masks is not None
    saved = {n: m.clone() for n, m in res.masks.masks.items()}
    assert sorted(saved) == ["c.weight"] and all(m.dtype == torch.bool for m in saved.values())  # fc: the head
    back = edgeslim.load(edgeslim.save(res, tmp_path / "u.pt"), base=Custom())  # a PruneResult saves its model
    masks = masks_of(back)
    assert sorted(masks) == sorted(saved)
    for name, mask in saved.items():
        assert torch.equal(masks[name], mask), name  # the same weights are masked, not just the same names
        assert 0.45 < float((~mask).float().mean()) < 0.55
        weight = back.get_parameter(name)
        assert torch.equal(weight, res.model.get_parameter(name).detach())
        assert torch.count_nonzero(weight[~mask]) == 0  # masked weights are still zero after the reload
        assert torch.count_nonzero(weight[mask]) == int(mask.sum())  # and the kept ones are not


def test_bad_files(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"definitely not a model")
    with pytest.raises(ModelLoadError, match=r"junk\.pt"):
        edgeslim.load(tmp_path / "junk.pt")
    with pytest.raises(ModelLoadError, match="does not exist"):
        edgeslim.load(tmp_path / "missing.pt")
    torch.save({"w": torch.zeros(1)}, tmp_path / "sd.pt")
    with pytest.raises(ModelLoadError, match="not an edgeslim model file"):
        edgeslim.load(tmp_path / "sd.pt")
    torch.save(Custom(), tmp_path / "pickled.pt")  # a pickled module is refused, never unpickled
    with pytest.raises(ModelLoadError, match="weights_only"):
        edgeslim.load(tmp_path / "pickled.pt")
