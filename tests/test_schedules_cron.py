"""Cron expressions of retraining schedules: the standard 5 fields, and a clear refusal of anything that
would not run when its author expects (a backwards range ran every minute)."""

from __future__ import annotations

import pytest
import requests

from tests.api_process import running_api
from tests.system import ADMIN_KEY
from workers.schedules import parse_cron


@pytest.mark.parametrize("expression, minutes, hours, weekdays", [
    ("0 3 * * *", {0}, {3}, set(range(7))),
    ("*/15 1-5/2 * * mon-fri", {0, 15, 30, 45}, {1, 3, 5}, {1, 2, 3, 4, 5}),
    ("5,35 22-23 1,15 jan-jun sun", {5, 35}, {22, 23}, {0}),
    ("59 23 31 12 6", {59}, {23}, {6}),
])
def test_standard_expressions_run_when_they_say(expression, minutes, hours, weekdays):
    schedule = parse_cron(expression)
    assert (schedule.minute, schedule.hour, schedule.day_of_week) == (minutes, hours, weekdays)


@pytest.mark.parametrize("expression, problem", [
    ("1-0 * * * *", "the minute field '1-0' has the range '1-0', which runs backwards"),
    ("0 23-1 * * *", "the hour field '23-1' has the range '23-1', which runs backwards"),
    ("0 0 * * fri-mon", "the day-of-week field 'fri-mon' has the range 'fri-mon', which runs backwards"),
    ("0 0 20-10/2 * *", "the day-of-month field '20-10/2' has the range '20-10', which runs backwards"),
    ("*/0 * * * *", "the minute field '*/0' has step '0': a step must be a whole number from 1 to 60"),
    ("0 0-12/0 * * *", "the hour field '0-12/0' has step '0'"),
    ("60 * * * *", "the minute field '60' has '60': values must be in 0-59"),
    ("0 24 * * *", "the hour field '24' has '24': values must be in 0-23"),
    ("0 0 0 * *", "the day-of-month field '0' has '0': values must be in 1-31"),
    ("0 0 * 13 *", "the month field '13' has '13': values must be in 1-12 or jan-dec"),
    ("0 0 * * 7", "the day-of-week field '7' has '7': values must be in 0-6 or sun-sat"),
    ("5/15 * * * *", "the minute field '5/15' has '5/15': a step goes after * or a range"),
    ("0 0 * * monday", "the day-of-week field 'monday' has 'monday': values must be numbers in 0-6 or sun-sat"),
    ("0 3 * *", "must have 5 fields"),
])
def test_expressions_that_would_not_run_as_written_are_refused_naming_the_field(expression, problem):
    with pytest.raises(ValueError) as err:
        parse_cron(expression)
    assert problem in str(err.value)


def test_the_api_refuses_a_schedule_whose_range_runs_backwards(tmp_path, redis_url):
    schedule = {"model": "nightly", "dataset_prefix": "datasets/nightly", "cron": "1-0 * * * *"}
    with running_api(tmp_path, redis_url) as api:
        response = requests.post(f"{api['base']}/v1/schedules", json=schedule, headers={"X-API-Key": ADMIN_KEY},
                                 timeout=30)
        assert response.status_code == 400, response.text
        assert "the minute field '1-0'" in response.json()["error"]
        assert "runs backwards" in response.json()["error"]
        listed = requests.get(f"{api['base']}/v1/schedules", headers={"X-API-Key": ADMIN_KEY}, timeout=30)
        assert listed.json()["schedules"] == []
