"""FOCUS under attention tensor parallelism (spec §12.3): every rank keeps the same rows.

An attention-TP rank holds `H/tp` query heads and the KV heads they read, so the importance it computes from its
own q/k (`retain.candidate_importance`) sums only its heads. Importance is a sum over heads of per-head softmax
column sums (spec §4.3: the softmax runs over keys within one head, nothing is normalised across heads), so the sum
of the ranks' partial importances is the importance over all heads, up to float summation order. One all-reduce
(sum, fp32) of `[I0; I1]` before the delta gives every rank the same values, selection is deterministic, and the
keep set, the compaction and the re-planned metadata follow identically on every rank. One rank wide, nothing here
communicates.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from typing import Any, NamedTuple

import torch

from sglang_focus import envs
from sglang_focus.structs import EvictionInput, RetainPlan

logger = logging.getLogger(__name__)


class AttentionTP(NamedTuple):
    """The attention-TP ranks a FOCUS forward agrees with, and whether it checks that agreement."""

    group: Any  # SGLang's GroupCoordinator of the attention-TP ranks (all_reduce, all_gather_object)
    check_keep: bool  # SGLANG_FOCUS_CHECK_TP_KEEP: compare the ranks' keep sets after every selection


class KeepFingerprint(NamedTuple):
    """What identifies one rank's keep set for a step, small enough to gather every step."""

    candidates: int  # masked candidates scored this step
    kept: int  # processing rows kept
    digest: int  # int64 blake2b checksum of the kept row indices


@functools.cache
def attention_tp() -> AttentionTP | None:
    """The process's attention-TP group, or None when it is one rank wide; read once, at the first evicting forward.

    It is the group SGLang's attention layers shard their heads over (`parallel_group="attn_tp"` of the qkv and
    output projections in `models/sdar.py` and `models/llada2.py`).
    """
    from sglang.srt.runtime_context import get_parallel

    parallel = get_parallel()
    if parallel.attn_tp_size == 1:
        return None
    tp = AttentionTP(group=parallel.attn_tp_group, check_keep=envs.check_tp_keep())
    logger.info("FOCUS sums the layer-0/1 importance over %d attention-TP ranks; keep-set agreement check %s",
                parallel.attn_tp_size, "on" if tp.check_keep else "off")
    return tp


def all_heads_importance(layer0: torch.Tensor, layer1: torch.Tensor,
                         tp: AttentionTP | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(I0, I1) [total_m] fp32 over the heads of every attention-TP rank: one all-reduce of `2 · total_m` floats.

    `layer0`/`layer1` are this rank's importances; returned unchanged (no collective) when `tp` is None. The
    inputs are not modified.
    """
    if tp is None:
        return layer0, layer1
    summed = tp.group.all_reduce(torch.stack([layer0, layer1]))
    return summed[0], summed[1]


def keep_fingerprint(plan: RetainPlan, inp: EvictionInput) -> KeepFingerprint:
    """This rank's keep set as a fingerprint (copies the kept rows to the host)."""
    kept_rows = plan.kept_rows.to("cpu", torch.int64).contiguous()
    digest = hashlib.blake2b(kept_rows.numpy().tobytes(), digest_size=8).digest()
    return KeepFingerprint(candidates=int(inp.cand_rows_cpu.shape[0]), kept=int(kept_rows.shape[0]),
                           digest=int.from_bytes(digest, "little", signed=True))


def check_keep_agreement(plan: RetainPlan, inp: EvictionInput, group) -> None:
    """Gather every rank's keep fingerprint over `group`; raise RuntimeError naming the ranks that differ from
    rank 0 (ranks in `group` order). A collective: every rank of `group` must call it for the same step."""
    fingerprints = [KeepFingerprint(*f) for f in group.all_gather_object(tuple(keep_fingerprint(plan, inp)))]
    differing = [rank for rank, f in enumerate(fingerprints) if f != fingerprints[0]]
    if differing:
        shown = "; ".join(f"rank {rank}: {_described(f)}" for rank, f in enumerate(fingerprints))
        raise RuntimeError(f"FOCUS keep sets differ across attention-TP ranks: ranks {differing} disagree with "
                           f"rank 0 ({shown}), so the ranks would run layers 2..L on different rows")


def _described(fingerprint: KeepFingerprint) -> str:
    return (f"{fingerprint.candidates} candidates, {fingerprint.kept} rows kept, "
            f"digest {fingerprint.digest & (2 ** 64 - 1):016x}")
