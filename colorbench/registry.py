"""A small name -> factory registry with option validation, listing and "did you mean"."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import pydantic

from colorbench.errors import ConfigError

T = TypeVar("T")


def same(a: Any, b: Any) -> bool:
    """Equal as values, or as text (options read back from MLflow params are strings)."""
    return a == b or str(a) == str(b)


class Registry(Generic[T]):
    """Maps names to factories (classes or functions) whose keyword arguments are the options."""

    columns = ("name", "options (defaults)", "description")  # the headers of `describe`'s rows in `colorbench list`

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: register `factory` under `name`."""

        def add(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = factory
            return factory

        return add

    def remove(self, name: str) -> None:
        """Forget entry `name` (a throwaway entry of a test, or a plugin's before it registers its own version)."""
        self.get(name)
        del self._entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered as `name`; a ConfigError naming the known ones otherwise."""
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            known = ", ".join(self)
            raise ConfigError(f"unknown {self.kind} {name!r}.{hint} Known {self.kind} names: {known}.")
        return self._entries[name]

    def options(self, name: str) -> dict[str, inspect.Parameter]:
        """The keyword options of entry `name` by their YAML names (a trailing '_' dropped: `lambda_` is `lambda`)."""
        params = inspect.signature(self.get(name), eval_str=True).parameters.values()
        return {p.name.removesuffix("_"): p for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}

    def validate(self, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """Check `options` against entry `name`'s signature and return them, by YAML name, with defaults filled in.

        An entry may name options in `omit_default` that are left out where they equal their default."""
        params = self.options(name)
        unknown = sorted(set(options) - set(params))
        if unknown:
            known = ", ".join(params) or "none"
            close = difflib.get_close_matches(unknown[0], list(params), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{self.kind} {name!r} has no option {unknown[0]!r}{hint}; its options: {known}.")
        fields = {
            key: (p.annotation if p.annotation is not p.empty else Any, ... if p.default is p.empty else p.default)
            for key, p in params.items()
        }
        model = pydantic.create_model(f"{self.kind}_{name}", __config__=pydantic.ConfigDict(extra="forbid"), **fields)
        try:
            filled = model(**options).model_dump()
        except pydantic.ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise ConfigError(f"{self.kind} {name!r}, option {where!r}: {first['msg']}.") from None
        omitted = getattr(self.get(name), "omit_default", ())  # options added later stay out at their default (unchanged ids)
        return {k: v for k, v in filled.items() if not (k in omitted and same(v, params[k].default))}

    def build(self, name: str, options: Mapping[str, Any] | None = None) -> T:
        """Validate `options` and call the factory."""
        params = self.options(name)
        return self.get(name)(**{params[key].name: value for key, value in self.validate(name, options or {}).items()})

    def label(self, name: str, options: Mapping[str, Any], every: bool = False) -> str:
        """`name(opt=value,...)` with every option, or only those that differ from the entry's defaults.

        Nested option mappings (e.g. a mask's options) count as default when they equal what validation fills in.
        """
        params = self.options(name)
        filled = self.validate(name, {k: v for k, v in options.items() if not isinstance(v, dict) and k in params})
        reference = {k: filled[k] if isinstance(v, dict) else params[k].default for k, v in options.items() if k in params}
        changed = {k: v for k, v in options.items() if every or k not in reference or not same(reference[k], v)}
        return name + (f"({','.join(f'{k}={v}' for k, v in changed.items())})" if changed else "")

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, options with defaults, first docstring line) for each entry, for `colorbench list`."""
        rows = []
        for name in self:
            opts = []
            for key, p in self.options(name).items():
                default = "required" if p.default is p.empty else repr(p.default)
                opts.append(f"{key}={default}")
            doc = (inspect.getdoc(self._entries[name]) or "").splitlines()
            rows.append((name, ", ".join(opts) or "-", doc[0] if doc else ""))
        return rows
