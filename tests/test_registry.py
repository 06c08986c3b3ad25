import pytest

from edgeslim.errors import RegistryError
from edgeslim.registry import Registry


def test_register_returns_object_and_refuses_duplicates() -> None:
    reg: Registry[type] = Registry("widget")

    @reg.register("Foo")
    class Foo:
        pass

    assert reg.get("foo") is Foo and "FOO" in reg and reg.names() == ["foo"]
    with pytest.raises(RegistryError, match="already registered"):
        reg.register("foo")(int)


def test_unknown_name_lists_known() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("a")(1)
    with pytest.raises(RegistryError, match="unknown widget 'b'; known: a"):
        reg.get("b")
