"""Retention policies (ops.retention): restic's semantics on the local calendar, DST included.

Instants are built with zoneinfo; the code under test converts them back with
the process's TZ (set per test), so the two must agree on the local calendar."""

import datetime
import os
import time
from typing import NamedTuple
from zoneinfo import ZoneInfo

import pytest

from chunkrepo.ops.retention import Duration, Policy, PolicyError, apply_policy, parse_duration, plan


class Rec(NamedTuple):
    id: str
    start_ns: int
    host: str = "h"
    subset: str = "/data"


@pytest.fixture
def tz():
    old = os.environ.get("TZ")

    def set_tz(name):
        os.environ["TZ"] = name
        time.tzset()
        return ZoneInfo(name)

    yield set_tz
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


def at(zone, *args, fold=0):
    return int(datetime.datetime(*args, tzinfo=zone, fold=fold).timestamp()) * 10**9


def recs(*instants):
    return [Rec(f"b{i:03d}", ns) for i, ns in enumerate(instants)]


def kept(decisions):
    return sorted(d.backup.id for d in decisions if d.keep)


def reasons(decisions):
    return {d.backup.id: d.reasons for d in decisions}


def test_keep_last_keeps_the_newest_n(tz):
    z = tz("UTC")
    rs = recs(*(at(z, 2024, 1, 1, h) for h in range(10)))
    ds = apply_policy(list(reversed(rs)), Policy(last=3))
    assert kept(ds) == ["b007", "b008", "b009"]
    assert [d.backup.id for d in ds][:3] == ["b009", "b008", "b007"]     # newest first
    assert all(d.reasons == ["keep-last"] for d in ds if d.keep)
    assert all(d.reasons == [] for d in ds if not d.keep)


def test_keep_daily_keeps_the_newest_of_each_recent_day_with_backups(tz):
    z = tz("UTC")
    rs = recs(at(z, 2024, 5, 1, 9), at(z, 2024, 5, 1, 18),        # b000 b001
              at(z, 2024, 5, 3, 0, 0), at(z, 2024, 5, 3, 23, 59),  # b002 b003
              at(z, 2024, 5, 6, 12))                               # b004 (days 4 and 5 have none)
    assert kept(apply_policy(rs, Policy(daily=3))) == ["b001", "b003", "b004"]
    assert kept(apply_policy(rs, Policy(daily=2))) == ["b003", "b004"]
    assert kept(apply_policy(rs, Policy(daily=10))) == ["b001", "b003", "b004"]


def test_a_backup_after_local_midnight_belongs_to_the_local_day(tz):
    """restic#2233: 00:30 in Berlin is 23:30 UTC the day before; it is its own local day."""
    z = tz("Europe/Berlin")
    rs = recs(at(z, 2024, 1, 10, 20, 0),    # b000: 19:00 UTC on the 10th
              at(z, 2024, 1, 10, 23, 30),   # b001: 22:30 UTC on the 10th
              at(z, 2024, 1, 11, 0, 30))    # b002: 23:30 UTC on the 10th, but the 11th locally
    ds = apply_policy(rs, Policy(daily=2))
    assert kept(ds) == ["b001", "b002"]
    # the same instants seen from UTC are one day: that is the bug this avoids
    tz("UTC")
    assert kept(apply_policy(rs, Policy(daily=2))) == ["b002"]


def test_month_and_year_edges_follow_the_local_calendar(tz):
    z = tz("Europe/Berlin")
    rs = recs(at(z, 2023, 12, 31, 23, 30),   # b000: 2023 locally, 22:30 UTC
              at(z, 2024, 1, 1, 0, 30),      # b001: 2024 locally, still 2023 in UTC
              at(z, 2024, 1, 31, 23, 59),    # b002: January
              at(z, 2024, 2, 1, 0, 1))       # b003: February locally, January in UTC
    assert kept(apply_policy(rs, Policy(yearly=2))) == ["b000", "b003"]
    assert kept(apply_policy(rs, Policy(monthly=2))) == ["b002", "b003"]
    assert kept(apply_policy(rs, Policy(monthly=3))) == ["b000", "b002", "b003"]


def test_weekly_uses_iso_weeks_across_the_year_end(tz):
    z = tz("America/New_York")
    rs = recs(at(z, 2024, 12, 22, 12),        # b000: Sunday, ISO 2024-W51
              at(z, 2024, 12, 23, 0, 1),      # b001: Monday, W52
              at(z, 2024, 12, 29, 23, 59),    # b002: Sunday, W52
              at(z, 2024, 12, 30, 0, 1),      # b003: Monday, ISO 2025-W01 (still December)
              at(z, 2025, 1, 5, 23, 0))       # b004: Sunday, 2025-W01 (04:00 UTC Monday W02)
    assert kept(apply_policy(rs, Policy(weekly=2))) == ["b002", "b004"]
    assert kept(apply_policy(rs, Policy(weekly=3))) == ["b000", "b002", "b004"]


def test_fall_back_day_berlin_the_repeated_hour_is_one_hour_bucket(tz):
    z = tz("Europe/Berlin")
    first = at(z, 2024, 10, 27, 2, 30, fold=0)    # 02:30 CEST
    second = at(z, 2024, 10, 27, 2, 30, fold=1)   # 02:30 CET, an hour later
    assert second - first == 3600 * 10**9
    rs = recs(at(z, 2024, 10, 27, 1, 30), first, second, at(z, 2024, 10, 27, 3, 30),
              at(z, 2024, 10, 27, 23, 50), at(z, 2024, 10, 26, 23, 59))
    # hours: 01, 02 (twice), 03, 23 on the 27th and 23 on the 26th
    assert kept(apply_policy(rs, Policy(hourly=10))) == ["b000", "b002", "b003", "b004", "b005"]
    # the 25-hour day is one day
    assert kept(apply_policy(rs, Policy(daily=5))) == ["b004", "b005"]


def test_spring_forward_day_new_york(tz):
    z = tz("America/New_York")
    # 2024-03-10: 02:00 EST jumps to 03:00 EDT; the day has 23 hours
    rs = recs(at(z, 2024, 3, 9, 23, 30), at(z, 2024, 3, 10, 0, 5), at(z, 2024, 3, 10, 1, 59),
              at(z, 2024, 3, 10, 3, 1), at(z, 2024, 3, 10, 23, 55), at(z, 2024, 3, 11, 0, 5))
    assert rs[3].start_ns - rs[2].start_ns == 120 * 10**9       # two minutes apart, hours 01 and 03
    assert kept(apply_policy(rs, Policy(daily=3))) == ["b000", "b004", "b005"]
    assert kept(apply_policy(rs, Policy(hourly=3))) == ["b003", "b004", "b005"]
    assert kept(apply_policy(rs, Policy(hourly=4))) == ["b002", "b003", "b004", "b005"]


def test_keep_within_is_relative_to_the_newest_backup_not_now(tz):
    z = tz("UTC")
    rs = recs(at(z, 2020, 1, 1), at(z, 2020, 1, 8, 12), at(z, 2020, 1, 9, 0, 0, 1), at(z, 2020, 1, 10, 12))
    # 2d before 2020-01-10 12:00 is 2020-01-08 12:00; that instant itself is not within
    ds = apply_policy(rs, Policy(within=parse_duration("2d")))
    assert kept(ds) == ["b002", "b003"]
    assert reasons(ds)["b003"] == ["keep-within 2d"]
    assert kept(apply_policy(rs, Policy(within=parse_duration("1w1d")))) == ["b001", "b002", "b003"]
    assert kept(apply_policy(rs, Policy(within=parse_duration("1w3d")))) == ["b000", "b001", "b002", "b003"]
    assert kept(apply_policy(rs, Policy(within=parse_duration("1y")))) == ["b000", "b001", "b002", "b003"]
    assert kept(apply_policy(rs, Policy(within=parse_duration("36h")))) == ["b002", "b003"]
    assert kept(apply_policy(rs, Policy(within=parse_duration("60h")))) == ["b001", "b002", "b003"]


def test_keep_within_months_clamp_to_the_month_end(tz):
    z = tz("UTC")
    rs = recs(at(z, 2024, 2, 29, 0, 0), at(z, 2024, 2, 29, 0, 1), at(z, 2024, 3, 31, 0, 0))
    # 2024-03-31 minus 1 month is 2024-02-29 (not March 2nd)
    assert kept(apply_policy(rs, Policy(within=parse_duration("1m")))) == ["b001", "b002"]


def test_keep_within_a_day_across_spring_forward_is_23_hours(tz):
    z = tz("Europe/Berlin")
    latest = at(z, 2024, 3, 31, 12, 0)          # CEST; the day before at 12:00 CET is 23 h earlier
    rs = recs(at(z, 2024, 3, 30, 11, 30), at(z, 2024, 3, 30, 12, 30), latest)
    assert (latest - rs[0].start_ns) / 3600e9 == 23.5   # under 24 h, yet a calendar day and more
    assert kept(apply_policy(rs, Policy(within=parse_duration("1d")))) == ["b001", "b002"]
    assert kept(apply_policy(rs, Policy(within=parse_duration("24h")))) == ["b000", "b001", "b002"]


def test_rules_combine_and_report_every_reason(tz):
    z = tz("UTC")
    rs = recs(at(z, 2023, 6, 1), at(z, 2024, 1, 1, 8), at(z, 2024, 1, 2, 8), at(z, 2024, 1, 2, 9))
    ds = apply_policy(rs, Policy(last=1, daily=2, yearly=2))
    r = reasons(ds)
    assert r["b003"] == ["keep-last", "keep-daily", "keep-yearly"]
    assert r["b002"] == []
    assert r["b001"] == ["keep-daily"]
    assert r["b000"] == ["keep-yearly"]
    assert kept(ds) == ["b000", "b001", "b003"]


def test_groups_are_decided_separately(tz):
    z = tz("UTC")
    rs = [Rec("a1", at(z, 2024, 1, 1), "alpha", "/etc"), Rec("a2", at(z, 2024, 1, 2), "alpha", "/etc"),
          Rec("b1", at(z, 2024, 1, 3), "beta", "/etc"), Rec("c1", at(z, 2024, 1, 1), "alpha", "/home"),
          Rec("c2", at(z, 2024, 1, 4), "alpha", "/home")]
    groups = plan(rs, Policy(last=1))
    assert [(g.host, g.subset) for g in groups] == [("alpha", "/etc"), ("alpha", "/home"), ("beta", "/etc")]
    assert [[d.backup.id for d in g.keep] for g in groups] == [["a2"], ["c2"], ["b1"]]
    assert [[d.backup.id for d in g.remove] for g in groups] == [["a1"], ["c1"], []]


def test_policies_that_keep_nothing_are_refused():
    with pytest.raises(PolicyError, match="keeps nothing"):
        plan([], Policy())
    with pytest.raises(PolicyError, match="keeps nothing"):
        Policy(last=0, daily=0, within=Duration()).validate()
    with pytest.raises(PolicyError):
        Policy(daily=-1).validate()
    Policy(weekly=1).validate()


@pytest.mark.parametrize("text,want", [
    ("2d", Duration(days=2)), ("1w3d", Duration(weeks=1, days=3)), ("6m", Duration(months=6)),
    ("1y", Duration(years=1)), ("1y2m3w4d5h", Duration(1, 2, 3, 4, 5)), ("36H", Duration(hours=36)),
])
def test_parse_duration(text, want):
    assert parse_duration(text) == want


@pytest.mark.parametrize("text", ["", "2", "d", "2x", "1d1d", "-1d", "1.5d", "2 days"])
def test_parse_duration_rejects(text):
    with pytest.raises(PolicyError):
        parse_duration(text)
