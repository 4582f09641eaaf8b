"""Per-request FOCUS statistics: summed in the scheduler, shown in `meta_info["focus_stats"]`, exported as metrics.

After every denoising forward the algorithm sets `logits_output.customized_info[STEP_KEY]` to one delta per request
of the batch (a plain dict with the COUNT_FIELDS and, on a server that audits its eviction, AUDIT_KEY: a dict with
the AUDIT_FIELDS). The scheduler patch (patches/dllm_mixin_scheduler.py) adds each
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
AUDIT_KEY = "audit"  # the summary's eviction-audit counts; present only on servers with `audit_every` > 0
AUDIT_FIELDS = ("steps", "decodable", "evicted_decodable")


class AuditStats(msgspec.Struct, frozen=True, kw_only=True):
    """Eviction-audit counts (config `audit_every`) for one request (totals) or one forward (a delta).

    An audited step runs without eviction; for each request FOCUS would have evicted from in it (more masked
    candidates than its budget, not a prefill step) it counts the tokens the unmasking rule decoded and, of those,
    the ones outside the keep set FOCUS selected from the same step's delta."""

    steps: int = 0  # audited steps in which FOCUS would have evicted from this request
    decodable: int = 0  # tokens decoded in them (what the unmasking rule decodes from the full logits)
    evicted_decodable: int = 0  # of those, the ones FOCUS's keep set would have evicted

    def __add__(self, other: "AuditStats") -> "AuditStats":
        return AuditStats(**{f: getattr(self, f) + getattr(other, f) for f in AUDIT_FIELDS})

    @property
    def recall(self) -> float | None:
        """Share of the decodable tokens FOCUS would have kept; None before any was seen."""
        return 1.0 - self.evicted_decodable / self.decodable if self.decodable else None

    def summary(self) -> dict[str, Any]:
        return {**msgspec.structs.asdict(self), "recall": self.recall}


class FocusStats(msgspec.Struct, frozen=True, kw_only=True):
    """FOCUS counts for one request (totals) or one forward (a delta)."""

    forwards: int = 0  # denoising forwards
    processed: int = 0  # block rows run through layers 0-1
    kept: int = 0  # rows run through layers 2..L
    evicted: int = 0  # processed - kept
    masked: int = 0  # masked candidate rows among the processed ones
    unmasked: int = 0  # tokens newly decoded
    audit: Optional[AuditStats] = None  # eviction-audit counts; None when the server does not audit

    def __add__(self, other: "FocusStats") -> "FocusStats":
        audits = [a for a in (self.audit, other.audit) if a is not None]
        audit = audits[0] + audits[1] if len(audits) == 2 else (audits[0] if audits else None)
        return FocusStats(**{f: getattr(self, f) + getattr(other, f) for f in COUNT_FIELDS}, audit=audit)

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
        """The client-facing dict: every count plus the three ratios, and the audit's summary (with its recall)
        under AUDIT_KEY when the server audits."""
        out = {**{f: getattr(self, f) for f in COUNT_FIELDS}, "kept_ratio": self.kept_ratio,
               "masked_kept_ratio": self.masked_kept_ratio, "tokens_per_forward": self.tokens_per_forward}
        if self.audit is not None:
            out[AUDIT_KEY] = self.audit.summary()
        return out


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


# The same for each AuditStats field; created at the first audited batch, so servers that do not audit export none.
# Recall over a window is 1 - increase(evicted_decodable) / increase(decodable).
AUDIT_METRIC_NAMES = {
    "steps": ("sglang:focus_audited_steps",
              "Request steps audited by FOCUS in which it would have evicted (one per request per audited forward)"),
    "decodable": ("sglang:focus_audit_decodable_tokens", "Tokens decoded in audited FOCUS steps"),
    "evicted_decodable": ("sglang:focus_audit_evicted_decodable_tokens",
                          "Tokens decoded in audited FOCUS steps that FOCUS's keep set would have evicted"),
}


class FocusMetrics:
    """Prometheus counters for FOCUS, bound to one label set (one per scheduler process)."""

    def __init__(self, labels: Mapping[str, Any]):
        self._labels = {name: str(value) for name, value in labels.items()}
        self._counters = _counters(METRIC_NAMES, self._labels)
        self._audit_counters: Optional[dict] = None

    def observe(self, delta: FocusStats) -> None:
        for field, counter in self._counters.items():
            counter.inc(getattr(delta, field))
        if delta.audit is not None:
            if self._audit_counters is None:
                self._audit_counters = _counters(AUDIT_METRIC_NAMES, self._labels)
            for field, counter in self._audit_counters.items():
                counter.inc(getattr(delta.audit, field))


def _counters(names: Mapping[str, tuple[str, str]], labels: Mapping[str, str]) -> dict:
    """One prometheus Counter per field of `names` (field -> (name, documentation)), bound to `labels`."""
    from prometheus_client import Counter

    return {field: Counter(name, doc, labelnames=list(labels)).labels(**labels) if labels else Counter(name, doc)
            for field, (name, doc) in names.items()}


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
