"""`--audit-every` of the benchmarks: only the focus arm audits, and its record sums the replies' audit counts."""

from __future__ import annotations

import argparse

import pytest

from sglang_focus.bench import audit
from sglang_focus.stats import AuditStats, FocusStats


def parsed(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    audit.add_audit_flag(parser)
    return parser.parse_args(argv)


def test_only_the_focus_arm_gets_audit_every_and_only_when_asked():
    options = {"min_batch_tokens": 0}
    assert audit.focus_options("focus", options, parsed("--audit-every", "4")) == {**options, "audit_every": 4}
    assert audit.focus_options("delayed", options, parsed("--audit-every", "4")) == options
    assert audit.focus_options("focus", options, parsed()) == options


@pytest.mark.parametrize("value", ["-1", "two"])
def test_bad_audit_every_is_a_usage_error(value):
    with pytest.raises(SystemExit):
        parsed("--audit-every", value)


def reply(audit_stats: AuditStats | None) -> dict:
    return {"meta_info": {"focus_stats": FocusStats(forwards=1, audit=audit_stats).summary()}}


def test_an_arms_record_sums_the_audit_counts_and_derives_the_recall():
    replies = [reply(AuditStats(steps=2, decodable=6, evicted_decodable=3)), reply(AuditStats()),
               reply(AuditStats(steps=1, decodable=2, evicted_decodable=0))]
    fields = audit.audit_fields(replies)
    assert fields == {"audited_steps": 3, "audit_decodable": 8, "audit_evicted_decodable": 3, "audit_recall": 0.625}
    assert "0.625" in audit.format_audit({"arm": "focus", **fields})


def test_an_arm_that_did_not_audit_reports_nothing():
    assert audit.audit_fields([reply(None), {"meta_info": {}}]) == {}
    assert audit.format_audit({"arm": "stock"}) is None
    assert audit.audit_fields([reply(AuditStats())])["audit_recall"] is None
