import json
from pathlib import Path

import pytest
import torch
from torch import nn

from edgeslim.errors import ConfigError
from edgeslim.plugin.pruning import PruneConfig, SensitivityResult, sensitivity
from edgeslim.plugin.pruning.sensitivity import score


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(2)]


def test_masking_equals_real_pruning(small_net: nn.Module, x32: torch.Tensor) -> None:
    """The table's damage (measured by masking) equals the damage of the really pruned model."""
    from edgeslim.plugin.pruning import Target, prune

    data = _data()
    table = sensitivity(small_net, x32, data, PruneConfig(criterion="l1", sensitivity_ratios=(0.5,)))
    row = next(r for r in table.rows if r["group"] == "a.0")
    real = prune(small_net, x32, PruneConfig(criterion="l1", target=Target.parse("ratio=0.5"),
                                              ignored_layers=("fc", "stem.0")))
    _acc, loss = score(real.model, data, nn.functional.cross_entropy)
    assert loss == pytest.approx(row["loss"], rel=1e-4)
    assert row["params_removed"] == real.before.params - real.after.params


def test_table_plot_roundtrip_and_allocation(small_net: nn.Module, x32: torch.Tensor, tmp_path: Path) -> None:
    table = sensitivity(small_net, x32, _data(), PruneConfig(sensitivity_ratios=(0.25, 0.5, 0.75)))
    assert set(table.groups()) == {"stem.0", "a.0"}  # b.0 is coupled to a.0 through the residual add
    assert len(table.rows) == 6
    table.save(tmp_path / "t.json")
    again = SensitivityResult.load(tmp_path / "t.json")
    assert again.rows == table.rows
    png = table.plot(tmp_path / "t.png")
    assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "| a.0 |" in table.markdown()
    alloc = table.allocator()
    assert all(r == 0 for r in alloc(0.0).values())
    assert all(r == 0.75 for r in alloc(1e9).values())


def test_needs_data(small_net: nn.Module, x32: torch.Tensor) -> None:
    with pytest.raises(ConfigError, match="held-out data"):
        sensitivity(small_net, x32, [])


def test_table_file_round_trips_and_refuses_unknown_keys(tmp_path: Path) -> None:
    row = {"group": "a.0", "channels": 8, "ratio": 0.5, "accuracy": 0.25, "loss": 2.5, "acc_drop": 0.0625,
           "loss_increase": 0.25, "params_removed": 100, "macs_removed": 6400}
    table = SensitivityResult(0.3125, 2.25, 1000, 64000, [row])
    path = table.save(tmp_path / "t.json")
    assert json.loads(path.read_text()) == {"base_accuracy": 0.3125, "base_loss": 2.25, "params": 1000, "macs": 64000,
                                            "rows": [row]}
    assert SensitivityResult.load(path) == table
    path.write_text(json.dumps({**table.to_dict(), "param": 1}))
    with pytest.raises(ConfigError, match=r"unknown SensitivityResult key\(s\) param; known: base_accuracy, base_loss"):
        SensitivityResult.load(path)
