"""Progress that does not lie: no ETA without evidence, then the rate so far."""

from __future__ import annotations

from batchpipe.ops.common import estimate_eta


def test_no_eta_before_a_minute_or_before_five_percent():
    assert estimate_eta(1000, 0, started=0, now=3600) is None
    assert estimate_eta(1000, 40, started=0, now=3600) is None  # 4%: a burst could still be ahead
    assert estimate_eta(1000, 500, started=0, now=30) is None  # too early to tell
    assert estimate_eta(1000, 500, started=None, now=3600) is None  # nothing submitted yet


def test_eta_is_the_rate_so_far():
    assert estimate_eta(1000, 250, started=0, now=600) == 1800
    assert estimate_eta(1000, 1000, started=0, now=600) is None  # finished: nothing left to estimate
