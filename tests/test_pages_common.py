"""What every page shares: styled 403, 404 and 500 pages with a reason in plain words, the
favicon, each role's navigation, and the admin's title."""

import pytest

from django.test import RequestFactory
from django.views.defaults import server_error

pytestmark = pytest.mark.django_db


def test_a_resident_on_an_operator_page_gets_a_styled_403_with_the_reason(client, alice):
    client.force_login(alice)
    response = client.get("/fleet/")
    assert response.status_code == 403
    page = response.content.decode()
    assert "This page is not open to your account" in page
    assert "The fleet page is for operators." in page  # the view's own reason
    assert "<nav>" in page and "Sign out alice" in page  # the navigation is there
    assert 'rel="icon"' in page


def test_an_unknown_address_gets_a_styled_404_naming_it(client, alice):
    client.force_login(alice)
    response = client.get("/no/such/page/")
    assert response.status_code == 404
    page = response.content.decode()
    assert "There is nothing here" in page
    assert "<code>/no/such/page/</code>" in page
    assert "Resolver404" not in page
    assert "<nav>" in page


def test_a_404_raised_with_a_reason_shows_it(client, alice):
    client.force_login(alice)
    response = client.get("/outages/site/999999/")
    assert response.status_code == 404
    assert "No such site of yours." in response.content.decode()


def test_the_500_page_renders_without_a_request_context():
    # Django renders it with no context at all: it must not need the user or the request.
    response = server_error(RequestFactory().get("/"))
    assert response.status_code == 500
    page = response.content.decode()
    assert "Something went wrong on our side" in page
    assert "Energy Portal" in page


def test_the_favicon_is_served_where_browsers_look(client):
    response = client.get("/favicon.ico")
    assert response.status_code == 302
    assert response["Location"].endswith(".svg")


@pytest.mark.parametrize(
    ("role", "shown", "hidden"),
    [
        ("alice", ["My homes", "History", "Power cuts"], ["Fleet", "Analytics"]),
        ("operator", ["Fleet", "Analytics", "Outages"], ["My homes", "Power cuts"]),
    ],
)
def test_each_role_sees_its_own_links(client, request, role, shown, hidden):
    client.force_login(request.getfixturevalue(role))
    page = client.get("/", follow=True).content.decode()
    nav = page[page.index("<nav>") : page.index("</nav>")]
    for link in shown:
        assert f">{link}</a>" in nav
    for link in hidden:
        assert f">{link}</a>" not in nav


@pytest.mark.parametrize(("role", "landing"), [("alice", "/dashboard/"), ("operator", "/fleet/")])
def test_each_role_lands_where_its_work_is(client, request, role, landing):
    client.force_login(request.getfixturevalue(role))
    assert client.get("/")["Location"] == landing


def test_the_admin_is_titled_and_lists_commands(client, admin_user):
    client.force_login(admin_user)
    page = client.get("/admin/").content.decode()
    assert "Energy Portal administration" in page
    assert "/admin/devices/command/" in page
    assert "API tokens" in page and "Auth tokens" not in page
    assert client.get("/admin/devices/command/").status_code == 200
