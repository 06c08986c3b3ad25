"""The one config serializer: tags, allow-list, versions, plain shapes, JSON/YAML round trips."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum

import pytest

from edgeslim.config import (
    SerializationError,
    codec,
    from_data,
    from_json,
    from_yaml,
    serializable,
    to_data,
    to_json,
    to_yaml,
)
from edgeslim.errors import ConfigError
from edgeslim.plugin.quantization.config import (
    FLOAT,
    ActivationSpec,
    Granularity,
    LayerConfig,
    QuantConfig,
    WeightSpec,
)
from edgeslim.plugin.quantization.errors import QuantConfigError


class Color(str, Enum):
    RED = "red"
    BLUE = "blue"


@serializable("test.Inner")
@dataclass(frozen=True)
class Inner:
    color: Color = Color.RED
    scale: float = 1.0


@serializable("test.Outer", version=2, upgrade=lambda d, v: {**{k: x for k, x in d.items() if k != "old"}, "n": d["old"]})
@dataclass(frozen=True)
class Outer:
    n: int = 1
    inner: Inner = field(default_factory=Inner)
    pairs: tuple[tuple[str, int], ...] = ()
    maybe: Inner | None = None
    table: dict[str, float] = field(default_factory=dict)


@serializable("test.Renamed", rename={"config_name": "config"}, derived=("double",), strict=False)
@dataclass(frozen=True)
class Renamed:
    config_name: str
    n: int = 2

    @property
    def double(self) -> int:
        return 2 * self.n


@dataclass(frozen=True)
class NotRegistered:
    x: int = 0


def test_tagged_round_trip_through_json_and_yaml() -> None:
    obj = Outer(3, Inner(Color.BLUE, 2), (("a", 1), ("b", 2)), Inner(), {"x": 0.5})
    data = to_data(obj)
    assert data == {"_type": "test.Outer", "_version": 2, "n": 3,
                    "inner": {"_type": "test.Inner", "_version": 1, "color": "blue", "scale": 2},
                    "pairs": [["a", 1], ["b", 2]],
                    "maybe": {"_type": "test.Inner", "_version": 1, "color": "red", "scale": 1.0},
                    "table": {"x": 0.5}}
    assert from_data(data) == obj  # the tag names the type
    assert from_json(to_json(obj)) == obj
    assert from_yaml(to_yaml(obj), Outer) == obj
    assert json.loads(to_json(obj, tagged=False))["inner"] == {"color": "blue", "scale": 2}


def test_numpy_and_torch_scalars_are_written_as_numbers() -> None:
    import numpy as np
    import torch

    data = to_data(Outer(table={"a": np.float32(0.5), "b": torch.tensor(2.0)}), tagged=False)  # type: ignore[dict-item]
    assert data["table"] == {"a": 0.5, "b": 2.0} and type(data["table"]["a"]) is float


def test_plain_data_is_read_as_the_named_type_with_defaults_and_coercions() -> None:
    got = from_data({"n": 4, "inner": {"color": "blue", "scale": 3}, "pairs": [["z", 9]]}, Outer)
    assert got == Outer(4, Inner(Color.BLUE, 3.0), (("z", 9),))
    assert isinstance(got.inner.scale, float) and isinstance(got.pairs, tuple)


@pytest.mark.parametrize(
    ("data", "message"),
    [({"n": "4"}, "edgeslim.config: n must be an integer, got '4'"),
     ({"n": True}, "edgeslim.config: n must be an integer, got True"),
     ({"inner": {"color": "green"}}, "edgeslim.config: inner.color must be one of red, blue, got 'green'"),
     ({"pairs": [["a"]]}, r"edgeslim.config: pairs\[0\] must be a list of 2 items, got \['a'\]"),
     ({"n": 1, "m": 2, "k": 3}, "unknown test.Outer key\\(s\\) k, m; known: inner, maybe, n, pairs, table"),
     ({"inner": {"_type": "test.Outer"}}, "expected a Inner at inner, the data is a test.Outer")],
)
def test_bad_plain_data_names_the_key(data: dict, message: str) -> None:
    with pytest.raises(SerializationError, match=message) as info:
        from_data(data, Outer)
    assert isinstance(info.value, ConfigError)


def test_versions_newer_refused_older_upgraded() -> None:
    with pytest.raises(SerializationError, match=r"test\.Outer has version 3, this edgeslim reads up to 2: upgrade edgeslim"):
        from_data({"_type": "test.Outer", "_version": 3})
    assert from_data({"_type": "test.Outer", "_version": 1, "old": 7}) == Outer(7)
    with pytest.raises(SerializationError, match=r"test\.Inner has version 0 and no upgrade to 1 is declared"):
        from_data({"_type": "test.Inner", "_version": 0})


def test_allow_list_refuses_unknown_and_unregistered_types() -> None:
    with pytest.raises(SerializationError, match=r"unknown config type 'os\.system'; known: .*test\.Inner"):
        from_data({"_type": "os.system"})
    with pytest.raises(SerializationError, match="NotRegistered is not a registered config type; decorate it"):
        to_data(NotRegistered())
    with pytest.raises(SerializationError, match="untagged data"):
        from_data({"n": 1})
    with pytest.raises(SerializationError, match=r"'test\.Inner' is already registered by .*pass name="):
        serializable("test.Inner")(Renamed)
    with pytest.raises(SerializationError, match="cannot serialize a set"):
        to_data(Outer(table={"x": {1, 2}}))  # type: ignore[dict-item]


def test_renamed_keys_and_derived_values_keep_a_stored_shape() -> None:
    data = to_data(Renamed("int8", 5), tagged=False)
    assert data == {"config": "int8", "n": 5, "double": 10}
    assert from_data({**data, "future_key": 1}, Renamed) == Renamed("int8", 5)  # strict=False: newer keys ignored


def test_quant_config_is_tagged_and_reads_the_untagged_shape_of_older_files() -> None:
    cfg = QuantConfig.from_spec("w8a16").with_overrides(
        {"fc": FLOAT, "conv1": LayerConfig(WeightSpec("log2", 4, Granularity.PER_TENSOR, options=(("base", "sqrt2"),)))})
    data = cfg.to_dict()
    assert data["_type"] == "QuantConfig" and data["default"]["weight"]["_type"] == "WeightSpec"
    assert QuantConfig.from_dict(json.loads(json.dumps(data))) == cfg
    legacy = {  # what QuantConfig.to_dict wrote before the serializer (saved files, --config files)
        "default": {"weight": {"scheme": "affine", "bits": 8, "granularity": "per_channel", "symmetric": True, "options": []},
                    "activation": {"bits": 16, "calibrator": "mse", "symmetric": False, "scheme": "affine"}},
        "overrides": [["fc", {"weight": None, "activation": None}],
                      ["conv1", {"weight": {"scheme": "log2", "bits": 4, "granularity": "per_tensor", "symmetric": True,
                                            "options": [["base", "sqrt2"]]},
                                 "activation": {"bits": 8, "calibrator": "mse", "symmetric": False, "scheme": "affine"}}]],
        "strict": False, "name": "w8a16", "bias_correction": True,
    }
    assert QuantConfig.from_dict(legacy) == cfg
    with pytest.raises(QuantConfigError, match=r"malformed quantization config: .*default\.weight\.bits must be an integer"):
        QuantConfig.from_dict({"default": {"weight": {"bits": "8"}}})
    with pytest.raises(QuantConfigError, match="unknown calibrator 'magic'"):
        QuantConfig.from_dict({"default": {"activation": ActivationSpec().__dict__ | {"calibrator": "magic"}}})


@serializable("test.Span", text=True)
@dataclass(frozen=True)
class Span:
    lo: int = 0
    hi: int = 1

    @classmethod
    def parse(cls, text: str) -> Span:
        lo, _, hi = text.partition("..")
        return cls(int(lo), int(hi))

    def __str__(self) -> str:
        return f"{self.lo}..{self.hi}"


@serializable("test.Shaped", omit=("handle",), extras={"note": lambda s: "empty" if not s.items else None})
@dataclass
class Shaped:
    span: Span
    hook: str | None = field(default=None, metadata=codec(str.upper, str.lower))
    items: tuple[str, ...] = ()
    handle: object = None


def test_text_form_codecs_omitted_fields_and_extra_keys() -> None:
    obj = Shaped(Span(2, 5), "pkg:fn", ("a",), handle=object())
    data = to_data(obj, tagged=False)
    assert data == {"span": "2..5", "hook": "PKG:FN", "items": ["a"]}  # no handle, no note (items not empty)
    assert from_data(json.loads(json.dumps(data)), Shaped) == Shaped(Span(2, 5), "pkg:fn", ("a",))
    assert to_data(Shaped(Span()), tagged=False)["note"] == "empty"
    assert from_data({"span": "0..1", "note": "empty"}, Shaped) == Shaped(Span())  # an extra key is ignored on load
    assert from_data({"span": {"lo": 3, "hi": 4}}, Shaped).span == Span(3, 4)  # the mapping form is read too
    assert from_json(to_json(obj)) == Shaped(Span(2, 5), "pkg:fn", ("a",))
    with pytest.raises(SerializationError, match=r"unknown test\.Shaped key\(s\) handle; known: hook, items, span"):
        from_data({"span": "0..1", "handle": 1}, Shaped)
    with pytest.raises(SerializationError, match="NotRegistered is registered with text=True but has no parse"):
        serializable("test.NoParse", text=True)(NotRegistered)


def test_arrays_are_written_as_lists() -> None:
    import numpy as np
    import torch

    data = to_data(Outer(table={"a": np.arange(3), "b": torch.ones(2, 1)}), tagged=False)  # type: ignore[dict-item]
    assert data["table"] == {"a": [0, 1, 2], "b": [[1.0], [1.0]]}
