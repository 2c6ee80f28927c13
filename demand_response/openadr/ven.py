"""The VEN process: one OpenLEADR client per enabled `VtnConnection`, each supervised (restarted
with a growing pause when it fails, and when its configuration changes).

OpenLEADR (`openleadr.OpenADRClient`) registers, polls, parses and answers; this subclass adds
what it lacks and the portal needs:

- every event goes through `services.vtn_event_receive` (idempotent on the connection and the
  VTN event id, in the database, so a restarted VEN neither loses nor doubles an event);
- implied cancellation: an event missing from a distribution (or an empty distribution)
  cancels ours (`services.vtn_events_implied_cancel`); OpenLEADR keeps such events forever;
- an answer that changes later (a resident opts out mid-event) is sent at the next poll as an
  `oadrCreateOpt` for the event and an unsolicited `oadrCreatedEvent` with the new opt (VTNs
  built on OpenLEADR have no EiOpt service: the second reaches them);
- an event whose handling failed is asked for again (`oadrRequestEvent`) instead of staying
  answered optOut in OpenLEADR's memory;
- `TELEMETRY_USAGE` (the participating sites' aggregate power, W) and `TELEMETRY_STATUS` (how
  many of their devices are online) are offered at 1 s to 1 h sampling; the VTN picks the rate;
- the connection's state and last poll are written to the database for the admin and pages."""

import asyncio
import logging
import os
import tempfile
import time
from datetime import timedelta

import certifi
from asgiref.sync import sync_to_async
from openleadr import OpenADRClient, enums, objects, utils

from django.db import close_old_connections
from django.utils import timezone

from demand_response.models import VenState, VtnConnection, VtnMessageKind
from demand_response.openadr import selectors, services

logger = logging.getLogger(__name__)
# OpenLEADR logs every message at INFO (and some with arguments logging cannot format).
logging.getLogger("openleadr").setLevel(logging.WARNING)

RESOURCE_ID = "portal-fleet"
USAGE_SPECIFIER, USAGE_RID = "portal-telemetry-usage", "fleet-power-w"
STATUS_SPECIFIER, STATUS_RID = "portal-telemetry-status", "fleet-devices-online"
SAMPLING = objects.SamplingRate(
    min_period=timedelta(seconds=1), max_period=timedelta(hours=1), on_change=False
)
# While events of the connection are live, the VEN asks for the full list (oadrRequestEvent) at
# least this often: a VTN that answers polls with nothing (OpenLEADR's does once its last event
# is gone) still has its removals seen as implied cancellations.
RECONCILE_EVERY_S = 30.0
REPORT_LOG_EVERY_S = 60.0  # a report's values are kept in the log at most this often
WATCH_S = 2.0  # how often a running VEN checks that its connection is unchanged
DISCOVER_S = 5.0  # how often the process looks for connections enabled or added
BACKOFF_MAX_S = 60.0


def _db(func):
    """Run a database function from the event loop in a thread, closing stale connections."""

    def call(*args, **kwargs):
        close_old_connections()
        return func(*args, **kwargs)

    return sync_to_async(call, thread_sensitive=True)


class VenFailed(RuntimeError):
    pass


class PortalVen(OpenADRClient):
    """An OpenLEADR VEN bound to one `VtnConnection`."""

    def __init__(self, connection: VtnConnection):
        self.connection_id = connection.pk
        self.poll_interval = timedelta(seconds=connection.poll_interval_s)
        self._files = tempfile.TemporaryDirectory(prefix="openadr-ven-")
        cert = self._file("cert.pem", connection.client_cert)
        key = self._file("key.pem", connection.client_key)
        # OpenLEADR needs a CA file whenever it has a client certificate: the public CAs when
        # the connection names none.
        ca = self._file("ca.pem", connection.vtn_ca_cert) or (
            certifi.where() if connection.client_cert else None
        )
        super().__init__(
            ven_name=connection.ven_name,
            vtn_url=connection.vtn_url,
            cert=cert if cert and key else None,
            key=key if cert and key else None,
            ca_file=ca,
            vtn_fingerprint=connection.vtn_fingerprint or None,
            ven_id=connection.ven_id or None,
            show_fingerprint=False,
        )
        self.resync = False
        self._report_logged: dict[str, float] = {}
        self._reconciled = time.monotonic()
        self.add_handler("on_event", self._handle_event)
        self.add_handler("on_update_event", self._handle_event)
        self.add_report(
            callback=self._usage,
            resource_id=RESOURCE_ID,
            measurement="power_real",
            unit="W",
            scale="none",
            report_name=enums.REPORT_NAME.TELEMETRY_USAGE,
            report_specifier_id=USAGE_SPECIFIER,
            r_id=USAGE_RID,
            sampling_rate=SAMPLING,
            report_duration=timedelta(hours=1),
        )
        self.add_report(
            callback=self._status,
            resource_id=RESOURCE_ID,
            report_name=enums.REPORT_NAME.TELEMETRY_STATUS,
            report_specifier_id=STATUS_SPECIFIER,
            r_id=STATUS_RID,
            sampling_rate=SAMPLING,
            report_duration=timedelta(hours=1),
        )
        # OpenLEADR's create_report collects the requested r_ids of all report requests in one
        # list, so each report asks for the other's r_id too: answer those with no value.
        self.report_callbacks[(USAGE_SPECIFIER, STATUS_RID)] = list
        self.report_callbacks[(STATUS_SPECIFIER, USAGE_RID)] = list

    def _file(self, name: str, text: str) -> str | None:
        if not text:
            return None
        path = os.path.join(self._files.name, name)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as file:
            file.write(text)
        return path

    async def _state(self, state: str, detail: str = "", **fields) -> None:
        await _db(services.connection_state_set)(
            connection_id=self.connection_id, state=state, detail=detail, **fields
        )

    # --- registration and polling ------------------------------------------------------------

    async def create_party_registration(self, *args, **kwargs):
        await self._state(VenState.REGISTERING)
        result = await super().create_party_registration(*args, **kwargs)
        if self.registration_id:
            # The connection's interval, not the VTN's suggestion (the VTN's is usually longer).
            self.poll_frequency = self.poll_interval
            await self._state(
                VenState.REGISTERED,
                ven_id=self.ven_id or "",
                registration_id=self.registration_id,
                polled=True,
            )
        else:
            await self._state(VenState.FAILED, "The VTN did not register the VEN.")
        return result

    async def poll(self):
        try:
            response_type, payload = await super().poll()
        except TypeError:  # OpenLEADR returns a bare None for an empty HTTP body
            response_type, payload = None, {}
        if response_type is None:
            await self._state(VenState.UNREACHABLE, f"No answer to oadrPoll from {self.vtn_url}.")
            return response_type, payload
        await self._state(VenState.REGISTERED, polled=True)
        if response_type == "oadrDistributeEvent" and not payload.get("events"):
            await _db(services.vtn_events_implied_cancel)(
                connection_id=self.connection_id, present=[]
            )
        try:
            await self.send_changed_answers()
            if self.resync:
                self.resync = False
                await self.sync_events()
            elif time.monotonic() - self._reconciled >= max(
                RECONCILE_EVERY_S, self.poll_interval.total_seconds()
            ):
                await self.reconcile()
        except Exception:
            logger.exception("VEN %s: answers, resync or reconcile failed", self.ven_name)
        return response_type, payload

    async def reconcile(self) -> None:
        """Ask for the VTN's full list of events and cancel ours that are no longer in it. A
        VTN's plain OK answer (OpenLEADR's VTN sends one instead of an empty distribution)
        means none; an error, or no answer, means nothing."""
        self._reconciled = time.monotonic()
        if not await _db(services.vtn_live_event_ids)(connection_id=self.connection_id):
            return
        answer = await self.request_event()
        response_type, payload = answer if answer else (None, {})
        if response_type == "oadrDistributeEvent":
            present = [
                str(e["event_descriptor"]["event_id"])
                for e in payload.get("events") or []
                if e.get("event_descriptor", {}).get("event_id") is not None
            ]
        elif response_type == "oadrResponse" and (payload.get("response") or {}).get(
            "response_code"
        ) in (200, "200"):
            present = []
        else:
            return
        await _db(services.vtn_events_implied_cancel)(
            connection_id=self.connection_id, present=present
        )

    # --- events ------------------------------------------------------------------------------

    async def _on_event(self, message):
        self._request_id = message.get("request_id") or ""
        present = [
            str(e["event_descriptor"]["event_id"])
            for e in message.get("events", [])
            if e.get("event_descriptor", {}).get("event_id") is not None
        ]
        try:
            await _db(services.vtn_events_implied_cancel)(
                connection_id=self.connection_id, present=present
            )
        except Exception:
            logger.exception("VEN %s: implied cancellation failed", self.ven_name)
        await super()._on_event(message)

    async def _handle_event(self, event: dict) -> str:
        try:
            return await _db(services.vtn_event_receive)(
                connection_id=self.connection_id,
                event=event,
                request_id=getattr(self, "_request_id", ""),
            )
        except Exception:
            # Not taken (the database failed): optOut for now, and forgotten, so it is taken
            # again when asked for at the next poll. Not raised: OpenLEADR would answer optOut
            # for every other event of the message too.
            logger.exception("VEN %s: event could not be taken; will ask again", self.ven_name)
            event_id = event.get("event_descriptor", {}).get("event_id")
            utils.pop_by(self.received_events, "event_descriptor.event_id", event_id)
            self.resync = True
            return "optOut"

    async def send_changed_answers(self) -> None:
        """Tell the VTN of every answer that changed since it was given."""
        changed = await _db(services.vtn_answers_changed)(connection_id=self.connection_id)
        for known in changed:
            reason = (
                enums.OPT_REASON.PARTICIPATING
                if known.opt_type == "optIn"
                else enums.OPT_REASON.NOT_PARTICIPATING
            )
            opt_id = await self.create_opt(
                opt_type=known.opt_type,
                opt_reason=reason,
                targets=[objects.Target(ven_id=self.ven_id)],
                event_id=known.vtn_event_id,
                modification_number=known.modification_number,
            )
            await _db(services.vtn_message_log)(
                connection_id=self.connection_id,
                kind=VtnMessageKind.CREATE_OPT,
                vtn_event_id=known.pk,
                opt_type=known.opt_type,
                ok=bool(opt_id),
                detail=f"{known.vtn_event_id} #{known.modification_number}"
                + ("" if opt_id else ": not acknowledged (the VTN may have no EiOpt service)"),
            )
            ok = await self._created_event(known)
            await _db(services.vtn_message_log)(
                connection_id=self.connection_id,
                kind=VtnMessageKind.CREATED_EVENT,
                vtn_event_id=known.pk,
                opt_type=known.opt_type,
                ok=ok,
                detail=f"{known.vtn_event_id} #{known.modification_number} (changed answer)",
            )

    async def _created_event(self, known) -> bool:
        request_id = known.request_id or utils.generate_id()
        message = self._create_message(
            "oadrCreatedEvent",
            response={"response_code": 200, "response_description": "OK", "request_id": request_id},
            event_responses=[
                {
                    "response_code": 200,
                    "response_description": "OK",
                    "request_id": request_id,
                    "event_id": known.vtn_event_id,
                    "modification_number": known.modification_number,
                    "opt_type": known.opt_type,
                }
            ],
            ven_id=self.ven_id,
        )
        response_type, payload = await self._perform_request("EiEvent", message)
        code = (payload or {}).get("response", {}).get("response_code")
        return response_type is not None and code in (None, 200)

    # --- reports -----------------------------------------------------------------------------

    async def _telemetry(self):
        def read():
            connection = VtnConnection.objects.select_related("program").get(pk=self.connection_id)
            return selectors.connection_telemetry(connection=connection, now=timezone.now())

        return await _db(read)()

    async def _report(self, name: str, value: float, detail: str) -> float:
        """The value for the report, kept in the message log at most once a minute per report
        (a VTN may ask for one a second)."""
        now = time.monotonic()
        if now - self._report_logged.get(name, -REPORT_LOG_EVERY_S) < REPORT_LOG_EVERY_S:
            return value
        self._report_logged[name] = now
        await _db(services.vtn_message_log)(
            connection_id=self.connection_id,
            kind=VtnMessageKind.REPORT,
            report_name=name,
            value=value,
            detail=detail,
        )
        return value

    async def _usage(self) -> float:
        telemetry = await self._telemetry()
        return await self._report(
            "TELEMETRY_USAGE", round(telemetry.power_w, 3), f"{telemetry.sites} sites, W"
        )

    async def _status(self) -> float:
        telemetry = await self._telemetry()
        return await self._report(
            "TELEMETRY_STATUS",
            float(telemetry.devices_online),
            f"{telemetry.devices_online} of {telemetry.devices} devices online",
        )

    async def stop(self):
        try:
            if self.client_session is not None:
                await super().stop()
            elif self.scheduler.running:
                self.scheduler.shutdown()
        finally:
            self._files.cleanup()


async def _connection(connection_id: int) -> VtnConnection | None:
    return await _db(
        lambda: VtnConnection.objects.select_related("program").filter(pk=connection_id).first()
    )()


async def _wait(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds` or until `stop`; whether to stop."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True


async def run_connection(connection_id: int, stop: asyncio.Event) -> None:
    """Run the connection's VEN until `stop` or the connection is disabled or deleted;
    restarted (with 1, 2, 4 ... 60 s between tries) when it fails, and when its configuration
    changes."""
    backoff = 1.0
    while not stop.is_set():
        connection = await _connection(connection_id)
        if connection is None or not connection.enabled:
            if connection is not None:
                await _db(services.connection_state_set)(
                    connection_id=connection_id, state=VenState.STOPPED, detail="Disabled."
                )
            return
        ven, failure = None, None
        try:
            ven = PortalVen(connection)
            await ven.run()
            if not ven.registration_id:
                raise VenFailed("The VTN did not register the VEN (or could not be reached).")
            backoff = 1.0
            while not await _wait(stop, WATCH_S):
                current = await _connection(connection_id)
                if current is None or not current.enabled:
                    break
                if current.updated_at != connection.updated_at:
                    logger.info("VEN %s: configuration changed, restarting", connection.ven_name)
                    break
        except Exception as exc:
            logger.exception("VEN %s failed", connection.ven_name)
            failure = exc
        finally:
            if ven is not None:  # its timers stop, its key files go
                await ven.stop()
        if failure is not None:
            await _db(services.connection_state_set)(
                connection_id=connection_id,
                state=VenState.FAILED,
                detail=f"{failure.__class__.__name__}: {failure}; retrying in {backoff:.0f} s",
            )
            if await _wait(stop, backoff):
                break
            backoff = min(backoff * 2, BACKOFF_MAX_S)
    await _db(services.connection_state_set)(
        connection_id=connection_id, state=VenState.STOPPED, detail="The VEN process stopped."
    )


def _enabled_ids(only: int | None) -> list[int]:
    connections = VtnConnection.objects.filter(enabled=True)
    if only is not None:
        connections = connections.filter(pk=only)
    return list(connections.order_by("pk").values_list("pk", flat=True))


async def run_all(stop: asyncio.Event, *, only: int | None = None) -> None:
    """Run a VEN for every enabled connection (or only `only`), starting those enabled or
    added later; with none configured, wait for one."""
    tasks: dict[int, asyncio.Task] = {}
    while True:
        for connection_id in await _db(_enabled_ids)(only):
            task = tasks.get(connection_id)
            if task is None or task.done():
                tasks[connection_id] = asyncio.create_task(run_connection(connection_id, stop))
        if await _wait(stop, DISCOVER_S):
            break
    await asyncio.gather(*tasks.values(), return_exceptions=True)
