"""Per-request FOCUS statistics: summed in the scheduler, shown in `meta_info["focus_stats"]`, exported as metrics.

After every denoising forward the algorithm sets `logits_output.customized_info[STEP_KEY]` to one delta per request
of the batch (a plain dict with the COUNT_FIELDS). The scheduler patch (patches/dllm_mixin_scheduler.py) adds each
delta to its request's totals, stored as a one-element summary list in `req.customized_info[STATS_KEY]` (SGLang's
tokenizer manager extends a list with each chunk's customized_info values), which SGLang streams to the client; the
tokenizer-manager patch unwraps it, so `meta_info[STATS_KEY]` is the summary dict. The batch's sum goes to
Prometheus counters when metrics are on.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import msgspec

STEP_KEY = "focus_step"  # logits_output.customized_info: per-request deltas of one forward
STATS_KEY = "focus_stats"  # req.customized_info: [summary] of the request's totals; meta_info: the summary
COUNT_FIELDS = ("forwards", "processed", "kept", "evicted", "masked", "unmasked")


class FocusStats(msgspec.Struct, frozen=True, kw_only=True):
    """FOCUS counts for one request (totals) or one forward (a delta)."""

    forwards: int = 0  # denoising forwards
    processed: int = 0  # block rows run through layers 0-1
    kept: int = 0  # rows run through layers 2..L
    evicted: int = 0  # processed - kept
    masked: int = 0  # masked candidate rows among the processed ones
    unmasked: int = 0  # tokens newly decoded

    def __add__(self, other: "FocusStats") -> "FocusStats":
        return FocusStats(**{f: getattr(self, f) + getattr(other, f) for f in COUNT_FIELDS})

    @property
    def kept_ratio(self) -> float:
        """kept / processed; 1.0 before any row was processed."""
        return self.kept / self.processed if self.processed else 1.0

    @property
    def masked_kept_ratio(self) -> float:
        """Kept fraction of the masked candidates (non-mask rows are always kept); 1.0 without candidates."""
        return (self.kept - (self.processed - self.masked)) / self.masked if self.masked else 1.0

    @property
    def tokens_per_forward(self) -> float:
        """unmasked / forwards; 0.0 before the first forward."""
        return self.unmasked / self.forwards if self.forwards else 0.0

    def summary(self) -> dict[str, Any]:
        """The client-facing dict: every count plus the three ratios."""
        return {**msgspec.structs.asdict(self), "kept_ratio": self.kept_ratio,
                "masked_kept_ratio": self.masked_kept_ratio, "tokens_per_forward": self.tokens_per_forward}


ZERO = FocusStats()


def parse_delta(delta: Mapping[str, Any]) -> FocusStats:
    """One forward's delta dict as FocusStats; raises msgspec.ValidationError on a non-integer count."""
    return msgspec.convert(delta, FocusStats)


def step_deltas(result) -> Optional[Sequence[Mapping[str, Any]]]:
    """The per-request deltas a GenerationBatchResult carries, or None (stock algorithms set none)."""
    logits_output = getattr(result, "logits_output", None)
    info = getattr(logits_output, "customized_info", None)
    return info.get(STEP_KEY) if isinstance(info, Mapping) else None


def request_totals(req) -> FocusStats:
    """The totals recorded on a Req so far (ZERO before its first FOCUS forward)."""
    recorded = (req.customized_info or {}).get(STATS_KEY)
    return msgspec.convert(recorded[0], FocusStats) if recorded else ZERO


def record_step(reqs: Sequence, deltas: Sequence[Mapping[str, Any]]) -> FocusStats:
    """Add `deltas[i]` to the totals of `reqs[i]`; return the batch's summed delta.

    Mutates each Req's `customized_info` (created if None): `[STATS_KEY]` becomes `[summary]`, the new totals.
    Raises ValueError if the lists differ in length.
    """
    if len(deltas) != len(reqs):
        raise ValueError(f"FOCUS step stats have {len(deltas)} entries for a batch of {len(reqs)} requests")
    batch_delta = ZERO
    for req, raw in zip(reqs, deltas):
        delta = parse_delta(raw)
        if req.customized_info is None:
            req.customized_info = {}
        req.customized_info[STATS_KEY] = [(request_totals(req) + delta).summary()]
        batch_delta = batch_delta + delta
    return batch_delta


# Counter name (SGLang's "sglang:" prefix; prometheus_client appends "_total") for each exported FocusStats field.
METRIC_NAMES = {
    "forwards": ("sglang:focus_forwards", "Request denoising forwards run by FOCUS (one per request per forward)"),
    "processed": ("sglang:focus_processed_tokens", "Block rows run through layers 0-1 by FOCUS"),
    "kept": ("sglang:focus_kept_tokens", "Block rows kept by FOCUS for layers 2..L"),
    "evicted": ("sglang:focus_evicted_tokens", "Block rows evicted by FOCUS after layer 1"),
    "unmasked": ("sglang:focus_unmasked_tokens", "Tokens decoded under FOCUS"),
}


class FocusMetrics:
    """Prometheus counters for FOCUS, bound to one label set (one per scheduler process)."""

    def __init__(self, labels: Mapping[str, Any]):
        from prometheus_client import Counter

        values = {name: str(value) for name, value in labels.items()}
        self._counters = {
            field: Counter(name, doc, labelnames=list(values)).labels(**values) if values else Counter(name, doc)
            for field, (name, doc) in METRIC_NAMES.items()
        }

    def observe(self, delta: FocusStats) -> None:
        for field, counter in self._counters.items():
            counter.inc(getattr(delta, field))


_metrics: Optional[FocusMetrics] = None


def focus_metrics(labels: Mapping[str, Any]) -> FocusMetrics:
    """The process's FocusMetrics, created at first use with `labels` (later calls ignore theirs).

    Create it only when SGLang's metrics are on: `--enable-metrics` sets PROMETHEUS_MULTIPROC_DIR before the
    scheduler starts, so counters made here show up in the server's /metrics.
    """
    global _metrics
    if _metrics is None:
        _metrics = FocusMetrics(labels)
    return _metrics
