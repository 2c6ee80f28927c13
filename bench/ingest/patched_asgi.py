"""The portal's ASGI application with the proposed server change patched in (see patched.py)."""

from bench.ingest.patched import patch_server
from energy_portal.asgi import application  # sets Django up first

patch_server()
__all__ = ["application"]
