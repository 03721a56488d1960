# The shape of a Monitoring Query Language (MQL) trigger, as OCI autoscaling's CUSTOM_QUERY rules take
# it, checked on the control node before anything is created: OCI would refuse a malformed query
# (400 InvalidParameter) only when the autoscaling configuration is made, after the billable parts.
#
#   metric[interval]{dimension = "value", ...}.grouping().statistic() > threshold
#
# interval 1m-60m or 1h; dimension filters optional (=, !=, =~ with a quoted value); grouping() or
# groupBy(dim, ...) optional, before or after the statistic; statistic one of OCI's; the trigger is
# a comparison with a number (a threshold alarm: autoscaling fires on true).
from __future__ import annotations

import re

NAMESPACE = re.compile(r"^[a-z][a-z0-9_]*[a-z0-9]$")
STATISTICS = ("mean", "sum", "count", "max", "min", "rate", "last", "avg", "percentile")
_PARTS = [
    ("a metric name (a letter, then letters, digits, . _ - $)", re.compile(r"\s*([A-Za-z][A-Za-z0-9_.$-]*)")),
    ("an interval in brackets, 1m to 60m or 1h, e.g. [1m]", re.compile(r"\[(\d+)([mh])\]")),
]
_DIMS = re.compile(r'\{\s*(?:[A-Za-z][A-Za-z0-9_.-]*\s*(?:=~|!=|=)\s*"[^"]*"\s*(?:,\s*|(?=\})))+\}')
_GROUP = re.compile(r"\.(?:grouping\(\)|groupBy\(\s*[A-Za-z][A-Za-z0-9_.-]*(?:\s*,\s*[A-Za-z][A-Za-z0-9_.-]*)*\s*\))")
_STAT = re.compile(r"\.(?:(mean|sum|count|max|min|rate|last|avg)\(\)|percentile\(\s*(?:0?\.\d+|0|1)\s*\))")
_TRIGGER = re.compile(r"\s*(>=|<=|==|!=|>|<)\s*(-?\d+(?:\.\d+)?)\s*$")


def namespace_error(namespace: str) -> str | None:
    if not NAMESPACE.match(namespace or ""):
        return (f"namespace {namespace!r} must be lower case letters, digits and underscores, start with a letter "
                f"and not end with an underscore")
    if namespace.startswith(("oci_", "oracle_")):
        return f"namespace {namespace!r} may not start with oci_ or oracle_ (reserved for OCI's own metrics)"
    return None


def query_error(query: str) -> str | None:
    """None for a well-formed threshold query, else what is wrong and where."""
    q, pos = query or "", 0

    def fail(what):
        return f"MQL query {query!r}: expected {what} at character {pos + 1} ({q[pos:pos + 20]!r})"

    for what, rx in _PARTS:
        m = rx.match(q, pos)
        if not m:
            return fail(what)
        if rx.pattern.startswith(r"\["):
            n, unit = int(m.group(1)), m.group(2)
            if not ((unit == "m" and 1 <= n <= 60) or (unit == "h" and n == 1)):
                return f"MQL query {query!r}: interval [{n}{unit}] must be 1m to 60m, or 1h"
        pos = m.end()
    m = _DIMS.match(q, pos)
    if q.startswith("{", pos) and not m:
        return fail('dimension filters like {pool = "name"} (quoted values, separated by commas)')
    pos = m.end() if m else pos
    group = _GROUP.match(q, pos)
    pos = group.end() if group else pos
    m = _STAT.match(q, pos)
    if not m:
        return fail(f"a statistic: .{'(), .'.join(STATISTICS[:-1])}() or .percentile(0.9)")
    pos = m.end()
    if not group and (group := _GROUP.match(q, pos)):
        pos = group.end()
    if not _TRIGGER.match(q, pos):
        return fail("a trigger: a comparison (>, >=, <, <=, ==, !=) with a number, e.g. > 0.5")
    return None
