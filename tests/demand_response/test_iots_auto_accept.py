"""`dr_events_auto_accept` of an imported `iots-right.json` sets the site's auto-response: the
shipped sample (true) makes the site accept every event, so its invitations are answered at once;
a file turning it to false hands the answers back to the resident; a person's own choice stands
until the file says something new."""

import copy
import json
from io import StringIO

import pytest

from django.core.management import call_command

from demand_response import services
from demand_response.models import Invitation, SiteAutoResponse
from telemetry.polling import iots_import
from tests.fixtures.sample_files import SAMPLES


@pytest.fixture
def sample() -> dict:
    return json.loads((SAMPLES / "iots-right.json").read_bytes())


def auto_mode(site) -> str | None:
    auto = SiteAutoResponse.objects.filter(site=site).first()
    return None if auto is None else auto.mode


@pytest.mark.django_db
def test_importing_the_sample_accepts_every_event_for_the_site(
    sample, alice_home, schedule, tmp_path
):
    # given the shipped sample, which says dr_events_auto_accept: true
    site = alice_home["site"]
    assert sample["app"]["dr_events_auto_accept"] is True
    path = tmp_path / "iots-right.json"
    path.write_text(json.dumps(sample))
    out = StringIO()
    # when it is imported as an operator does
    call_command("import_iots", str(path), "--site", str(site.pk), stdout=out)
    # then the site accepts all events, says so, and its next invitation is answered at once
    assert auto_mode(site) == "accept_all"
    assert "demand-response events accepted automatically" in out.getvalue()
    event = schedule(target_sites=[site.pk])
    invitation = Invitation.objects.get(event=event, site=site)
    assert (invitation.status, invitation.answered_by) == ("opted_in", "auto")


@pytest.mark.django_db
def test_a_file_turning_auto_accept_off_hands_the_answers_back_to_the_resident(sample, alice_home):
    site = alice_home["site"]
    iots_import(site=site, data=sample)
    off = copy.deepcopy(sample)
    off["app"]["dr_events_auto_accept"] = False

    report = iots_import(site=site, data=off)

    assert auto_mode(site) is None
    assert any("no longer accepted automatically" in line for line in report.updated)


@pytest.mark.django_db
def test_reimporting_the_same_file_leaves_a_residents_later_choice_alone(sample, alice_home):
    # given the file imported, then the resident chose to accept up to level 1
    site = alice_home["site"]
    iots_import(site=site, data=sample)
    services.site_auto_response_set(site_id=site.pk, mode="accept_up_to_level", max_level=1)
    # when the same file is imported again
    report = iots_import(site=site, data=sample)
    # then nothing changed
    assert not report.changed
    assert auto_mode(site) == "accept_up_to_level"
    # and a file saying false removes only an accept-all, never a person's narrower choice
    off = copy.deepcopy(sample)
    off["app"]["dr_events_auto_accept"] = False
    iots_import(site=site, data=off)
    assert auto_mode(site) == "accept_up_to_level"
