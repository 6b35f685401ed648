"""Tag lookups must not stop before the object they look for, whatever order a service lists in."""

from __future__ import annotations

from types import SimpleNamespace

from batchpipe.providers.openai_batch import CLOCK_SLACK_SECONDS, OLD_STREAK, _since

INTENT = 1_800_000_000.0
OLD = INTENT - CLOCK_SLACK_SECONDS - 1000


def listing(times: list[float]) -> list[SimpleNamespace]:
    return [SimpleNamespace(id=f"obj{i}", created_at=t) for i, t in enumerate(times)]


def test_newest_first_stops_after_a_run_of_old_objects():
    items = listing([INTENT + 5, INTENT + 1] + [OLD - i for i in range(100)])
    seen = list(_since(iter(items), INTENT))
    assert [o.id for o in seen] == ["obj0", "obj1"]


def test_oldest_first_is_read_to_the_end():
    # A service that lists oldest first: the new object comes after many old ones.
    items = listing([OLD + i for i in range(3 * OLD_STREAK)] + [INTENT + 1])
    seen = list(_since(iter(items), INTENT))
    assert [o.id for o in seen] == [f"obj{3 * OLD_STREAK}"]


def test_clock_slack_keeps_objects_a_little_older_than_the_intent():
    items = listing([INTENT - CLOCK_SLACK_SECONDS + 1])
    assert len(list(_since(iter(items), INTENT))) == 1
