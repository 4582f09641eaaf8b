"""`--audit-every N` for the benchmarks: the focus arm audits its eviction, and the arm's record reports the recall.

The option is FOCUS's `audit_every` (README, configuration): every N-th evicting step runs without eviction while
FOCUS's keep set is still selected, so the replies' `focus_stats["audit"]` count the decodable tokens FOCUS would
have evicted. It is given to the focus arm only (the delayed arm never evicts, so it has nothing to audit). An
audited step costs what a delayed-only step costs and decodes differently from an evicting one: an audited run's
speed and accuracy are not the unaudited FOCUS's.
"""

from __future__ import annotations

import argparse
from typing import Mapping, Sequence

from sglang_focus.bench.arms import non_negative_int
from sglang_focus.stats import AUDIT_FIELDS, AUDIT_KEY, AuditStats


def add_audit_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--audit-every", type=non_negative_int, default=0, metavar="N",
                        help="focus arm: audit every N-th evicting step (FOCUS's audit_every) and report the share "
                             "of the tokens those steps decode that FOCUS would have kept; 0 = off (default)")


def focus_options(arm: str, options: Mapping[str, object], args: argparse.Namespace) -> dict:
    """`options` (the FOCUS arms' YAML keys), plus `audit_every` for the focus arm when `--audit-every` is set."""
    if arm == "focus" and args.audit_every:
        return {**options, "audit_every": args.audit_every}
    return dict(options)


def audit_fields(replies: Sequence[dict]) -> dict:
    """The replies' audit counts summed, with the recall (None where nothing was counted); {} when no reply
    carries audit counts (the arm did not audit)."""
    audits = [r["meta_info"].get("focus_stats", {}).get(AUDIT_KEY) for r in replies]
    audits = [a for a in audits if a is not None]
    if not audits:
        return {}
    total = AuditStats(**{field: sum(int(a[field]) for a in audits) for field in AUDIT_FIELDS})
    return {"audited_steps": total.steps, "audit_decodable": total.decodable,
            "audit_evicted_decodable": total.evicted_decodable, "audit_recall": total.recall}


def format_audit(record: Mapping[str, object]) -> str | None:
    """One line describing an arm's audit, or None if it did not audit."""
    if "audit_recall" not in record:
        return None
    recall = record["audit_recall"]
    shown = "-" if recall is None else f"{recall:.3f}"
    return (f"{record['arm']}: audited recall {shown} ({record['audit_evicted_decodable']} of "
            f"{record['audit_decodable']} decodable tokens would have been evicted, "
            f"{record['audited_steps']} audited request-steps)")

