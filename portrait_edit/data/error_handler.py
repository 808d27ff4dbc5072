"""`CountingErrorHandler`: skip corrupt samples with a counted warning, fail loudly above an error rate.

WebDataset's `warn_and_continue` sleeps 0.5 s per error and never gives up; `reraise_exception` crashes a
week-long run on one bad PNG. DESIGN.md §4 asks for neither: skip, count, warn once per key, and raise
only when the fraction of skipped samples shows that something is systematically wrong.

One instance is shared by every stage of one finite pipeline (pass it to WebDataset AND to every .map,
wds#291: validation, inspection, tools); each DataLoader worker holds its own copy, so counts are per
worker and travel with the batches to the main process, where the datamodule sums them. The training
stream (`train_stream`) records its skips per batch instead and the datamodule judges their rate with
`check`.
"""

from __future__ import annotations

import logging
import tarfile
from typing import Any

from portrait_edit.data.sample_codec import SampleError

log = logging.getLogger(__name__)

# Exceptions that mean "bad data": everything else is a bug and is re-raised, never swallowed.
DATA_ERRORS = (ValueError, OSError, EOFError, tarfile.TarError, KeyError)
COUNTS_FIELD = "__counts__"


class CountingErrorHandler:
    """Picklable error handler with `seen` / `skipped` counters and an error-rate threshold.

    Use `handler.on_read_error` for WebDataset's own stages (tar reading: those failures happen before a
    sample is counted, so each also counts as seen), the instance itself for stages after `count`.
    """

    def __init__(self, max_error_rate: float = 0.05, min_samples: int = 20) -> None:
        """
        Args:
            max_error_rate: fail when skipped / seen exceeds this (once min_samples were seen).
            min_samples: samples to see before the rate is judged (a single early error is not a trend).
        """
        if not 0.0 <= max_error_rate <= 1.0:
            raise ValueError(f"max_error_rate must be in [0, 1], got {max_error_rate}")
        self.max_error_rate = max_error_rate
        self.min_samples = min_samples
        self.seen = 0
        self.skipped = 0
        self._logged: set[str] = set()

    def __call__(self, exn: BaseException) -> bool:
        """Handler for stages after `count` (decoding): the sample is already counted as seen."""
        return self._skip(exn, counted=True)

    def on_read_error(self, exn: BaseException) -> bool:
        """Handler for tar-level stages (corrupt tar, truncated member): counts one seen and one skipped."""
        return self._skip(exn, counted=False)

    def count(self, sample: Any) -> Any:
        """Pipeline stage (`.map(handler.count)`) that counts each sample that reaches decoding."""
        self.seen += 1
        return sample

    def check(self) -> None:
        """Raise RuntimeError when the skipped fraction exceeds max_error_rate."""
        if self.seen >= self.min_samples and self.skipped > self.max_error_rate * self.seen:
            raise RuntimeError(
                f"{self.skipped} of {self.seen} samples were skipped as corrupt "
                f"({self.skipped / self.seen:.1%}), above max_error_rate={self.max_error_rate:.1%}; "
                "inspect the shards with tools/inspect_shards.py or raise max_error_rate"
            )

    def _skip(self, exn: BaseException, counted: bool) -> bool:
        if not isinstance(exn, DATA_ERRORS):
            raise exn
        if not counted:
            self.seen += 1
        self.skipped += 1
        what = _describe(exn)
        if what not in self._logged:
            self._logged.add(what)
            log.warning("skipping corrupt data: %s (%d skipped of %d seen)", exn, self.skipped, self.seen)
        self.check()
        return True


def _describe(exn: BaseException) -> str:
    """Identity of the bad item for warn-once: the sample key, else the shard URL WebDataset appended."""
    if isinstance(exn, SampleError):
        return f"key {exn.key}"
    urls = [a for a in getattr(exn, "args", ())[1:] if isinstance(a, str)]
    return f"{type(exn).__name__} in {urls[-1] if urls else exn}"
