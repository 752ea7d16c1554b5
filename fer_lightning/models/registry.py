"""A small name -> builder registry, in the manner of torchvision's ``models/_api.py``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

BuilderT = TypeVar("BuilderT", bound=Callable[..., nn.Module])

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str | None = None) -> Callable[[BuilderT], BuilderT]:
    """Decorator that registers a model builder under ``name`` (default: the function name)."""

    def wrapper(fn: BuilderT) -> BuilderT:
        key = name or fn.__name__
        if key in _MODELS:
            raise ValueError(f"A model is already registered under the name {key!r}.")
        _MODELS[key] = fn
        return fn

    return wrapper


def list_models() -> list[str]:
    """Names of every registered architecture, sorted."""
    return sorted(_MODELS)


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered under ``name``; a ``ValueError`` lists the valid names otherwise."""
    try:
        return _MODELS[name]
    except KeyError:
        raise ValueError(
            f"Unknown model {name!r}. Available models: {', '.join(list_models())}."
        ) from None
