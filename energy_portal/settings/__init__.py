"""Settings, split by concern. The environment is read once, in `energy_portal.environment`."""

from energy_portal.settings.api import *  # noqa: F403
from energy_portal.settings.auth import *  # noqa: F403
from energy_portal.settings.base import *  # noqa: F403
from energy_portal.settings.database import *  # noqa: F403
from energy_portal.settings.monitoring import *  # noqa: F403
from energy_portal.settings.outages import *  # noqa: F403
from energy_portal.settings.realtime import *  # noqa: F403
from energy_portal.settings.security import *  # noqa: F403
from energy_portal.settings.tasks import *  # noqa: F403
