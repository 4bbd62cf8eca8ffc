"""Precomputed latents (.npy, .npz, .pt; pickles only when allowed): VAE mean/logvar sampling,
slicing to a video clip."""

from __future__ import annotations

import gzip
import io
import math
import numbers
import pickle
import zipfile
from typing import Any

import numpy as np
import torch

from sdsnodes.codecs._resize import as_source, describe
from sdsnodes.errors import DecodeError

_NPY = b"\x93NUMPY"
_ZIP = b"PK\x03\x04"  # torch.save (since 1.6) and numpy.savez
_LEGACY_TORCH = b"\x80\x02\x8a\x0a"  # pickle protocol 2 + torch's magic number (before 1.6)
_PICKLE = tuple(b"\x80" + bytes([protocol]) for protocol in range(2, 6))  # PROTO opcode
_GZIP = b"\x1f\x8b"
PICKLE_REFUSED = (
    "a pickle (.pkl/.pkl.gz, as SDS wrote latents and text embeddings): loading a pickle runs "
    "whatever code it holds, so it is unsafe and refused; pass allow_pickle=True to the codec "
    "only for files you made or trust"
)
_LOGVAR_RANGE = (-30.0, 20.0)  # as diffusers' DiagonalGaussianDistribution clamps it


class _Unusable(Exception):
    """The file loaded but does not hold what is asked (its message is the whole cause)."""


class Latent:
    """Load a precomputed latent, optionally sample it from a VAE's mean/logvar, and slice a
    video latent to the frames of the clip decoded beside it.

    Files: ``.npy`` (``numpy.load(allow_pickle=False)``, memory-mapped for paths, so slicing
    reads only the clip), ``.npz``, or torch files (``torch.load(weights_only=True)`` only: a
    pickle of anything but tensors and containers is refused), each maybe gzip-compressed. The
    format is sniffed from the bytes, not the extension. A file may hold a tensor or a dict of
    tensors (``key`` picks one).

    Pickles (``.pkl``, ``.pkl.gz``: how SDS stored VAE latents, a dict with ``mean``/``logvar``
    arrays, and text embeddings, a dict with ``embeddings`` [tokens, D] and ``eot_location``)
    load only with ``allow_pickle=True``. **Unpickling runs any code the file holds**: allow it
    only for files you made or trust. Lists of numbers in a pickle become arrays; entries that
    are not numbers (``input_shape``…) are ignored unless ``key`` names them.

    VAE moments: a dict with ``mean_key``/``logvar_key``, or (``moments=True``) a tensor with
    2 * C channels on ``channel_dim``, mean first (diffusers' ``DiagonalGaussianDistribution``
    layout). With ``sample=True`` the output is ``mean + exp(0.5 * logvar) * eps``, logvar
    clamped to [-30, 20] and eps standard normal from the sample's ``rng``; else the mean.

    Clip alignment (``align_to``): reads ``<align_to>.clip_start``/``.clip_end`` (s) and
    ``.source_fps`` from the sample (``VideoClip(with_info=True)``). With ``latent_fps``, latent
    frame j is at j / latent_fps s; with ``temporal_stride`` s, latent frame j covers source
    frames [s*j, s*j + s - 1], or, with ``causal=True`` (causal video VAEs: CogVideoX,
    HunyuanVideo, Wan), frame 0 alone and then [s*(j-1) + 1, s*j]. The slice starts at the
    latent frame holding the clip's first frame and has a fixed length, ``round(clip seconds *
    latent_fps)``, ``ceil(frames / s)`` or ``1 + ceil((frames - 1) / s)`` (frames: source frames
    in the clip); past the end it repeats the last latent frame, like ``VideoClip`` pads.

    Args:
        key (str | None): the dict entry to use; None: the only entry, or mean/logvar entries.
        sample (bool): draw from the moments (needs a logvar) instead of returning the mean.
        moments (bool): a tensor holds mean and logvar concatenated on ``channel_dim``.
        channel_dim (int): the channel dimension of a ``moments`` tensor (0 for [2C, T, H, W]).
        mean_key (str): dict entry of the mean.
        logvar_key (str): dict entry of the log-variance.
        align_to (str | None): video column to slice to (the codec then has ``needs_sample``).
        temporal_dim (int): the time dimension of the stored latent (1 for [C, T, H, W]).
        latent_fps (float | None): latent frames per second (exclusive with temporal_stride).
        temporal_stride (int | None): source frames per latent frame.
        causal (bool): with ``temporal_stride``, the first latent frame covers frame 0 alone.
        dtype (torch.dtype | None): output dtype; None keeps the stored one.
        allow_pickle (bool): load plain pickles (``.pkl``, ``.pkl.gz``) — unsafe, see above.

    Returns:
        torch.Tensor: the stored shape (with a ``moments`` tensor's channels halved, and the
        time dimension cut to the clip when aligned), of ``dtype`` (float32 by default).

    Raises:
        ValueError: at construction, for an invalid argument.
        DecodeError: the file is missing, empty, truncated, garbage, a pickle (unless
            ``allow_pickle``; the message names it), holds no tensor
            under the keys asked, has an odd channel count for ``moments``, no logvar to sample
            from, or the clip to align to is missing or starts after the latent's end.
    """

    def __init__(
        self,
        key: str | None = None,
        sample: bool = False,
        moments: bool = False,
        channel_dim: int = 0,
        mean_key: str = "mean",
        logvar_key: str = "logvar",
        align_to: str | None = None,
        temporal_dim: int = 1,
        latent_fps: float | None = None,
        temporal_stride: int | None = None,
        causal: bool = False,
        dtype: torch.dtype | None = torch.float32,
        allow_pickle: bool = False,
    ) -> None:
        if latent_fps is not None and not (
            isinstance(latent_fps, numbers.Real) and math.isfinite(latent_fps) and latent_fps > 0
        ):
            raise ValueError(f"{latent_fps=} must be a number > 0 (latent frames/s) or None")
        if temporal_stride is not None and not (
            isinstance(temporal_stride, int) and temporal_stride >= 1
        ):
            raise ValueError(f"{temporal_stride=} must be an int >= 1 or None")
        if align_to is not None and (latent_fps is None) == (temporal_stride is None):
            raise ValueError(f"{align_to=} needs exactly one of latent_fps and temporal_stride")
        if causal and temporal_stride is None:
            raise ValueError("causal=True needs temporal_stride")
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise ValueError(f"{dtype=} must be a torch.dtype or None")
        self.key, self.sample, self.moments = key, bool(sample), bool(moments)
        self.channel_dim, self.temporal_dim = int(channel_dim), int(temporal_dim)
        self.mean_key, self.logvar_key = mean_key, logvar_key
        self.align_to, self.latent_fps = align_to, latent_fps
        self.temporal_stride, self.causal, self.dtype = temporal_stride, bool(causal), dtype
        self.allow_pickle = bool(allow_pickle)
        self.needs_sample = align_to is not None

    def __repr__(self) -> str:
        names = ("key", "sample", "moments", "channel_dim", "mean_key", "logvar_key", "align_to")
        names += ("temporal_dim", "latent_fps", "temporal_stride", "causal", "dtype")
        names += ("allow_pickle",)
        return f"Latent({', '.join(f'{n}={getattr(self, n)!r}' for n in names)})"

    def __call__(
        self, value: Any, rng: np.random.Generator | None = None, sample: Any = None
    ) -> torch.Tensor:
        """Load one latent; see the class docstring. ``rng`` None means ``default_rng(0)``;
        ``sample`` (a mapping) is read with ``align_to``."""
        rng = np.random.default_rng(0) if rng is None else rng
        try:
            return self._latent(value, rng, sample)
        except DecodeError:
            raise  # refused before decoding (NotAFile, TooLarge…): keeps its reason
        except _Unusable as error:
            raise DecodeError(describe(value), str(error)) from error
        except Exception as error:
            raise DecodeError(describe(value), f"{type(error).__name__}: {error}") from error

    def _latent(self, value: Any, rng: np.random.Generator, sample: Any) -> torch.Tensor:
        mean, logvar = self._moments(_load(value, self.allow_pickle))
        if self.align_to is not None:
            window = self._window(sample, mean.ndim)
            mean = _frames(mean, self.temporal_dim, *window)
            logvar = None if logvar is None else _frames(logvar, self.temporal_dim, *window)
        mean = _tensor(mean)
        stored = mean.dtype
        if self.sample:
            if logvar is None:
                raise _Unusable("sample=True but the file holds no logvar")
            logvar = _tensor(logvar).float().clamp(*_LOGVAR_RANGE)
            eps = torch.from_numpy(rng.standard_normal(tuple(mean.shape), dtype=np.float32))
            mean = mean.float() + torch.exp(0.5 * logvar) * eps
        return mean.to(stored if self.dtype is None else self.dtype).contiguous()

    def _moments(self, obj: Any) -> tuple[Any, Any]:
        """(mean, logvar or None), numpy arrays or tensors, from what the file held."""
        if self.key is not None:
            if not isinstance(obj, dict) or self.key not in obj:
                keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
                raise _Unusable(f"no entry {self.key!r}: the file holds {keys}")
            obj = obj[self.key]
        if isinstance(obj, dict):
            if self.mean_key in obj:
                return _check(obj[self.mean_key]), _check(obj.get(self.logvar_key), none=True)
            if len(obj) != 1:
                raise _Unusable(f"a dict with keys {sorted(obj)}: pass key= to pick one")
            obj = next(iter(obj.values()))
        obj = _check(obj)
        if not self.moments:
            return obj, None
        dim = self.channel_dim % obj.ndim if obj.ndim else 0
        if obj.ndim == 0 or obj.shape[dim] % 2:
            raise _Unusable(f"moments=True needs an even size on dim {dim}, got {obj.shape}")
        half = obj.shape[dim] // 2
        index = (slice(None),) * dim
        return obj[(*index, slice(0, half))], obj[(*index, slice(half, None))]

    def _window(self, sample: Any, ndim: int) -> tuple[int, int]:
        """(first latent frame, number of latent frames) for the clip in ``sample``."""
        if not -ndim <= self.temporal_dim < ndim:
            raise _Unusable(f"temporal_dim={self.temporal_dim} is out of range for {ndim} dims")
        keys = [f"{self.align_to}.{k}" for k in ("clip_start", "clip_end", "source_fps")]
        start, end, fps = (None if sample is None else sample.get(k) for k in keys)
        if not all(isinstance(v, numbers.Real) for v in (start, end)) or (
            self.temporal_stride and not (isinstance(fps, numbers.Real) and fps > 0)
        ):
            raise _Unusable(
                f"no clip to align to: {keys} are {[start, end, fps]}; decode "
                f"{self.align_to!r} before with VideoClip(with_info=True)"
            )
        if self.latent_fps is not None:
            first = math.floor(start * self.latent_fps + 1e-3)
            return first, max(1, round((end - start) * self.latent_fps))
        stride = self.temporal_stride
        f0 = math.floor(start * fps + 1e-3)  # the clip's first source frame
        frames = max(1, round((end - start) * fps))  # source frames the clip spans
        if self.causal:
            return -(-f0 // stride), 1 + -(-(frames - 1) // stride)
        return f0 // stride, -(-frames // stride)


class TextEmbedding:
    """Load a precomputed text embedding (a text encoder's output for a caption), zero the
    tokens after its end-of-text token and pad or cut it to ``num_tokens`` rows, so the
    embeddings of captions of any length batch together — SDS's ``TextEmbLoaderTransform``.

    Files as for :class:`Latent` (``.npy``, ``.npz``, ``.pt``, maybe gzipped; SDS's ``.pkl`` /
    ``.pkl.gz`` only with ``allow_pickle=True``, unsafe: unpickling runs any code the file
    holds). A file holds the embedding [tokens, D], or a dict with it under ``key`` and,
    optionally, the index of the end-of-text token under ``eot_key``.

    Args:
        num_tokens (int | None): rows of the output, >= 1: shorter embeddings are padded with
            zeros, longer ones cut; None keeps the stored length.
        key (str): dict entry of the embedding (a dict with a single entry needs none).
        eot_key (str | None): dict entry of the end-of-text token's index; rows after it are
            set to 0. None, or a dict without it: no rows are zeroed.
        allow_missing (bool): a None value (no embedding for this sample) gives None instead
            of skipping the sample.
        dtype (torch.dtype | None): output dtype; None keeps the stored one.
        allow_pickle (bool): load plain pickles — unsafe, see above.

    Returns:
        torch.Tensor: [num_tokens, D] (the stored [tokens, D] when ``num_tokens`` is None), of
        ``dtype`` (float32 by default); None for a None value with ``allow_missing``.

    Raises:
        ValueError: at construction, for an invalid argument.
        DecodeError: the file is unreadable, a pickle (unless ``allow_pickle``), or holds no
            2-D real-valued embedding under ``key``.
    """

    def __init__(
        self,
        num_tokens: int | None = None,
        key: str = "embeddings",
        eot_key: str | None = "eot_location",
        allow_missing: bool = False,
        dtype: torch.dtype | None = torch.float32,
        allow_pickle: bool = False,
    ) -> None:
        if num_tokens is not None and not (isinstance(num_tokens, int) and num_tokens >= 1):
            raise ValueError(f"{num_tokens=} must be an int >= 1 (rows of the output) or None")
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise ValueError(f"{dtype=} must be a torch.dtype or None")
        self.num_tokens, self.key, self.eot_key = num_tokens, key, eot_key
        self.accepts_none = bool(allow_missing)
        self.dtype, self.allow_pickle = dtype, bool(allow_pickle)

    def __repr__(self) -> str:
        names = ("num_tokens", "key", "eot_key", "dtype", "allow_pickle")
        args = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
        return f"TextEmbedding({args}, allow_missing={self.accepts_none!r})"

    def __call__(self, value: Any, rng: np.random.Generator | None = None) -> torch.Tensor | None:
        """Load one embedding; see the class docstring (``rng`` is unused)."""
        if value is None and self.accepts_none:
            return None
        try:
            return self._embedding(_load(value, self.allow_pickle))
        except DecodeError:
            raise
        except _Unusable as error:
            raise DecodeError(describe(value), str(error)) from error
        except Exception as error:
            raise DecodeError(describe(value), f"{type(error).__name__}: {error}") from error

    def _embedding(self, obj: Any) -> torch.Tensor:
        eot = None
        if isinstance(obj, dict):
            if self.eot_key is not None and obj.get(self.eot_key) is not None:
                eot = int(np.asarray(obj[self.eot_key]).reshape(-1)[0])
            if self.key in obj:
                obj = obj[self.key]
            elif len(obj) == 1:
                obj = next(iter(obj.values()))
            else:
                raise _Unusable(f"no entry {self.key!r}: the file holds {sorted(obj)}; pass key=")
        x = _tensor(_check(obj))  # [tokens, D]
        if x.ndim != 2:
            raise _Unusable(f"expected an embedding [tokens, D], got shape {tuple(x.shape)}")
        if eot is not None:
            x = x.clone()
            x[eot + 1 :] = 0  # nothing after the end-of-text token
        if self.num_tokens is not None:
            x = x[: self.num_tokens]  # [<= num_tokens, D]
            pad = x.new_zeros((self.num_tokens - x.shape[0], x.shape[1]))
            x = torch.cat([x, pad])  # [num_tokens, D]
        return x.to(x.dtype if self.dtype is None else self.dtype).contiguous()


def _head(source: Any) -> bytes:
    """The first 8 bytes of a path or file object (which is left rewound)."""
    if isinstance(source, str):
        with open(source, "rb") as file:
            return file.read(8)
    head = source.read(8)
    source.seek(0)
    return head


def _load(value: Any, allow_pickle: bool = False) -> Any:
    """What a latent file holds: an ndarray (maybe memory-mapped), a tensor, or a dict."""
    if isinstance(value, (np.ndarray, torch.Tensor, dict)):
        return value
    source = as_source(value)
    head = _head(source)
    if head.startswith(_GZIP):  # .npy.gz, .pkl.gz…: the format is sniffed inside
        with gzip.open(source, "rb") as file:
            source = io.BytesIO(file.read())
        head = source.getvalue()[:8]
    if head.startswith(_NPY):
        return np.load(
            source, allow_pickle=False, mmap_mode="r" if isinstance(source, str) else None
        )
    if head.startswith(_ZIP):
        with zipfile.ZipFile(source) as archive:
            names = archive.namelist()
        if not isinstance(source, str):
            source.seek(0)
        if names and all(name.endswith(".npy") for name in names):  # numpy.savez
            with np.load(source, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
    elif head[:2] in _PICKLE and not head.startswith(_LEGACY_TORCH):
        if not allow_pickle:
            raise _Unusable(PICKLE_REFUSED)
        return _arrays(_unpickle(source))
    elif not head.startswith(_LEGACY_TORCH):
        raise _Unusable(f"not a .npy, .npz, torch file or pickle (starts with {head!r})")
    return torch.load(source, map_location="cpu", weights_only=True)


def _unpickle(source: Any) -> Any:
    """``pickle.load`` (unsafe: the caller allowed it)."""
    if isinstance(source, str):
        with open(source, "rb") as file:
            return pickle.load(file)  # noqa: S301 - allow_pickle=True asked for it
    return pickle.load(source)  # noqa: S301


def _arrays(obj: Any) -> Any:
    """A pickle's content with lists/tuples of numbers as arrays (SDS stored some that way)."""
    if isinstance(obj, dict):
        return {k: _arrays(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        try:
            array = np.asarray(obj)
        except ValueError:  # ragged
            return obj
        return array if array.dtype.kind in "iuf" else obj
    return obj


def _check(obj: Any, none: bool = False) -> Any:
    """``obj`` if it is a real-valued array or tensor (or None, when allowed)."""
    if obj is None and none:
        return None
    if isinstance(obj, torch.Tensor) and not (obj.is_complex() or obj.dtype == torch.bool):
        return obj
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "iuf":
        return obj
    kind = obj.dtype if isinstance(obj, (np.ndarray, torch.Tensor)) else type(obj).__name__
    raise _Unusable(f"expected a real-valued tensor, got {kind}")


def _frames(x: Any, dim: int, first: int, count: int) -> Any:
    """``count`` frames from ``first`` along ``dim``, repeating the last frame past the end."""
    dim %= x.ndim
    total = x.shape[dim]
    if first >= total:
        raise _Unusable(f"the clip starts at latent frame {first}, after the last ({total - 1})")
    index = np.minimum(np.arange(first, first + count), total - 1)  # [count]
    if index[-1] < first + count - 1:  # past the end: gather, repeating the last frame
        return _tensor(x).index_select(dim, torch.from_numpy(index))
    return x[(slice(None),) * dim + (slice(first, first + count),)]


def _tensor(x: Any) -> torch.Tensor:
    """A tensor owning its memory (numpy arrays, memory-mapped ones included, are copied)."""
    return torch.from_numpy(np.array(x)) if isinstance(x, np.ndarray) else x
