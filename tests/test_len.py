"""len() of the loader handed to a trainer: the batches one rank yields in an epoch
(StreamingDataLoader, StreamingDataset.num_batches), checked against the batches actually
yielded by real DataLoaders (num_workers 0 and 2, drop_last both ways, 2 ranks)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torchdata.nodes import Batcher

from sdsnodes import (
    IndexReader,
    Mixer,
    StreamingDataLoader,
    StreamingDataset,
    Take,
    build_metadata_graph,
)

ROWS, BATCH = 23, 5


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    path = tmp_path_factory.mktemp("len") / "index.parquet"
    pq.write_table(pa.table({"n": range(ROWS), "caption": [f"c{i}" for i in range(ROWS)]}), path)
    return str(path)


# (rank, world_size), num_workers, drop_last -> batches: 23 rows over the workers' shards
# (12 + 11 rows with 2 workers; 2 ranks pad every shard to ceil(23 / shards) rows), B = 5
EXPECTED = {
    ((None, None), 0, False): 5, ((None, None), 0, True): 4,
    ((None, None), 2, False): 6, ((None, None), 2, True): 4,  # 3 + 3 and 2 + 2, not 23 // 5
    ((0, 2), 0, False): 3, ((0, 2), 0, True): 2,  # 12 rows per rank
    ((1, 2), 2, False): 4, ((1, 2), 2, True): 2,  # 6 rows per worker
}  # fmt: skip


@pytest.mark.parametrize("num_workers", [0, 2])
def test_len_is_the_batches_yielded(index, num_workers):
    for (layout, workers, drop_last), expected in EXPECTED.items():
        if workers != num_workers:
            continue
        rank, world_size = layout
        graph = build_metadata_graph(
            index, batch_size=BATCH, drop_last=drop_last, rank=rank, world_size=world_size,
            prefetch_factor=0,
        )  # fmt: skip
        dataset = StreamingDataset(graph)
        loader = StreamingDataLoader(dataset, num_workers=num_workers)
        batches = list(loader)
        sizes = [len(b["n"]) for b in batches]
        assert len(loader) == len(batches) == expected, (layout, drop_last, sizes)
        assert dataset.num_batches(num_workers) == expected and len(dataset) == ROWS
        assert not drop_last or set(sizes) == {BATCH}
        if layout == (None, None) and not drop_last:  # every row once
            assert sorted(int(x) for b in batches for x in b["n"]) == list(range(ROWS))


def test_graphs_without_a_known_count_are_refused(index):
    reader = IndexReader(index)
    with pytest.raises(ValueError, match="has a Take"):
        StreamingDataset(Batcher(Take(reader, 3), 2)).num_batches(0)
    mixed = Mixer({"a": Batcher(IndexReader(index), 2), "b": Batcher(IndexReader(index), 2)})
    with pytest.raises(ValueError, match="has a Mixer"):
        len(StreamingDataLoader(StreamingDataset(mixed)))
    with pytest.raises(ValueError, match="one Batcher"):
        StreamingDataset(reader).num_batches(0)
    with pytest.raises(ValueError, match="num_workers=-1"):
        StreamingDataset(Batcher(reader, 2)).num_batches(-1)
    with pytest.raises(ValueError, match="pass batch_size=None"):
        StreamingDataLoader(StreamingDataset(Batcher(reader, 2)), batch_size=4)
    with pytest.raises(TypeError, match="takes a StreamingDataset"):
        StreamingDataLoader([1, 2])


@pytest.mark.slow  # Lightning's import and Trainer cost seconds: SDS_SLOW=1
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch's pytree deprecations in Lightning
@pytest.mark.filterwarnings("ignore::UserWarning")  # Lightning's advice (workers, logging)
def test_lightning_runs_len_batches_per_epoch(index):
    lightning = pytest.importorskip("lightning")
    import torch

    graph = build_metadata_graph(index, batch_size=BATCH, shuffle=False, prefetch_factor=0)
    loader = StreamingDataLoader(StreamingDataset(graph), num_workers=2)

    class Model(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_index):
            return (self.weight * batch["n"].float()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    trainer = lightning.Trainer(
        max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(Model(), loader)
    assert trainer.num_training_batches == len(loader) == 6  # 3 + 3, where len(dataset) is 23
    assert trainer.global_step == 12
