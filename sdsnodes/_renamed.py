"""The keywords of before the option groups, kept working for one release
(:func:`renamed_keywords`), and the groups by parameter name (:data:`GROUPS`)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from sdsnodes.options import CacheOptions, ErrorOptions, FetchOptions, IndexOptions

F = TypeVar("F", bound=Callable[..., Any])


GROUPS = {
    "index": IndexOptions,
    "cache": CacheOptions,
    "fetch": FetchOptions,
    "errors": ErrorOptions,
}
"""Parameter name → option group, as presets and nodes name them."""

RENAMED = {
    "cache_dir": "cache.cache_dir",
    "max_bytes": "cache.max_bytes",
    "policy": "cache.policy",
    "storage_options": "fetch.storage_options",
    "retries": "fetch.retries",
    "timeout": "fetch.timeout",
    "download_threads": "fetch.max_in_flight",
    "num_threads": "fetch.max_in_flight",
    "on_error": "errors.on_error",
    "max_error_rate": "errors.max_error_rate",
}
"""The keywords of before the option groups → ``"<group>.<field>"``. ``num_threads`` is renamed
only where it is no parameter any more (CachingDownloader, RangeReader): a preset's and the
Decoder's ``num_threads`` still count decoding threads."""


def renamed_keywords(fn: F) -> F:
    """Let ``fn`` take its keywords of before the option groups for one more release.

    Each keyword of :data:`RENAMED` that ``fn`` no longer has and whose group it has
    (``download_threads`` → ``fetch.max_in_flight``) is moved into that group, built from the
    group's default in ``fn``'s signature (None: the group's class defaults), with a
    :class:`DeprecationWarning` that names the replacement. The wrapper also checks that each
    group passed is one of its class (or None).

    Raises:
        ValueError: an old keyword passed together with its group (``max_bytes=...`` and
            ``cache=...``): one place per setting.
        TypeError: a group of the wrong class (``cache="/tmp/c"``).
    """
    signature = inspect.signature(fn)
    params = signature.parameters
    renames = {old: new for old, new in RENAMED.items() if old not in params}
    renames = {old: new for old, new in renames.items() if new.split(".")[0] in params}

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        old = {name: kwargs.pop(name) for name in list(kwargs) if name in renames}
        given = signature.bind_partial(*args, **kwargs).arguments
        for group in GROUPS.keys() & given.keys():
            if given[group] is not None and not isinstance(given[group], GROUPS[group]):
                kind = GROUPS[group].__name__
                raise TypeError(
                    f"{fn.__qualname__}: {group}= takes a {kind}, e.g. {group}={kind}(...), "
                    f"not {given[group]!r}"
                )
        if not old:
            return fn(*args, **kwargs)
        fields: dict[str, dict[str, Any]] = {}
        for name, value in old.items():
            group, field = renames[name].split(".")
            if group in given:
                raise ValueError(
                    f"{fn.__qualname__}: {name}= and {group}= both given; pass only "
                    f"{group}={GROUPS[group].__name__}(..., {field}=...)"
                )
            fields.setdefault(group, {})[field] = value
        for group, values in fields.items():
            base = params[group].default
            kwargs[group] = dataclasses.replace(base or GROUPS[group](), **values)
        instead = [
            f"{group}={GROUPS[group].__name__}({', '.join(f'{f}=...' for f in values)})"
            for group, values in fields.items()
        ]
        warnings.warn(
            f"{fn.__qualname__}: the keywords {', '.join(old)} are deprecated and will be "
            f"removed in the next release; pass {', '.join(instead)} instead "
            "(see sdsnodes.options)",
            DeprecationWarning,
            stacklevel=2,
        )
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
