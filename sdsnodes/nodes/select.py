"""Selector: choose one of several candidate columns per sample before anything is downloaded."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torchdata.nodes import BaseNode

from sdsnodes.codecs.text import CaptionChoice
from sdsnodes.errors import SdsError
from sdsnodes.nodes._threads import ThreadMapNode
from sdsnodes.options import ErrorOptions
from sdsnodes.sample import EPOCH, INDEX, Sample

SALT = 0x5E1EC7
"""Mixed into each sample's seed, so the Selector's draw is independent of the codecs'."""


class NoCandidate(SdsError):
    """No candidate of a sample has all its columns (counted as ``"missing"``)."""

    reason = "missing"


def present(value: Any) -> bool:
    """Whether a candidate value is there: not None, and not an empty or blank string/bytes."""
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, (bytes, bytearray)):
        return bool(value)
    return True


class Selector(ThreadMapNode):
    """Choose candidate ``i`` of a sample, copy its columns to the output columns, and set the
    other candidates' file columns to None, so a :class:`~sdsnodes.CachingDownloader` after it
    fetches only the chosen file.

    Candidates line up column by column: with ``candidates={"caption": ["short", "long"],
    "caption_embedding": ["short_t5", "long_t5"]}``, candidate 0 is ("short", "short_t5") and
    candidate 1 is ("long", "long_t5"): the caption's own embedding is selected together with
    it. A candidate is eligible when every one of its columns holds a value (not None, not a
    blank string). The choice is a pure function of (``seed``, ``__epoch__``, ``__index__``):
    the same in every run, after any resume, and in random access (``dataset[i]``, epoch 0);
    it differs from epoch to epoch with ``choice="random"``.

    Args:
        source (BaseNode): upstream node yielding index rows (before the CachingDownloader).
        candidates (Mapping[str, Sequence[str]]): output column → its candidate index columns,
            every list as long as the first (>= 1). The first output column also gets
            ``"<name>.<name>_column"`` (e.g. ``caption.caption_column``): the column chosen.
        files (Sequence[str] | None): output columns holding files (paths or URLs) whose
            unchosen candidates are set to None; None: every output column. The unchosen
            candidates of the other output columns (e.g. caption texts) are kept.
        choice (CaptionChoice | str): ``"random"`` (uniform among the eligible candidates,
            seeded) or ``"first"`` (the first eligible one, in the order given).
        seed (int): seed of the ``"random"`` choice.
        errors (ErrorOptions | None): a sample without an eligible candidate is skipped and
            counted as ``"missing"``, or raised (:class:`NoCandidate`); None: ``ErrorOptions()``.

    Returns:
        Each sample with the output columns set (the values of the chosen candidate), the
        unchosen candidates of ``files`` set to None, and ``"<first>.<first>_column"`` (str).

    State:
        as :class:`~sdsnodes.nodes._threads.ThreadMapNode` (the choice needs none: it is
        recomputed from the sample).

    Raises:
        ValueError: ``candidates`` empty, of lists of different lengths or with an empty list,
            ``files`` naming no output column, or an unknown ``choice``.
    """

    reason = NoCandidate.reason

    def __init__(
        self,
        source: BaseNode,
        candidates: Mapping[str, Sequence[str]],
        *,
        files: Sequence[str] | None = None,
        choice: CaptionChoice | str = CaptionChoice.RANDOM,
        seed: int = 0,
        errors: ErrorOptions | None = None,
    ) -> None:
        lists = {name: list(columns) for name, columns in (candidates or {}).items()}
        lengths = {len(columns) for columns in lists.values()}
        if not lists or any(isinstance(c, str) for c in candidates.values()) or 0 in lengths:
            raise ValueError(
                f"{candidates=} must map each output column to a non-empty list of candidate "
                "columns, e.g. {'caption': ['short', 'long']}"
            )
        if len(lengths) > 1:
            raise ValueError(
                f"the candidate lists of {candidates=} differ in length: candidate i is the "
                "i-th column of every list, so give each list as many columns"
            )
        files = list(lists) if files is None else list(files)
        if set(files) - set(lists):
            raise ValueError(f"{files=} must name output columns of candidates {list(lists)}")
        try:
            self.choice = CaptionChoice(choice)
        except ValueError:
            raise ValueError(
                f"{choice=} must be one of {[c.value for c in CaptionChoice]}"
            ) from None
        errors = errors or ErrorOptions()
        super().__init__(source, 0, errors.on_error, errors.max_error_rate)
        self.candidates, self.files, self.seed = lists, files, int(seed)
        first = next(iter(lists))
        self.chosen_key = f"{first}.{first}_column"

    def pick(self, sample: Sample) -> int:
        """The candidate chosen for ``sample``.

        Raises:
            NoCandidate: no candidate has all its columns.
        """
        count = len(next(iter(self.candidates.values())))
        eligible = [
            i for i in range(count)
            if all(present(sample.get(columns[i])) for columns in self.candidates.values())
        ]  # fmt: skip
        if not eligible:
            raise NoCandidate(
                f"no candidate of {list(self.candidates.values())} has all its columns"
            )
        if self.choice is CaptionChoice.FIRST or len(eligible) == 1:
            return eligible[0]
        key = [self.seed, int(sample.get(EPOCH) or 0), int(sample.get(INDEX) or 0), SALT]
        return eligible[int(np.random.default_rng(key).integers(len(eligible)))]

    def process(self, sample: Sample) -> Sample:
        i = self.pick(sample)
        out = dict(sample)
        for name in self.files:
            for j, column in enumerate(self.candidates[name]):
                if j != i:
                    out[column] = None
        for name, columns in self.candidates.items():
            out[name] = sample.get(columns[i])
        out[self.chosen_key] = next(iter(self.candidates.values()))[i]
        return out
