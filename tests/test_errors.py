"""gateway/errors.py, the one error hierarchy: every public exception class defined anywhere in
the gateway package derives from VpatchError (what gateway/cli.py turns into one clear error
and status 2), and every decoder's error from DecodeError (what the engine catches to stop
decoding a direction, gateway/decode/app.py)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import gateway
from gateway.errors import (
    CaptureError,
    ConfigError,
    DecodeError,
    FirewallError,
    LabError,
    RuleError,
    VpatchError,
)


def exception_classes() -> dict[str, type[BaseException]]:
    """module.Class -> class, for every exception class defined in a gateway module."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(gateway.__path__, "gateway."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
            ):
                found[f"{module.__name__}.{name}"] = obj
    return found


def test_every_public_gateway_exception_is_a_vpatch_error() -> None:
    classes = exception_classes()
    assert len(classes) > 20  # the walk reached the subpackages
    outside = [
        name
        for name, cls in classes.items()
        if not name.rsplit(".", 1)[1].startswith("_") and not issubclass(cls, VpatchError)
    ]
    assert outside == []


def test_every_decoder_error_is_a_decode_error() -> None:
    classes = exception_classes()
    decoders = {n: c for n, c in classes.items() if n.startswith("gateway.decode.")}
    public = {n: c for n, c in decoders.items() if not n.rsplit(".", 1)[1].startswith("_")}
    assert len(public) >= 9  # one per decoder module, and the packet decoder's own
    assert all(issubclass(c, DecodeError) for c in public.values()), public


def test_the_base_classes() -> None:
    for cls in (ConfigError, RuleError, DecodeError, CaptureError, FirewallError, LabError):
        assert issubclass(cls, VpatchError) and cls.__doc__
    assert issubclass(VpatchError, Exception) and not issubclass(VpatchError, (ValueError, OSError))
