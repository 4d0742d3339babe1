"""Next elapses of systemd calendar expressions, computed by the real ``systemd-analyze`` from
fixed base times (it needs no running systemd), in UTC and in a zone with daylight saving."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from nsbackup.errors import ValidationFailed
from nsbackup.runs.calendar import next_elapse, next_elapses, parse_elapses


def at(text: str) -> float:
    """Epoch seconds of a UTC time ``YYYY-MM-DD HH:MM:SS``."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()


# Monday 2024-01-01 00:00:00 UTC, and a Wednesday afternoon.
MONDAY = at("2024-01-01 00:00:00")
WEDNESDAY = at("2024-01-03 12:34:56")


@pytest.fixture()
def utc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")


@pytest.mark.usefixtures("utc")
@pytest.mark.parametrize(
    ("expression", "base", "expected"),
    [
        ("daily", MONDAY, ["2024-01-02 00:00:00", "2024-01-03 00:00:00"]),
        ("daily", WEDNESDAY, ["2024-01-04 00:00:00", "2024-01-05 00:00:00"]),
        ("*-*-* 01:00:00", MONDAY, ["2024-01-01 01:00:00", "2024-01-02 01:00:00"]),
        ("*-*-* 01:00:00", WEDNESDAY, ["2024-01-04 01:00:00", "2024-01-05 01:00:00"]),
        ("Mon *-*-* 02:00:00", MONDAY, ["2024-01-01 02:00:00", "2024-01-08 02:00:00"]),
        ("Mon *-*-* 02:00:00", WEDNESDAY, ["2024-01-08 02:00:00", "2024-01-15 02:00:00"]),
        ("*-*-* *:*:00/10", MONDAY, ["2024-01-01 00:00:10", "2024-01-01 00:00:20"]),
        ("*-*-* *:*:00/10", WEDNESDAY, ["2024-01-03 12:35:00", "2024-01-03 12:35:10"]),
        # NS8's UI forms: hourly at :30, monthly on the 15th
        ("*-*-* *:30:00", WEDNESDAY, ["2024-01-03 13:30:00", "2024-01-03 14:30:00"]),
        ("*-*-15 03:00:00", WEDNESDAY, ["2024-01-15 03:00:00", "2024-02-15 03:00:00"]),
    ],
)
def test_next_elapses_from_a_fixed_base(expression: str, base: float, expected: list[str]) -> None:
    assert next_elapses(expression, base, 2) == [at(t) for t in expected]
    assert next_elapse(expression, base) == at(expected[0])


@pytest.mark.usefixtures("utc")
def test_an_elapse_is_strictly_after_the_base() -> None:
    ten = at("2024-01-01 00:00:10")
    assert next_elapse("*-*-* *:*:00/10", ten) == at("2024-01-01 00:00:20")
    assert next_elapse("*-*-* *:*:00/10", ten - 0.5) == ten
    assert next_elapse("*-*-* *:*:00/10", ten + 0.5) == at("2024-01-01 00:00:20")


def test_the_local_time_zone_and_daylight_saving(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Europe/Rome")
    # 01:00 in Rome is 00:00 UTC in winter (CET) and 23:00 UTC the day before in summer.
    sunday = at("2023-12-31 12:00:00")
    assert next_elapse("*-*-* 01:00:00", sunday) == at("2024-01-01 00:00:00")
    july = at("2024-07-01 12:00:00")
    assert next_elapse("*-*-* 01:00:00", july) == at("2024-07-01 23:00:00")
    # A zone in the expression wins over the process's.
    assert next_elapse("*-*-* 01:00:00 UTC", sunday) == at("2024-01-01 01:00:00")
    # Across the spring change (31 March 2024, 02:00 CET -> 03:00 CEST): 01:00 local both days.
    assert next_elapses("*-*-* 01:00:00", at("2024-03-30 12:00:00"), 2) == [
        at("2024-03-31 00:00:00"),
        at("2024-03-31 23:00:00"),
    ]
    monkeypatch.setenv("TZ", "UTC")
    assert next_elapse("*-*-* 01:00:00", sunday) == at("2024-01-01 01:00:00")


@pytest.mark.usefixtures("utc")
def test_an_expression_without_future_elapse() -> None:
    assert next_elapses("2020-01-01 00:00:00", MONDAY, 3) == []
    assert next_elapse("2020-01-01 00:00:00", MONDAY) is None
    # A finite expression gives what it has.
    assert next_elapses("2024-01-01,02 05:00:00", MONDAY, 5) == [
        at("2024-01-01 05:00:00"),
        at("2024-01-02 05:00:00"),
    ]


@pytest.mark.usefixtures("utc")
@pytest.mark.parametrize("expression", ["bogus", "*-*-* 25:00:00", "Mon Tue Wed", "", "daily\n"])
def test_an_invalid_expression_is_a_clear_validation_error(expression: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        next_elapse(expression, MONDAY)
    error = caught.value.errors[0]
    assert (error.field, error.error) == ("schedule", "bad_schedule_format")
    assert caught.value.exit_code == 2
    assert repr(expression) in str(caught.value)
    if expression.strip() and "\n" not in expression:
        assert "Failed to parse calendar specification" in str(caught.value)


def test_parse_reads_the_utc_lines_when_the_zone_is_not_utc() -> None:
    # What systemd-analyze 252 printed with TZ=Europe/Rome for two expressions' first one.
    text = """\
  Original form: daily
Normalized form: *-*-* 00:00:00
    Next elapse: Tue 2024-01-02 00:00:00 CET
       (in UTC): Mon 2024-01-01 23:00:00 UTC
       From now: 2 years 10 months ago
       Iter. #2: Wed 2024-01-03 00:00:00 CET
       (in UTC): Tue 2024-01-02 23:00:00 UTC
       From now: 2 years 10 months ago
"""
    assert parse_elapses(text) == [at("2024-01-01 23:00:00"), at("2024-01-02 23:00:00")]
    utc = (
        "    Next elapse: Mon 2024-01-01 00:00:10 UTC\n"
        "       Iter. #2: Mon 2024-01-01 00:00:20 UTC\n"
    )
    assert parse_elapses(utc) == [at("2024-01-01 00:00:10"), at("2024-01-01 00:00:20")]
    assert parse_elapses("Normalized form: 2020-01-01 00:00:00\n    Next elapse: never\n") == []
