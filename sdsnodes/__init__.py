"""sdsnodes: stream training samples from disk, S3, GCS and HTTP into PyTorch, on the fly."""

import atexit
import gc

from sdsnodes.codecs import AudioWaveform, ImageTensor, Latent, Text, VideoClip
from sdsnodes.dataset import StreamingDataset
from sdsnodes.elastic import elastic_cursor, gather_states, load_elastic_state
from sdsnodes.errors import (
    DecodeError,
    DownloadError,
    OnError,
    SdsError,
    TooManyErrors,
    error_stats,
)
from sdsnodes.nodes import (
    Batcher,
    CachingDownloader,
    Decoder,
    Evictor,
    IndexReader,
    Loader,
    Mapper,
    Mixer,
    MixStrategy,
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

# pyarrow's thread pools can outlive interpreter teardown when torch is loaded too and abort the
# process at exit ("terminate called without an active exception", apache/arrow#34314): a last
# garbage collection while Arrow is still alive joins them. Seen here with torch 2.14 + pyarrow 26.
atexit.register(gc.collect)

__all__ = [
    "AudioWaveform",
    "Batcher",
    "CachingDownloader",
    "DecodeError",
    "Decoder",
    "DownloadError",
    "Evictor",
    "ImageTensor",
    "IndexReader",
    "Latent",
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
