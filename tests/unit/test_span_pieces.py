"""The signed row ranges a report reads sum to exactly its spans: every quarter hour of a
span counted once in it and nowhere else, daily ranges on UTC midnights, and never more
rows a key than the span's days plus a day's worth of quarter hours at each end."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from projections.report_queries import span_pieces

QUARTER = timedelta(minutes=15)
DAY = timedelta(days=1)
ORIGIN = datetime(2026, 1, 1, tzinfo=UTC)


@given(st.lists(st.integers(min_value=0, max_value=6 * 96), min_size=2, max_size=6, unique=True))
def test_signed_pieces_cover_each_span_exactly_once(quarters: list[int]) -> None:
    bounds = [ORIGIN + n * QUARTER for n in sorted(quarters)]
    days, quarter_pieces = span_pieces(bounds)
    assert all(p.start.time() == p.end.time() == datetime.min.time() for p in days)
    for q in range(-96, 8 * 96):
        at = ORIGIN + q * QUARTER
        counted = {span: 0 for span in range(1, len(bounds))}
        for piece in (*days, *quarter_pieces):
            if piece.start <= at < piece.end:
                counted[piece.span] += piece.sign
        inside = {n: int(bounds[n - 1] <= at < bounds[n]) for n in counted}
        assert counted == inside, at
    for span, (a, b) in enumerate(itertools.pairwise(bounds), start=1):
        read = sum((p.end - p.start) / DAY for p in days if p.span == span) + sum(
            (p.end - p.start) / QUARTER for p in quarter_pieces if p.span == span
        )
        assert read <= (b - a) // DAY + 1 + 2 * 48


def test_a_span_on_utc_midnights_reads_daily_rows_only() -> None:
    days, quarters = span_pieces([ORIGIN, ORIGIN + 365 * DAY])
    assert (len(days), quarters) == (1, [])
    assert (days[0].start, days[0].end, days[0].sign) == (ORIGIN, ORIGIN + 365 * DAY, 1)
