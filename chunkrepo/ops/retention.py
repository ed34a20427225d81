"""Retention policies: which backups `forget` keeps (pure functions, no I/O, no clock).

The semantics are restic's (`restic forget --keep-* --group-by host,paths`):

* Backups are grouped by (host, subset) and each group is decided on its own.
* Within a group, backups are walked newest first.  Each rule keep-hourly N,
  keep-daily N, ... has a counter and remembers the last bucket it kept: a
  backup whose bucket (its local hour, day, ISO week, month or year) differs
  from that rule's last kept bucket is kept by the rule while the counter lasts.
  So keep-daily 7 keeps the newest backup of each of the 7 most recent days
  that have backups.  keep-last N keeps the N newest.
* keep-within D keeps every backup newer than D before the group's newest
  backup (not before "now": a repository that stopped receiving backups does
  not empty itself).
* A backup is kept if any rule keeps it; the reasons list every rule that did.

Buckets use the local calendar of each backup's start time, as the system's
time zone (TZ) says for that instant, DST included: a backup at 00:30 local
belongs to that local day (restic#2233 was bucketing by UTC).  The one
dependency on the outside world, the conversion of an instant to local
calendar fields, is a parameter (`localtime`) so tests can inject it.
"""

import calendar
import datetime
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import ChunkrepoError

_RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


class PolicyError(ChunkrepoError):
    """A retention policy that is malformed or would delete everything."""


@dataclass(frozen=True)
class Duration:
    years: int = 0
    months: int = 0
    weeks: int = 0
    days: int = 0
    hours: int = 0

    def is_zero(self) -> bool:
        return not (self.years or self.months or self.weeks or self.days or self.hours)

    def __str__(self) -> str:
        parts = [f"{n}{u}" for n, u in ((self.years, "y"), (self.months, "m"), (self.weeks, "w"),
                                         (self.days, "d"), (self.hours, "h")) if n]
        return "".join(parts) or "0h"


_DURATION = re.compile(r"(\d+)([ymwdh])")


def parse_duration(text: str) -> Duration:
    """'1y6m', '2w3d', '36h': years, months, weeks, days, hours (restic's units plus w)."""
    s = text.strip().lower()
    if not s or _DURATION.sub("", s):
        raise PolicyError(f"bad duration {text!r}: use a number and a unit among y, m (months), "
                          f"w, d, h, e.g. 2d, 1w3d, 6m, 1y")
    got: Dict[str, int] = {}
    for n, unit in _DURATION.findall(s):
        if unit in got:
            raise PolicyError(f"bad duration {text!r}: unit {unit!r} given twice")
        got[unit] = int(n)
    return Duration(got.get("y", 0), got.get("m", 0), got.get("w", 0), got.get("d", 0), got.get("h", 0))


@dataclass(frozen=True)
class Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Optional[Duration] = None

    def keeps_nothing(self) -> bool:
        return (all(getattr(self, r) == 0 for r in _RULES)
                and (self.within is None or self.within.is_zero()))

    def validate(self) -> None:
        for r in _RULES:
            if getattr(self, r) < 0:
                raise PolicyError(f"--keep-{r} must be 0 or more")
        if self.keeps_nothing():
            raise PolicyError("this policy keeps nothing: it would delete every backup "
                              "(give a --keep-* rule with a count of at least 1, or backup ids)")

    def to_dict(self) -> dict:
        d = {r: getattr(self, r) for r in _RULES if getattr(self, r)}
        if self.within is not None and not self.within.is_zero():
            d["within"] = str(self.within)
        return d


def system_localtime(ns: int) -> datetime.datetime:
    """The local calendar (naive datetime) of an instant, per the process's TZ."""
    return datetime.datetime.fromtimestamp(ns // 1_000_000_000)


def _minus_calendar(dt: datetime.datetime, d: Duration) -> datetime.datetime:
    """dt minus years and months (day clamped to the month's end), weeks and days."""
    months = dt.year * 12 + (dt.month - 1) - (d.years * 12 + d.months)
    y, m = divmod(months, 12)
    m += 1
    day = min(dt.day, calendar.monthrange(y, m)[1])
    return dt.replace(year=y, month=m, day=day) - datetime.timedelta(weeks=d.weeks, days=d.days)


def within_cutoff_ns(latest_ns: int, d: Duration,
                     localtime: Callable[[int], datetime.datetime] = system_localtime,
                     mktime: Callable[[datetime.datetime], float] = None) -> int:
    """The instant D before latest: calendar units on the local calendar, hours on the clock.

    keep-within 1d from 12:00 on the day after a DST change reaches back to
    12:00 local of the day before (23 or 25 hours), as the calendar says."""
    wall = _minus_calendar(localtime(latest_ns), d)
    frac = latest_ns % 1_000_000_000
    if mktime is None:
        secs = int(time.mktime(wall.timetuple()))   # tm_isdst=-1: as the local zone says
    else:
        secs = int(mktime(wall))
    return (secs - d.hours * 3600) * 1_000_000_000 + frac


@dataclass
class Decision:
    backup: object                       # a BackupRecord (anything with id, host, subset, start_ns)
    keep: bool
    reasons: List[str] = field(default_factory=list)


def _buckets(dt: datetime.datetime) -> Dict[str, tuple]:
    iso = dt.isocalendar()
    return {"hourly": (dt.year, dt.month, dt.day, dt.hour),
            "daily": (dt.year, dt.month, dt.day),
            "weekly": (iso[0], iso[1]),
            "monthly": (dt.year, dt.month),
            "yearly": (dt.year,)}


def apply_policy(backups: Sequence, policy: Policy,
                 localtime: Callable[[int], datetime.datetime] = system_localtime,
                 mktime=None) -> List[Decision]:
    """Decide one group: a Decision per backup, newest first."""
    recs = sorted(backups, key=lambda r: (r.start_ns, r.id), reverse=True)
    if not recs:
        return []
    counts = {r: getattr(policy, r) for r in _RULES}
    last_bucket: Dict[str, object] = {r: None for r in _RULES}
    cutoff = None
    if policy.within is not None and not policy.within.is_zero():
        cutoff = within_cutoff_ns(recs[0].start_ns, policy.within, localtime, mktime)
    out = []
    for n, rec in enumerate(recs):
        dt = localtime(rec.start_ns)
        buckets = _buckets(dt)
        buckets["last"] = n                 # every backup is its own bucket
        reasons = []
        for r in _RULES:
            if counts[r] == 0:
                continue
            if buckets[r] != last_bucket[r]:
                last_bucket[r] = buckets[r]
                counts[r] -= 1
                reasons.append(f"keep-{r}")
        if cutoff is not None and rec.start_ns > cutoff:
            reasons.append(f"keep-within {policy.within}")
        out.append(Decision(rec, bool(reasons), reasons))
    return out


@dataclass
class GroupPlan:
    host: str
    subset: str
    decisions: List[Decision]

    @property
    def keep(self) -> list:
        return [d for d in self.decisions if d.keep]

    @property
    def remove(self) -> list:
        return [d for d in self.decisions if not d.keep]


def group_key(rec) -> Tuple[str, str]:
    return (rec.host, rec.subset)


def plan(backups: Sequence, policy: Policy,
         localtime: Callable[[int], datetime.datetime] = system_localtime, mktime=None) -> List[GroupPlan]:
    """Apply policy to every (host, subset) group separately; groups sorted by key."""
    policy.validate()
    groups: Dict[Tuple[str, str], list] = {}
    for rec in backups:
        groups.setdefault(group_key(rec), []).append(rec)
    return [GroupPlan(h, s, apply_policy(groups[(h, s)], policy, localtime, mktime))
            for h, s in sorted(groups)]


__all__ = ["Decision", "Duration", "GroupPlan", "Policy", "PolicyError", "apply_policy", "parse_duration",
           "plan", "system_localtime", "within_cutoff_ns"]
