"""The public surface of ``bridge``: pinned exactly, every name a real object from a private
module, and no submodule import can shadow a public function (httpx's
tests/test_exported_members.py does the same for httpx)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types

import bridge

PUBLIC = [
    "BridgeError",
    "CapacityError",
    "CellMatrix",
    "FormatError",
    "GeneIdError",
    "InputError",
    "MissingDependencyError",
    "NotFoundError",
    "QCThresholds",
    "RError",
    "RemoteClient",
    "RemoteError",
    "UnsupportedError",
    "__version__",
    "annotate",
    "annotate_partitions",
    "build_reference",
    "call_cells",
    "describe",
    "embed",
    "qc",
    "rank_marker_genes",
    "read",
    "read_chunks",
    "write",
    "write_back",
    "write_partitions",
    "write_report",
]

VERBS = ["annotate", "annotate_partitions", "build_reference", "call_cells", "describe",
         "embed", "qc", "rank_marker_genes", "read", "read_chunks", "write", "write_back",
         "write_partitions", "write_report"]


def _import_every_module() -> None:
    """Import every module of the package, as a user's code might."""
    for info in pkgutil.walk_packages(bridge.__path__, prefix="bridge."):
        if not info.name.endswith("__main__"):  # running it is the CLI
            importlib.import_module(info.name)


def test_all_is_exactly_the_public_surface() -> None:
    assert bridge.__all__ == PUBLIC
    _import_every_module()
    for name in bridge.__all__:
        getattr(bridge, name)  # resolve every lazy name
    exported = sorted(name for name, value in vars(bridge).items()
                      if not name.startswith("_") and not isinstance(value, types.ModuleType))
    assert exported == sorted(n for n in PUBLIC if not n.startswith("_"))


def test_public_functions_are_real_functions_after_every_import() -> None:
    _import_every_module()
    for name in VERBS:
        value = getattr(bridge, name)
        assert inspect.isfunction(value), f"bridge.{name} is {type(value).__name__}"
        assert value.__module__.startswith("bridge."), value.__module__
        parameters = inspect.signature(value).parameters
        assert list(parameters) != ["args", "kwargs"], name
        assert value.__doc__ and len(value.__doc__) > 40, f"bridge.{name} has no docstring"
    assert "model" in inspect.signature(bridge.annotate).parameters
    assert "label_column" in inspect.signature(bridge.build_reference).parameters


def test_every_error_class_has_a_documented_code() -> None:
    from bridge._errors import CODES

    for name in PUBLIC:
        value = getattr(bridge, name)
        if inspect.isclass(value) and issubclass(value, bridge.BridgeError):
            assert value.default_code in CODES, name
            assert value().code == value.default_code
    for code, (family, meaning) in CODES.items():
        assert family in CODES and meaning, code
