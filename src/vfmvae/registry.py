"""Registries by name, after timm's `register_model` / `create_model`.

Each component family (VFM encoders, tokenizers, diffusion models, ...) keeps one `Registry`. An entry
is a factory taking keyword overrides. Tiny random-init variants for the tests: VFMs are `*-test` (each stands in
for a named pretrained checkpoint), diffusion transformers are `*-tiny` (the smallest size of the DiT size ladder).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}
        self._info: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **info: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: `@MODELS.register("dinov2-base", hub_id=...)` on a factory function."""

        def wrap(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = factory
            self._info[name] = info
            return factory

        return wrap

    def create(self, name: str, **overrides: Any) -> T:
        if name not in self._entries:
            close = fnmatch.filter(self._entries, f"*{name.split('-')[0]}*")[:5]
            hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(self.names())}"
            raise KeyError(f"unknown {self.kind} {name!r}{hint}")
        return self._entries[name](**overrides)

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(fnmatch.filter(self._entries, pattern))

    def info(self, name: str) -> dict[str, Any]:
        return dict(self._info[name])

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)
