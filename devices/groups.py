"""Channel-layer group names: one function per kind, built from ids only, never client input."""


def site_group(site_id: int) -> str:
    """Viewers of one site: its residents' dashboards and operators looking at that site."""
    return f"site.{int(site_id)}"


def fleet_group() -> str:
    """Operators' fleet view: every device's status and readings."""
    return "fleet"


def commands_group() -> str:
    """Every server process's inbox of device commands (`devices.command_inbox`), a Redis
    PUB/SUB channel like the live groups'; no browser may join it (`selectors.live_groups`)."""
    return "devices.commands"
