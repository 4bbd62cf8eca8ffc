"""How a batch crosses a tensor/context-parallel group (see :mod:`sdsnodes.groups`).

A batch crosses in two broadcasts: a header (kind, sizes) and one uint8 buffer holding the
pickled structure of the batch, whose tensors are replaced by (offset, shape, dtype) references
(``pickle`` persistent ids), followed by the tensors' bytes, each ``ALIGN``-byte aligned. The
receivers' tensors are views of that buffer. With NCCL the buffer travels on the current CUDA
device.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import torch

ALIGN = 64
"""Byte alignment of each tensor in a broadcast buffer (any dtype can view it in place)."""

BATCH, END, ERROR = 0, 1, 2
"""Header kinds: a batch follows, the epoch ended (no payload), an error to raise follows."""


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class _Packer(pickle.Pickler):
    """Pickles a batch with its dense tensors replaced by (offset, shape, dtype) references."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.tensors: list[tuple[int, torch.Tensor]] = []
        self.size = 0

    def persistent_id(self, obj: Any) -> Any:
        if not isinstance(obj, torch.Tensor) or obj.layout is not torch.strided or obj.is_quantized:
            return None
        flat = obj.detach().contiguous().reshape(-1).view(torch.uint8)  # [nbytes]
        offset, self.size = self.size, _aligned(self.size + flat.numel())
        self.tensors.append((offset, flat))
        return (offset, tuple(obj.shape), obj.dtype)


class _Unpacker(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, data: torch.Tensor) -> None:
        super().__init__(file)
        self.data = data

    def persistent_load(self, pid: Any) -> torch.Tensor:
        offset, shape, dtype = pid
        nbytes = torch.Size(shape).numel() * dtype.itemsize
        return self.data[offset : offset + nbytes].view(dtype).reshape(shape)


def pack(obj: Any) -> tuple[torch.Tensor, int]:
    """``obj`` as one uint8 buffer: its pickled structure (tensors by reference), then the
    tensors' bytes from offset ``aligned(meta_len)``; returns (buffer, meta_len)."""
    file = io.BytesIO()
    packer = _Packer(file)
    packer.dump(obj)
    meta = file.getbuffer()
    start = _aligned(len(meta))
    buffer = torch.empty(start + packer.size, dtype=torch.uint8)
    buffer[: len(meta)] = torch.frombuffer(meta, dtype=torch.uint8)
    for offset, flat in packer.tensors:
        buffer[start + offset : start + offset + flat.numel()] = flat
    return buffer, len(meta)


def unpack(buffer: torch.Tensor, meta_len: int) -> Any:
    """The object :func:`pack` packed; its tensors are views of ``buffer``."""
    meta = buffer[:meta_len].cpu().numpy().tobytes()
    return _Unpacker(io.BytesIO(meta), buffer[_aligned(meta_len) :]).load()


def _device(group: Any) -> torch.device:
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def send(obj: Any, src: int, group: Any, kind: int = BATCH) -> int:
    """Broadcast ``obj`` from ``src`` (this rank) to ``group``; the payload bytes sent.

    ``kind`` tells the receivers what comes: a batch, the end of the epoch (no payload) or an
    error to raise."""
    packed = pack(obj) if kind != END else (torch.empty(0, dtype=torch.uint8), 0)
    return send_packed(packed, src, group, kind)


def send_packed(packed: tuple[torch.Tensor, int], src: int, group: Any, kind: int = BATCH) -> int:
    """:func:`send` of what :func:`pack` returned."""
    import torch.distributed as dist

    device = _device(group)
    buffer, meta_len = packed
    header = torch.tensor([kind, meta_len, buffer.numel()], dtype=torch.int64, device=device)
    dist.broadcast(header, src=src, group=group)
    if buffer.numel():
        dist.broadcast(buffer.to(device), src=src, group=group)
    return buffer.numel()


def receive(src: int, group: Any) -> tuple[int, Any]:
    """The (kind, object) that :func:`send` broadcast from ``src``; tensors are views of one
    received buffer."""
    import torch.distributed as dist

    device = _device(group)
    header = torch.empty(3, dtype=torch.int64, device=device)
    dist.broadcast(header, src=src, group=group)
    kind, meta_len, size = header.tolist()
    if kind == END:
        return kind, None
    buffer = torch.empty(size, dtype=torch.uint8, device=device)
    dist.broadcast(buffer, src=src, group=group)
    return kind, unpack(buffer, meta_len)
