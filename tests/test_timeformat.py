"""Time formats whose texts sort like the times they write (syncd.config.timeformat)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from syncd.config.timeformat import guess_time_format, time_format

T = datetime(2026, 3, 1, 8, 0, 0)
MS = timedelta(milliseconds=1)


@pytest.mark.parametrize(("value", "fmt", "when"), [
    ("2026-03-01 08:00:00", "%Y-%m-%d %H:%M:%S", T),
    ("2026-03-01 08:00:00.120", "%Y-%m-%d %H:%M:%S", T + 120 * MS),
    ("2026-03-01T08:00:00", "%Y-%m-%dT%H:%M:%S", T),
    ("20260301080000", "%Y%m%d%H%M%S", T),
    ("20260301080000123", "%Y%m%d%H%M%S%f", T + 123 * MS),
    ("2026/03/01 08:00", "%Y/%m/%d %H:%M", T),
    ("2026.03.01", "%Y.%m.%d", datetime(2026, 3, 1)),
    ("2026-03-01 08:00:00,5", "%Y-%m-%d %H:%M:%S,%f", T + 500 * MS),
    ("2026/3/1 8:00", None, None),
    ("01/03/2026 08:00", None, None),
    ("2026-03-01T08:00:00+08:00", None, None),
    ("1772323200", None, None),
    ("2026-13-01 08:00:00", None, None),
])
def test_the_form_of_text_times_is_recognised_when_it_sorts_like_them(
    value: str, fmt: str | None, when: datetime | None
) -> None:
    guessed = guess_time_format(value)
    assert (guessed.text if guessed else None) == fmt
    if guessed is not None:
        assert guessed.parse(value) == when



@pytest.mark.parametrize(("fmt", "words"), [
    ("%d/%m/%Y %H:%M", "%d is out of order"),
    ("%Y-%d-%m", "%d is out of order"),
    ("%Y/%m/%d %I:%M %p", "%I does not sort like the times"),
    ("%y%m%d", "%y does not sort like the times"),
    ("%Y-%m-%d %H:%M:%S%z", "%z is not supported"),
    ("%Y年%m月%d日", "nothing may follow the last field"),
    ("x%Y%m%d", "nothing may come before the year"),
    ("%Y%m", "give at least the date"),
    ("%Y-%m-%d %H:%M.%f", "%f .* goes right after %S"),
    ("%Y-%m-%d 1%H", "digits between the fields"),
])
def test_a_format_that_does_not_sort_like_its_times_is_refused(fmt: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        time_format(fmt)


@pytest.mark.parametrize(("fmt", "value", "when"), [
    ("%Y-%m-%d %H:%M:%S", "2026-03-01 08:00:00.5", T + 500 * MS),
    ("%Y-%m-%d %H:%M:%S.%f", "2026-03-01 08:00:00", T),
    ("%Y%m%d%H%M%S", "20260301080000", T),
    ("%Y%m%d%H%M", "202603010800", T),
    ("%Y%m%d", "20260301", datetime(2026, 3, 1)),
    ("%Y/%m/%d %H:%M:%S", "2026/03/01 08:00:00.120", T + 120 * MS),
    ("%Y-%m-%d %H", "2026-03-01 08", T),
])
def test_values_are_read_in_their_format(fmt: str, value: str, when: datetime) -> None:
    parsed = time_format(fmt)
    assert parsed.matches(value)
    assert parsed.parse(value) == when


@pytest.mark.parametrize(("fmt", "value"), [
    ("%Y/%m/%d %H:%M", "2026/3/1 8:00"),  # not zero-padded
    ("%Y%m%d%H%M%S", "2026030108000"),  # a digit short
    ("%Y%m%d%H%M%S", "20261301080000"),  # month 13
    ("%Y%m%d%H%M%S", "２０２６0301080000"),  # full-width digits
    ("%Y-%m-%d %H:%M:%S", "2026-03-01 08:00:00+08:00"),
    ("%Y-%m-%d %H:%M", "2026-03-01 08:00:00"),  # seconds in a minutes format
])
def test_values_not_in_the_format_are_not_read_as_times(fmt: str, value: str) -> None:
    parsed = time_format(fmt)
    assert not parsed.matches(value)
    with pytest.raises(ValueError):
        parsed.parse(value)


def test_read_is_strict_where_parse_is_quick() -> None:
    """``parse`` (once per record) does not compare the separators; ``read`` does, so a value
    written another way, which does not sort with the others, is no time for the watermark."""
    fmt = time_format("%Y/%m/%d %H:%M")
    assert fmt.parse("2026-03-01 08:00") == datetime(2026, 3, 1, 8, 0)
    assert fmt.read("2026-03-01 08:00") is None
    assert fmt.read("2026/03/01 08:00") == datetime(2026, 3, 1, 8, 0)
    assert fmt.read("2026/13/01 08:00") is None
