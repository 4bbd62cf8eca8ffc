"""Train a tiny GRU on video streams: each batch row continues the same video, and the GRU's
hidden state of a row is reset where ``is_first`` says a new video starts.

    build_stream_graph → StreamingDataset → StreamLoader (DataLoader workers, coherent rows)

The GRU reads each clip's frames (pooled to 4x4 colour averages) and learns to predict the next
frame; its hidden state carries from one batch to the next (truncated back-propagation through
time: detached between batches), so it sees whole videos, clip after clip. Rows that are
padding (``is_pad``: the epoch's streams ran out) are left out of the loss.

Run it:

    python examples/rnn_streams.py                          # a small demo dataset in a temp dir
    python examples/rnn_streams.py --steps 50 --num-workers 2
    python examples/rnn_streams.py --src index.parquet      # your own videos ("video" column)
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import torch

from sdsnodes import StreamingDataset, StreamLoader, build_stream_graph, error_stats
from sdsnodes._synthetic import make_video_dataset

# torchdata 0.11's StatefulDataLoader calls torch.set_vital, deprecated in recent torch
warnings.filterwarnings("ignore", "'set_vital' is deprecated", UserWarning)


class FrameGRU(torch.nn.Module):
    """Frames → 4x4 colour averages → GRU → the next frame's averages."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.gru = torch.nn.GRU(48, hidden, batch_first=True)
        self.head = torch.nn.Linear(hidden, 48)

    @staticmethod
    def features(video: torch.Tensor) -> torch.Tensor:
        """uint8 [B, T, 3, H, W] → float32 [B, T, 48] in [0, 1]."""
        b, t = video.shape[:2]
        pooled = torch.nn.functional.adaptive_avg_pool2d(video.flatten(0, 1).float() / 255, 4)
        return pooled.reshape(b, t, 48)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, h = self.gru(x, h)  # [B, T, hidden], [1, B, hidden]
        return self.head(out), h


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", help="your own index with a 'video' column")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "sdsnodes-rnn",
                        help="where the demo dataset is written (and reused)")  # fmt: skip
    parser.add_argument("--num-videos", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="train this many batches")
    parser.add_argument("--batch-size", type=int, default=4, help="streams side by side")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--num-frames", type=int, default=4, help="frames per clip")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.2, help="SGD learning rate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    src = args.src or str(
        make_video_dataset(args.dir, num_videos=args.num_videos, seconds=2.0, width=64, height=48)
    )
    graph = build_stream_graph(
        src, modality="video", batch_size=args.batch_size, num_frames=args.num_frames, fps=8.0,
        size=args.size, seed=args.seed,
    )  # fmt: skip
    loader = StreamLoader(StreamingDataset(graph), num_workers=args.num_workers)
    model = FrameGRU()
    h = torch.zeros(1, args.batch_size, 32)  # one hidden state per batch row
    step = epoch = 0
    while step < args.steps:
        for batch in loader:
            rows = batch["__row__"]  # which of the batch_size rows these are (all, but "drop")
            keep = torch.ones(len(rows), 1)
            keep[batch["is_first"]] = 0.0  # a new stream starts in this row: forget the old one
            state = h[:, rows] * keep  # [1, B, 32]
            x = FrameGRU.features(batch["video"])  # [B, T, 48]
            pred, state = model(x[:, :-1], state)
            real = ~batch["is_pad"]  # padding rows are not data
            loss = ((pred - x[:, 1:]) ** 2).mean(dim=(1, 2))[real].mean()
            loss.backward()
            with torch.no_grad():  # plain SGD: torch.optim's first use imports torch._dynamo (s)
                for p in model.parameters():
                    p -= args.lr * p.grad
                    p.grad = None
            h = h.clone()
            h[:, rows] = state.detach()  # carried to the row's next clip
            step += 1
            starts = int(batch["is_first"].sum())
            print(f"step {step:3d}  epoch {epoch}  loss {loss.item():.4f}  new streams {starts}  "
                  f"keys {batch['__key__']}  chunks {batch['__chunk__'].tolist()}")  # fmt: skip
            if step == args.steps:
                break
        epoch += 1
    print(f"skipped streams: {error_stats(loader.state_dict()) or 'none'}")


if __name__ == "__main__":
    main()
