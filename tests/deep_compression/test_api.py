"""``pack`` / ``unpack`` on a small model: bit-exact rebuild, sparsity, trained centroids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import edgeslim
from edgeslim.deep_compression import EszError, PackConfig, esz, pack, unpack
from edgeslim.deep_compression.codebook import fit
from edgeslim.deep_compression.trained import SharedWeights, train_centroids
from edgeslim.errors import ConfigError


def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()


@pytest.fixture(scope="module")
def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, 8, 8, generator=g)
    return DataLoader(TensorDataset(x, torch.randint(0, 10, (256,), generator=g)), batch_size=32)


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory, loader: DataLoader) -> tuple[nn.Module, edgeslim.PackResult]:
    torch.manual_seed(0)
    net = small_net()
    cfg = PackConfig(sparsity=0.7, prune_steps=2, prune_epochs=0.5, quant_epochs=0.5, sensitivity_batches=2)
    result = pack(net, cfg, path=tmp_path_factory.mktemp("p") / "m.esz", train_data=loader, heldout=loader)
    return net, result


def test_unpack_is_bit_exact(packed: tuple[nn.Module, edgeslim.PackResult], loader: DataLoader) -> None:
    _, result = packed
    back = unpack(result.path, base=small_net())
    want, got = result.model.state_dict(), back.state_dict()
    assert set(want) == set(got)
    for k in want:
        assert want[k].dtype == got[k].dtype and torch.equal(want[k], got[k]), k
    x = next(iter(loader))[0]
    assert torch.equal(result.model(x), back(x))


def test_sparsity_codebooks_and_sizes(packed: tuple[nn.Module, edgeslim.PackResult]) -> None:
    net, result = packed
    layers = {row["name"]: row for row in result.layers}
    assert set(layers) == {"0.weight", "3.weight", "8.weight"}
    weights = sum(r["weights"] for r in layers.values())
    zeros = sum(r["weights"] * r["sparsity"] for r in layers.values())
    assert zeros / weights == pytest.approx(0.7, abs=0.02)
    stored = sum(r["weights"] * (1 - r["sparsity"]) for r in layers.values())
    assert sum(r["bits"] * r["weights"] * (1 - r["sparsity"]) for r in layers.values()) <= 4.0 * stored + 1e-6
    for name, row in layers.items():
        w = result.model.state_dict()[name]
        distinct = w[w != 0].unique().numel()
        assert distinct <= 2 ** row["bits"], name
        assert (w == 0).float().mean().item() == pytest.approx(row["sparsity"], abs=1e-6)
    stages = {s["stage"]: s["bytes"] for s in result.stages}
    assert stages["fp32"] == result.fp32_bytes and stages["entropy"] == result.bytes == result.path.stat().st_size
    assert stages["pruned"] > stages["codebook"]
    assert result.ratio == pytest.approx(result.fp32_bytes / result.bytes)
    assert set(result.init) == {"linear", "density"}
    assert not torch.equal(net[0].weight, result.model[0].weight)  # the input model is left alone


def test_manifest_records_shapes_codebooks_and_checksums(packed: tuple[nn.Module, edgeslim.PackResult]) -> None:
    _, result = packed
    m = esz.read(result.path).manifest
    entry = next(e for e in m["layers"] if e["name"] == "3.weight")
    assert entry["shape"] == [32, 16, 3, 3]
    assert len(bytes.fromhex(entry["codebook"])) == 4 * 2 ** entry["bits"]
    assert set(m["blobs"]) == {"0.weight", "3.weight", "8.weight", "dense"}
    assert m["arch"] is None  # a custom class: unpack needs base=


def test_unpack_refuses_corruption_and_missing_architecture(
    packed: tuple[nn.Module, edgeslim.PackResult], tmp_path: Path
) -> None:
    _, result = packed
    with pytest.raises(EszError, match="does not name a torchvision architecture"):
        unpack(result.path)
    bad = tmp_path / "bad.esz"
    bad.write_bytes(result.path.read_bytes()[:-7])
    with pytest.raises(EszError, match=r"bad.esz is not a usable .esz file: truncated"):
        unpack(bad, base=small_net())


def test_pack_refuses_an_existing_file(packed: tuple[nn.Module, edgeslim.PackResult], loader: DataLoader) -> None:
    net, result = packed
    with pytest.raises(ConfigError, match=r"m.esz already exists; pass overwrite=True"):
        pack(net, path=result.path, train_data=loader, heldout=loader)


def test_centroid_gradient_is_the_sum_of_the_shared_weights_gradients() -> None:
    w = torch.randn(6, 5)
    w[w.abs() < 0.3] = 0
    positions = torch.nonzero(w.reshape(-1) != 0).reshape(-1)
    book = fit(w.reshape(-1)[positions], 2, "linear")
    p = SharedWeights(w.shape, positions, book)
    out = p(torch.empty(0))
    upstream = torch.randn(6, 5)
    (out * upstream).sum().backward()
    assert p.centroids.grad is not None
    for k in range(4):
        sel = positions[book.codes == k]
        assert p.centroids.grad[k].item() == pytest.approx(upstream.reshape(-1)[sel].sum().item(), abs=1e-5)
    assert torch.equal(out.reshape(-1)[w.reshape(-1) == 0], torch.zeros(int((w == 0).sum())))


def test_trained_centroids_move_and_weights_stay_codebook_values(loader: DataLoader) -> None:
    torch.manual_seed(1)
    net = small_net()
    w = net[3].weight.detach()
    positions = torch.nonzero(w.reshape(-1).abs() > 0.05).reshape(-1)
    book = fit(w.reshape(-1)[positions], 3, "linear")
    trained = train_centroids(net, {"3.weight": (positions, book)}, loader, epochs=1.0, lr=1e-2)
    assert not torch.equal(trained["3.weight"].centroids, book.centroids)
    flat = torch.zeros(w.numel())
    flat[positions] = trained["3.weight"].values()
    assert torch.equal(net[3].weight.detach().reshape(-1), flat)
    assert isinstance(net[3].weight, nn.Parameter) and not hasattr(net[3], "parametrizations")


def test_result_summary_has_the_documented_keys_and_no_model(packed: tuple[nn.Module, edgeslim.PackResult]) -> None:
    _, result = packed
    d = json.loads(json.dumps(result.to_dict()))
    assert set(d) == {"path", "bytes", "fp32_bytes", "ratio", "stages", "layers", "init", "config"}
    assert d["path"] == str(result.path) and d["bytes"] == result.path.stat().st_size
    assert d["ratio"] == pytest.approx(result.fp32_bytes / result.bytes)
    assert PackConfig.from_dict(d["config"]) == result.config and d["layers"] == result.layers


def test_config_round_trips_and_refuses_bad_values() -> None:
    cfg = PackConfig(sparsity=0.8, bits=(3, 4), init="density")
    assert PackConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"sparsity 0\.99 exceeds the largest per-layer sparsity measured"):
        PackConfig(sparsity=0.99)
    with pytest.raises(ConfigError, match=r"unknown pack option\(s\) sparsty"):
        PackConfig.from_dict({"sparsty": 0.5})


def test_int8_export_keeps_the_packed_integers_through_batch_norm_folding(
    packed: tuple[nn.Module, edgeslim.PackResult], loader: DataLoader
) -> None:
    from edgeslim.deep_compression.deploy import packed_integers, quantize_unpacked

    _, result = packed
    manifest = esz.read(result.path).manifest
    model = unpack(result.path, base=small_net())
    g = torch.Generator().manual_seed(3)
    for bn in (model[1], model[4]):  # per-channel fold factors of both signs
        bn.weight.data = torch.randn(bn.num_features, generator=g)
        bn.running_var.data = torch.rand(bn.num_features, generator=g) + 0.2
    ints = packed_integers(model, manifest, result.path)
    q = quantize_unpacked(model, manifest, torch.zeros(1, 3, 8, 8), loader, path=result.path)
    for module, k in ints.items():
        cw = q.coded_weights[module]
        got = cw.codes.long() - 127  # the int8-grid levels are -127..127
        sign = torch.sign(model[1].weight if module == "0" else model[4].weight if module == "3" else torch.ones(10))
        assert torch.equal(got, k.long() * sign.long().reshape(-1, *([1] * (k.dim() - 1)))), module
    assert min(r.sqnr_db for r in q.report.layers) >= 100
    old = {**manifest, "layers": [{k: v for k, v in e.items() if k != "int8_step"} for e in manifest["layers"]]}
    with pytest.raises(ConfigError, match=r"was packed without the int8 grid .* unpack it with --quant fp32"):
        quantize_unpacked(model, old, torch.zeros(1, 3, 8, 8), loader, path=result.path)
