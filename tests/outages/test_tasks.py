"""The reconcile task: it loads the site by id and calls the service, and running it again
changes nothing."""

from decimal import Decimal

from outages import tasks
from outages.models import CreditEntry


def test_reconcile_task_settles_the_site_once(alice_home, ofgem, report):
    report(alice_home["device"], "lost", 0)
    report(alice_home["device"], "restored", 24 * 60)

    first = tasks.site_outages_reconcile.apply(args=[alice_home["site"].id]).get()
    again = tasks.site_outages_reconcile.apply(args=[alice_home["site"].id]).get()

    assert first == {"created": 1, "updated": 0, "voided": 0, "entries": 1}
    assert again == {"created": 0, "updated": 0, "voided": 0, "entries": 0}
    assert list(CreditEntry.objects.values_list("amount", "currency")) == [
        (Decimal("140.00"), "GBP")
    ]
