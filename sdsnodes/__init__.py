"""sdsnodes: stream training samples from disk, S3, GCS and HTTP into PyTorch, on the fly."""

import atexit
import gc

from sdsnodes._gcs_compose_options import GcsComposeOptions
from sdsnodes._rotation_options import DecodedCacheOptions, RotationOptions
from sdsnodes.checkpoint import load_state, save_state
from sdsnodes.codecs import AudioWaveform, ImageTensor, Latent, Text, TextEmbedding, VideoClip
from sdsnodes.codecs.chunks import AudioChunks, LatentChunks, TextChunks, VideoChunks
from sdsnodes.codecs.text_files import JsonFile, TextFile
from sdsnodes.dataloader import StreamingDataLoader
from sdsnodes.dataset import StreamingDataset
from sdsnodes.elastic import elastic_cursor, gather_states, load_elastic_state
from sdsnodes.errors import (
    DecodeError,
    DownloadError,
    NotAFile,
    OnError,
    SdsError,
    TooLarge,
    TooManyErrors,
    error_stats,
)
from sdsnodes.groups import GroupLoader, GroupMode
from sdsnodes.index.tar import tar_index
from sdsnodes.metrics import TimedLoader, flat, instrument, postfix, stats, timed, to_prometheus
from sdsnodes.nodes import (
    AspectRatioBuckets,
    Batcher,
    BucketBatcher,
    CachingDownloader,
    DecodedCache,
    Decoder,
    DurationBuckets,
    Evictor,
    Filter,
    IndexReader,
    Loader,
    Mapper,
    Mixer,
    MixStrategy,
    ParallelMapper,
    PinMemory,
    Prefetcher,
    RangeReader,
    RotationMedium,
    Rotator,
    Selector,
    ShardReader,
    Shuffler,
    Skip,
    SlotBatcher,
    StopCriterion,
    StreamBatcher,
    StreamOpener,
    Take,
    TarMemberReader,
    collate,
    set_epoch,
    shutdown,
)
from sdsnodes.nodes._packed_balance import balance_dropped
from sdsnodes.nodes._threads import shutdown_all as _shutdown_all
from sdsnodes.options import CacheOptions, ErrorOptions, FetchOptions, IndexOptions
from sdsnodes.pack import PackResult, pack
from sdsnodes.presets import (
    build_audio_graph,
    build_image_graph,
    build_metadata_graph,
    build_text_to_video_graph,
    build_video_graph,
)
from sdsnodes.stream_loader import StreamLoader
from sdsnodes.stream_preset import build_stream_graph

__version__ = "0.1.0"

# pyarrow's thread pools can outlive interpreter teardown when torch is loaded too and abort the
# process at exit ("terminate called without an active exception", apache/arrow#34314): a last
# garbage collection while Arrow is still alive joins them. Seen here with torch 2.14 + pyarrow 26.
# Worker threads still inside pyarrow or PyAV at exit can do the same: stop them first.
atexit.register(gc.collect)
atexit.register(_shutdown_all)  # atexit runs last-registered first

__all__ = [
    "AspectRatioBuckets",
    "AudioChunks",
    "AudioWaveform",
    "Batcher",
    "BucketBatcher",
    "CacheOptions",
    "CachingDownloader",
    "DecodeError",
    "DecodedCache",
    "DecodedCacheOptions",
    "Decoder",
    "DownloadError",
    "DurationBuckets",
    "ErrorOptions",
    "Evictor",
    "FetchOptions",
    "Filter",
    "GcsComposeOptions",
    "GroupLoader",
    "GroupMode",
    "ImageTensor",
    "IndexOptions",
    "IndexReader",
    "JsonFile",
    "Latent",
    "LatentChunks",
    "Loader",
    "Mapper",
    "MixStrategy",
    "Mixer",
    "NotAFile",
    "OnError",
    "PackResult",
    "ParallelMapper",
    "PinMemory",
    "Prefetcher",
    "RangeReader",
    "RotationMedium",
    "RotationOptions",
    "Rotator",
    "SdsError",
    "Selector",
    "ShardReader",
    "Shuffler",
    "Skip",
    "SlotBatcher",
    "StopCriterion",
    "StreamBatcher",
    "StreamLoader",
    "StreamOpener",
    "StreamingDataLoader",
    "StreamingDataset",
    "Take",
    "TarMemberReader",
    "Text",
    "TextChunks",
    "TextEmbedding",
    "TextFile",
    "TimedLoader",
    "TooLarge",
    "TooManyErrors",
    "VideoChunks",
    "VideoClip",
    "balance_dropped",
    "build_audio_graph",
    "build_image_graph",
    "build_metadata_graph",
    "build_stream_graph",
    "build_text_to_video_graph",
    "build_video_graph",
    "collate",
    "elastic_cursor",
    "error_stats",
    "flat",
    "gather_states",
    "instrument",
    "load_elastic_state",
    "load_state",
    "pack",
    "postfix",
    "save_state",
    "set_epoch",
    "shutdown",
    "stats",
    "tar_index",
    "timed",
    "to_prometheus",
]
