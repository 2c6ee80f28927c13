"""A real OpenADR 2.0b VTN for the tests: OpenLEADR's `OpenADRServer` on a local port, driven
the way a utility's VTN is: it registers the VEN, distributes its full list of events on the
next poll after any change (so an event removed from the list is an implied cancellation),
takes answers (`oadrCreatedEvent`) and opts (`oadrCreateOpt`, a service OpenLEADR's server
does not mount: added here), requests both telemetry reports at 1 s and keeps what arrives.
Nothing is mocked: every message crosses HTTP as OpenADR XML and is schema-validated."""

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from openleadr import OpenADRServer, objects
from openleadr.service import OptService, handler

PREFIX = "/OpenADR2/Simple/2.0b"
VEN_ID = "ven-under-test"


class _RecordingOptService(OptService):
    def __init__(self, vtn_id: str, sink: list):
        super().__init__(vtn_id)
        self.sink = sink

    @handler("oadrCreateOpt")
    async def create_opt(self, payload):
        self.sink.append(payload)
        return "oadrCreatedOpt", {"opt_id": payload["opt_id"]}


@dataclass
class Vtn:
    port: int
    vtn_id: str = "TEST-VTN"
    report_every: timedelta = timedelta(seconds=1)
    events: dict[str, objects.Event] = field(default_factory=dict)
    answers: list[tuple[str, str]] = field(default_factory=list)  # (event id, opt type)
    opts: list[dict] = field(default_factory=list)  # oadrCreateOpt payloads
    reports: list[tuple[str, datetime, float]] = field(default_factory=list)  # (measurement, ...)
    offered: list[tuple[str, str, str]] = field(default_factory=list)  # measurement, unit, scale
    registrations: int = 0
    changed: bool = False

    def __post_init__(self):
        self.server = OpenADRServer(
            vtn_id=self.vtn_id,
            http_host="127.0.0.1",
            http_port=self.port,
            requested_poll_freq=timedelta(seconds=1),
            show_fingerprint=False,
            ven_lookup=None,
        )
        self.server.add_handler("on_create_party_registration", self._register)
        self.server.add_handler("on_created_event", self._created_event)
        self.server.add_handler("on_register_report", self._register_report)
        self.server.add_handler("on_request_event", self._request_event)
        self.server.add_handler("on_poll", self._poll)
        opt_service = _RecordingOptService(self.vtn_id, self.opts)
        self.server.app.router.add_post(f"{PREFIX}/EiOpt", opt_service.handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PREFIX}"

    async def start(self):
        await self.server.run()

    async def stop(self):
        await self.server.stop()

    # --- what the VTN operator does ---------------------------------------------------------

    def add_event(
        self,
        event_id: str,
        *,
        start: datetime,
        duration: timedelta,
        level: float | None = 2,
        kw: float | None = None,
        targets: list[dict] | None = None,
        startafter: timedelta | None = None,
    ) -> objects.Event:
        signals = []
        if level is not None:
            signals.append(self._signal("SIMPLE", "level", start, duration, level))
        if kw is not None:
            signals.append(self._signal("LOAD_DISPATCH", "delta", start, duration, kw))
        period = objects.ActivePeriod(dtstart=start, duration=duration)
        if startafter is not None:
            period.tolerance = {"startafter": startafter}
        event = objects.Event(
            event_descriptor=objects.EventDescriptor(
                event_id=event_id,
                modification_number=0,
                market_context="oadr://utility.example/winter",
                event_status="far",
            ),
            event_signals=signals,
            targets=targets or [objects.Target(ven_id=VEN_ID)],
            active_period=period,
        )
        self.events[event_id] = event
        self.changed = True
        return event

    @staticmethod
    def _signal(name, kind, start, duration, value) -> objects.EventSignal:
        return objects.EventSignal(
            intervals=[objects.Interval(dtstart=start, duration=duration, signal_payload=value)],
            signal_name=name,
            signal_type=kind,
            signal_id=f"{name.lower()}-1",
        )

    def modify(self, event_id: str, *, duration: timedelta | None = None, level=None):
        event = self.events[event_id]
        if duration is not None:
            event.active_period.duration = duration
            for signal in event.event_signals:
                for interval in signal.intervals:
                    interval.duration = duration
        if level is not None:
            for signal in event.event_signals:
                if signal.signal_name == "SIMPLE":
                    for interval in signal.intervals:
                        interval.signal_payload = level
        event.event_descriptor.modification_number += 1
        self.changed = True

    def cancel(self, event_id: str):
        event = self.events[event_id]
        event.event_descriptor.event_status = "cancelled"
        event.event_descriptor.modification_number += 1
        self.changed = True

    def drop(self, event_id: str, *, announce: bool = True):
        """Leave the event out of the next distribution: an implied cancellation. Not
        `announce`d, the polls say nothing of it (as OpenLEADR's own VTN once its last event is
        gone): only the VEN's asking for the list (oadrRequestEvent) finds it missing."""
        del self.events[event_id]
        self.changed = self.changed or announce

    # --- OpenLEADR handlers -----------------------------------------------------------------

    def _register(self, registration):
        self.registrations += 1
        return VEN_ID, f"reg-{self.registrations}"

    def _created_event(self, ven_id, event_id, opt_type):
        self.answers.append((event_id, opt_type))

    def _register_report(
        self, ven_id, resource_id, measurement, unit, scale, min_sampling_interval,
        max_sampling_interval,
    ):  # fmt: skip
        self.offered.append((measurement, unit, scale))

        def received(values, name=measurement):
            self.reports.extend((name, when, value) for when, value in values)

        return received, self.report_every

    def _request_event(self, ven_id):
        return list(self.events.values()) or None

    def _poll(self, ven_id):
        if not self.changed:
            return None
        self.changed = False
        return "oadrDistributeEvent", {"events": list(self.events.values())}
