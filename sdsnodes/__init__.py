"""sdsnodes: stream training samples from disk, S3, GCS and HTTP into PyTorch, on the fly."""

from sdsnodes.codecs import ImageTensor, Text, VideoClip
from sdsnodes.dataset import StreamingDataset
from sdsnodes.elastic import elastic_cursor, gather_states, load_elastic_state
from sdsnodes.errors import DecodeError, DownloadError, OnError, SdsError, TooManyErrors, error_stats
from sdsnodes.nodes import (
    Batcher,
    CachingDownloader,
    Decoder,
    Evictor,
    IndexReader,
    Loader,
    Mapper,
    MixStrategy,
    Mixer,
    ParallelMapper,
    PinMemory,
    Prefetcher,
    Shuffler,
    StopCriterion,
    collate,
    set_epoch,
    shutdown,
)
from sdsnodes.presets import build_image_graph, build_video_graph

__version__ = "0.1.0"

__all__ = [
    "Batcher",
    "CachingDownloader",
    "DecodeError",
    "Decoder",
    "DownloadError",
    "Evictor",
    "ImageTensor",
    "IndexReader",
    "Loader",
    "Mapper",
    "MixStrategy",
    "Mixer",
    "OnError",
    "ParallelMapper",
    "PinMemory",
    "Prefetcher",
    "SdsError",
    "Shuffler",
    "StopCriterion",
    "StreamingDataset",
    "Text",
    "TooManyErrors",
    "VideoClip",
    "build_image_graph",
    "build_video_graph",
    "collate",
    "elastic_cursor",
    "error_stats",
    "gather_states",
    "load_elastic_state",
    "set_epoch",
    "shutdown",
]
