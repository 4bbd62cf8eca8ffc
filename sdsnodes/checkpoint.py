"""Loader states saved to and loaded from any fsspec URL (local, ``s3://``, ``gs://``), atomically.

A checkpoint is one JSON document::

    {"format": "sdsnodes.state", "version": 1, "sdsnodes": "<library version>",
     "graph": ["IndexReader(index=…)", "Shuffler(seed=0)", …] | null,
     "sha256": "<hex of the canonical JSON of state>", "state": {…}}

Values JSON cannot hold exactly are tagged and restored: tuples, bytes, dicts with keys other
than str, and tensors (a ``StatefulDataLoader`` over a map-style dataset keeps its sampler's RNG
state as a tensor); ``load_state(save_state(s))`` equals ``s``.

Atomic: the document is written whole to a temporary name beside the target and then moved onto
it (``os.replace`` on a local disk; a server-side copy on object stores, whose objects appear
whole or not at all). A writer killed at any moment leaves either the previous checkpoint or the
new one, never a part; a temporary object it leaves is named ``<url>.tmp-<random>`` and is
ignored. The ``sha256`` catches a document damaged after the fact.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import os
import uuid
from collections.abc import Sequence
from typing import Any

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem
from torchdata.nodes import BaseNode

from sdsnodes.dataset import StreamingDataset
from sdsnodes.nodes.graph import iter_nodes

FORMAT = "sdsnodes.state"
VERSION = 1
_TAG = "__sds_type__"  # the key of a tagged value: {"__sds_type__": "tuple", "items": [...]}


def _encode(x: Any) -> Any:
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, list):
        return [_encode(v) for v in x]
    if isinstance(x, tuple):
        return {_TAG: "tuple", "items": [_encode(v) for v in x]}
    if isinstance(x, (bytes, bytearray)):
        return {_TAG: "bytes", "b64": base64.b64encode(bytes(x)).decode("ascii")}
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu().contiguous()
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        dtype = str(t.dtype).removeprefix("torch.")
        return {_TAG: "tensor", "dtype": dtype, "shape": list(t.shape), "data": _encode(data)}
    if isinstance(x, dict):
        if all(isinstance(k, str) for k in x) and _TAG not in x:
            return {k: _encode(v) for k, v in x.items()}
        return {_TAG: "dict", "items": [[_encode(k), _encode(v)] for k, v in x.items()]}
    raise TypeError(
        f"a state value of type {type(x).__name__} cannot be saved ({x!r:.80}): states hold "
        f"dicts, lists, tuples, str, numbers, bool, None, bytes and tensors"
    )


def _decode(x: Any) -> Any:
    if isinstance(x, list):
        return [_decode(v) for v in x]
    if not isinstance(x, dict):
        return x
    kind = x.get(_TAG)
    if kind is None:
        return {k: _decode(v) for k, v in x.items()}
    if kind == "tuple":
        return tuple(_decode(v) for v in x["items"])
    if kind == "bytes":
        return base64.b64decode(x["b64"])
    if kind == "dict":
        return {_decode(k): _decode(v) for k, v in x["items"]}
    if kind == "tensor":
        dtype = getattr(torch, x["dtype"])
        raw = bytearray(_decode(x["data"]))
        flat = (
            torch.frombuffer(raw, dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
        )
        return flat.view(dtype).reshape(x["shape"]).clone()
    raise ValueError(f"unknown tagged value {kind!r} in the checkpoint")


def _canonical(encoded: Any) -> bytes:
    return json.dumps(encoded, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def describe_graph(target: Any) -> list[str]:
    """What a checkpoint records of the graph it belongs to, one entry per node.

    Args:
        target: a graph (``BaseNode``), a :class:`~sdsnodes.StreamingDataset`, or a DataLoader
            over one (anything with ``.dataset``).

    Returns:
        list[str]: ``"<node type>(<config>)"`` per node, in the graph's walking order; the config
        names the index fingerprint of readers and the ``seed`` and ``batch_size`` of nodes
        that have them — what decides which samples a resumed loader yields next.

    Raises:
        TypeError: ``target`` holds no graph.
    """
    root = getattr(target, "dataset", target)
    root = root.graph if isinstance(root, StreamingDataset) else root
    if not isinstance(root, BaseNode):
        raise TypeError(f"{target!r} is not a graph, a StreamingDataset or a loader over one")
    out = []
    for node in iter_nodes(root):
        config = []
        index = getattr(node, "index", None)
        if getattr(index, "fingerprint", None) is not None:
            config.append(f"index={index.fingerprint}")
        for name in ("seed", "batch_size", "drop_last"):
            value = vars(node).get(name)
            if isinstance(value, (int, bool)):
                config.append(f"{name}={value}")
        out.append(f"{type(node).__name__}({', '.join(config)})")
    return out


def _difference(saved: Sequence[str], now: Sequence[str]) -> str:
    for i, (a, b) in enumerate(zip(saved, now, strict=False)):
        if a != b:
            return f"node {i}: saved {a}, now {b}"
    return f"saved {len(saved)} nodes, now {len(now)}: {list(saved)} vs {list(now)}"


def save_state(
    state: dict[str, Any],
    url: str | os.PathLike,
    *,
    storage_options: dict[str, Any] | None = None,
    graph: Any = None,
) -> None:
    """Write ``state`` (e.g. ``loader.state_dict()``) to ``url``, atomically.

    Args:
        state (dict): the state; see the module docstring for the value types it may hold.
        url (str | PathLike): a local path or fsspec URL (``s3://bucket/run/data.json``).
        storage_options (dict | None): fsspec options for the URL's filesystem.
        graph: the graph, StreamingDataset or loader the state belongs to; recorded (see
            :func:`describe_graph`) so that :func:`load_state` with another graph config fails.

    Raises:
        TypeError: a value in ``state`` cannot be saved.
        OSError: the URL cannot be written (message names the URL and the cause); the previous
            checkpoint, if any, is untouched.
    """
    encoded = _encode(state)
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "sdsnodes": importlib.metadata.version("sdsnodes"),
        "graph": None if graph is None else describe_graph(graph),
        "sha256": hashlib.sha256(_canonical(encoded)).hexdigest(),
        "state": encoded,
    }
    data = json.dumps(doc, allow_nan=False).encode()
    fs, path = fsspec.core.url_to_fs(os.fspath(url), **(storage_options or {}))
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        if isinstance(fs, LocalFileSystem):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())  # on disk before the move, so a crash keeps a whole file
            os.replace(tmp, path)
        else:  # an object appears whole or not at all; the copy onto the target is server-side
            fs.pipe_file(tmp, data)
            fs.mv(tmp, path)
    except Exception as error:
        try:
            fs.rm(tmp)
        except Exception:  # noqa: BLE001 - never written, or the store is unreachable
            pass
        raise OSError(f"could not save the state to {os.fspath(url)!r}: {error!r}") from error


def load_state(
    url: str | os.PathLike,
    *,
    storage_options: dict[str, Any] | None = None,
    graph: Any = None,
) -> dict[str, Any]:
    """Read a state written by :func:`save_state`.

    Args:
        url (str | PathLike): the checkpoint's local path or fsspec URL.
        storage_options (dict | None): fsspec options for the URL's filesystem.
        graph: the graph, StreamingDataset or loader about to load the state; when both it and
            the checkpoint name a graph, they must match.

    Returns:
        dict: the state, equal to the one saved (tuples, bytes and tensors restored).

    Raises:
        FileNotFoundError: no checkpoint at ``url``.
        ValueError: not an sdsnodes checkpoint, a newer format, damaged (checksum), or saved by
            another graph config (the message names the first node that differs).
    """
    with fsspec.open(os.fspath(url), "rb", **(storage_options or {})) as f:
        raw = f.read()
    try:
        doc = json.loads(raw)
    except ValueError as error:
        raise ValueError(f"{os.fspath(url)!r} is not a JSON sdsnodes checkpoint: {error}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(url)!r} is not an sdsnodes checkpoint (no format {FORMAT!r})")
    if doc.get("version", 0) > VERSION:
        raise ValueError(
            f"{os.fspath(url)!r} has checkpoint format {doc['version']} (sdsnodes "
            f"{doc.get('sdsnodes')}); this sdsnodes reads up to {VERSION}: upgrade sdsnodes"
        )
    if hashlib.sha256(_canonical(doc["state"])).hexdigest() != doc.get("sha256"):
        raise ValueError(f"{os.fspath(url)!r} is damaged: its state does not match its sha256")
    if graph is not None and doc.get("graph") is not None:
        now = describe_graph(graph)
        if now != doc["graph"]:
            raise ValueError(
                f"the state at {os.fspath(url)!r} was saved by another graph config "
                f"({_difference(doc['graph'], now)}): build the graph with the options it was "
                f"saved with, or start without the state"
            )
    return _decode(doc["state"])
