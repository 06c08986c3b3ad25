import json
from dataclasses import fields, replace

import pytest

from edgeslim.config import from_json, to_json
from edgeslim.errors import ConfigError
from edgeslim.plugin.pruning import Allocation, LayerRule, Method, PruneConfig, Target, TargetKind
from edgeslim.plugin.pruning.config import TransformerConfig


@pytest.mark.parametrize(
    ("spec", "kind", "value"),
    [("params=0.5", TargetKind.PARAMS, 0.5), ("ratio=0.3", TargetKind.RATIO, 0.3),
     ("bytes=20MB", TargetKind.BYTES, 20e6), ("bytes=1MiB", TargetKind.BYTES, 2**20),
     ("macs=0.4", TargetKind.MACS, 0.4)],
)
def test_target_parse(spec: str, kind: TargetKind, value: float) -> None:
    t = Target.parse(spec)
    assert t.kind is kind and t.value == pytest.approx(value)


@pytest.mark.parametrize("spec", ["params=1.5", "ratio=0", "ratio=-0.2", "flops=0.5", "params", "params=0.5MB"])
def test_bad_targets(spec: str) -> None:
    with pytest.raises(ConfigError):
        Target.parse(spec)


def test_config_round_trips_through_json() -> None:
    cfg = PruneConfig(
        method=Method.HYBRID, criterion="taylor", target=Target.parse("macs=0.4"), allocation=Allocation.GLOBAL,
        sparsity=0.5, ignored_layers=("fc",), layer_rules=(LayerRule("layer4.*", ratio=0.7),), round_to=8,
    )
    again = PruneConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_config_is_on_the_one_serializer_with_the_keys_files_hold() -> None:
    cfg = PruneConfig(criterion="l1", target="bytes=2MB", layer_rules=(LayerRule("fc", skip=True),),
                      transformer=TransformerConfig(embed_dim=True), forward_fn=lambda m, x: m(x))
    d = cfg.to_dict()
    assert d["target"] == "bytes=2e+06" and d["method"] == "structured" and d["ignored_layers"] is None
    assert d["layer_rules"] == [{"pattern": "fc", "ratio": None, "sparsity": None, "skip": True}]
    assert d["transformer"] == {"heads": True, "mlp": True, "embed_dim": True}
    assert d["forward_fn"] is None and d["_dropped"] == [f"forward_fn: {cfg.forward_fn!r} has no import path (lambda or "
                                                         "local); pass it again in Python"]
    assert set(d) == {f.name for f in fields(PruneConfig)} | {"_dropped"}
    again = from_json(to_json(cfg))  # tagged: the type comes from the data; the lambda is not in it
    assert again == replace(cfg, forward_fn=None) and json.loads(to_json(cfg))["target"] == "bytes=2e+06"
    with pytest.raises(ConfigError, match=r"edgeslim\.config: layer_rules\[0\]\.skip must be true or false, got 'yes'"):
        PruneConfig.from_dict({"layer_rules": [{"pattern": "fc", "skip": "yes"}]})


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="needs sparsity"):
        PruneConfig(method=Method.UNSTRUCTURED)
    with pytest.raises(ConfigError, match=r"unknown prune config key\(s\) ratio; known: accept_nearest, allocation, "):
        PruneConfig.from_dict({"criterion": "l1", "ratio": 0.5})
    with pytest.raises(ConfigError, match="regex"):
        LayerRule("layer[", ratio=0.5)
