"""The admin of demand-response programmes, driven as a superuser would."""

from datetime import timedelta

import pytest

from demand_response.models import Program


@pytest.mark.parametrize(
    ("lead_time", "saved"),
    [("00:30:00", timedelta(minutes=30)), ("PT1H", timedelta(hours=1)), ("12", None)],
)
def test_a_programmes_notice_is_read_as_the_api_reads_it(admin_client, lead_time, saved):
    """Django's duration field would take "12" as 12 seconds of notice."""
    form = {"name": "Evening peak", "reward_per_kwh": "0.25", "currency": "EUR"}
    form |= {"baseline_method": "10in10", "notification_lead_time": lead_time}

    response = admin_client.post("/admin/demand_response/program/add/", form)

    program = Program.objects.filter(name="Evening peak").first()
    if saved is None:
        assert response.status_code == 200
        assert "Give a duration as ISO 8601 (PT12H) or HH:MM:SS (12:00:00)." in (
            response.content.decode()
        )
        assert program is None
    else:
        assert response.status_code == 302
        assert program.notification_lead_time == saved
