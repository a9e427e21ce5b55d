"""Events in over HTTP, for systems that do not speak Kafka."""

from __future__ import annotations

from litestar import Controller, Request, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_202_ACCEPTED

from router.api.auth import KEY_REQUIRED
from router.api.bodies import read_body
from router.api.responses import errors
from router.serving.intake import EventIntake
from router.settings import Settings
from schemas.api import EventsAccepted, EventsRejected

__all__ = ["EventController"]


class EventController(Controller):
    path = "/v1"
    tags = ("events",)
    opt = KEY_REQUIRED
    security = ({"ApiKey": []},)

    @post(
        "/events",
        operation_id="send_events",
        status_code=HTTP_202_ACCEPTED,
        summary="Send a batch of customer events",
        opt={"scopes": frozenset({"events"})},
        request_max_body_size=None,  # read_body applies ROUTER_API_EVENTS_MAX_BODY_BYTES
        responses={
            **errors((401, 403, 413, 415, 429, 503)),
            400: ResponseSpec(
                data_container=EventsRejected,
                description="Invalid batch: nothing was produced; `items` names each invalid event by index "
                "and what is wrong (never the value)",
                generate_examples=False,
            ),
        },
        description='Scope: events. Body `{"events": [...]}`: events of the contract (`schemas/events.py`, as on '
        "the Kafka topic) except `erasure_requested`. Each is validated; if any is invalid nothing is produced "
        "(400 lists them all). Otherwise all are produced to the events topic keyed by `customer_id`, in order, "
        "and the answer is 202 once Kafka acknowledged every one (acks=all); 503 if it did not, and sending the "
        "batch again is safe (the consumer skips event ids it has applied).",
    )
    async def send_events(
        self, request: Request[object, object, State], intake: NamedDependency[EventIntake]
    ) -> EventsAccepted:
        settings: Settings = request.app.state.settings
        return await intake.ingest(await read_body(request, settings.api.events_max_body_bytes))
