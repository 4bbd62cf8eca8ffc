"""The chainable pieces: one ``torchdata.nodes.BaseNode`` per module."""

from torchdata.nodes import Batcher, Loader, Mapper, ParallelMapper, PinMemory

from sdsnodes.nodes._schedule import MixStrategy, StopCriterion
from sdsnodes.nodes.bucketing import AspectRatioBuckets, BucketBatcher, DurationBuckets
from sdsnodes.nodes.collate import SlotBatcher, collate
from sdsnodes.nodes.decoded_cache import DecodedCache
from sdsnodes.nodes.decoder import Decoder
from sdsnodes.nodes.downloader import CachingDownloader
from sdsnodes.nodes.evictor import Evictor
from sdsnodes.nodes.filter import Filter, Skip, Take
from sdsnodes.nodes.graph import iter_nodes, set_epoch, shutdown
from sdsnodes.nodes.index_reader import IndexReader
from sdsnodes.nodes.mixer import Mixer
from sdsnodes.nodes.prefetcher import Prefetcher
from sdsnodes.nodes.range_reader import RangeReader
from sdsnodes.nodes.rotator import RotationMedium, Rotator
from sdsnodes.nodes.select import Selector
from sdsnodes.nodes.shard_reader import ShardReader
from sdsnodes.nodes.shuffler import Shuffler
from sdsnodes.nodes.stream_batcher import PadMode, StreamBatcher
from sdsnodes.nodes.stream_opener import Stream, StreamOpener
from sdsnodes.nodes.tar_member_reader import TarMemberReader

__all__ = [
    "AspectRatioBuckets",
    "Batcher",
    "BucketBatcher",
    "CachingDownloader",
    "DecodedCache",
    "Decoder",
    "DurationBuckets",
    "Evictor",
    "Filter",
    "IndexReader",
    "Loader",
    "Mapper",
    "MixStrategy",
    "Mixer",
    "PadMode",
    "ParallelMapper",
    "PinMemory",
    "Prefetcher",
    "RangeReader",
    "RotationMedium",
    "Rotator",
    "Selector",
    "ShardReader",
    "Shuffler",
    "Skip",
    "SlotBatcher",
    "StopCriterion",
    "Stream",
    "StreamBatcher",
    "StreamOpener",
    "Take",
    "TarMemberReader",
    "collate",
    "iter_nodes",
    "set_epoch",
    "shutdown",
]
