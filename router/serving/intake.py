"""Events from systems that do not speak Kafka: ``POST /v1/events``.

A batch of the contract's events is validated item by item, then produced to the events topic
keyed by customer, in the order sent, and answered 202 only once the broker acknowledged every
one (acks from all in-sync replicas). The consumer applies them like any other event.

All or nothing at validation: one invalid item and nothing is produced; the 400 lists every
invalid item by index with what is wrong (the field, never the value). A client then fixes or
drops exactly those and sends the batch again, and "202" keeps meaning "all of it is in Kafka".
Production itself is not atomic (no Kafka transactions here): when the broker fails midway the
answer is 503 and some events may already be in; sending the batch again is safe because the
consumer skips an ``event_id`` it has applied.
"""

from __future__ import annotations

import time

import msgspec

from router.errors import RouterError, without_values
from router.ops import metrics
from router.serving.publisher import EventPublisher
from router.settings import ApiSettings, StreamSettings
from schemas.api import EventProblem, EventsAccepted, EventsRejected, ProducedEvent
from schemas.events import CustomerEvent, ErasureRequested

__all__ = ["BatchRejected", "EventIntake"]


class _Envelope(msgspec.Struct, forbid_unknown_fields=True):
    events: list[msgspec.Raw]


_envelope = msgspec.json.Decoder(_Envelope)
# Lax about number forms only where JSON Schema is (30002.0 is an integer; "7" is taken too): the
# events are re-encoded before they are produced, so the topic sees the canonical form.
_event = msgspec.json.Decoder(CustomerEvent, strict=False)


class BatchRejected(RouterError):
    """Some items of a batch are invalid; answered with :class:`schemas.api.EventsRejected`."""

    status_code = 400
    code = "bad_request"

    def __init__(self, problems: list[EventProblem], message: str | None = None) -> None:
        if message is None:
            shown = "; ".join(f"events[{p.index}]: {p.problem}" for p in problems[:5])
            more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
            message = f"{len(problems)} invalid event(s), nothing produced: {shown}{more}"
        super().__init__(message)
        self.problems = problems

    def body(self) -> EventsRejected:
        return EventsRejected(self.status_code, self.code, self.message, self.problems)


class EventIntake:
    def __init__(self, publisher: EventPublisher, api: ApiSettings, stream: StreamSettings) -> None:
        self.publisher = publisher
        self.batch_max = api.events_batch_max
        self.max_future_s = stream.max_future_s

    def validate(self, body: bytes) -> list[CustomerEvent]:
        """The batch's events, or :class:`BatchRejected` naming every invalid item."""
        try:
            raw = _envelope.decode(body).events
        except msgspec.ValidationError as exc:
            raise _bad(f"body: {without_values(str(exc))}") from None
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            raise _bad('body: not valid JSON (expected {"events": [...]})') from None
        if not raw:
            raise _bad("body: events must hold at least one event")
        if len(raw) > self.batch_max:
            raise _bad(f"body: at most {self.batch_max} events per request (got {len(raw)}); split the batch")
        horizon = time.time() + self.max_future_s
        events: list[CustomerEvent] = []
        problems: list[EventProblem] = []
        for i, item in enumerate(raw):
            try:
                event = _event.decode(item)
            except msgspec.ValidationError as exc:
                problems.append(EventProblem(i, without_values(str(exc))))
                continue
            except (msgspec.DecodeError, RecursionError):
                problems.append(EventProblem(i, "not valid JSON"))
                continue
            if isinstance(event, ErasureRequested):
                problems.append(
                    EventProblem(i, "erasure_requested is an admin action: POST /v1/customers/{id}/erasure")
                )
            elif event.occurred_at.timestamp() > horizon:
                problems.append(
                    EventProblem(
                        i, f"occurred_at lies more than {self.max_future_s} s in the future - at `$.occurred_at`"
                    )
                )
            else:
                events.append(event)
        if problems:
            metrics.INBOUND_EVENTS.labels("api", "rejected").inc(len(problems))
            raise BatchRejected(problems)
        return events

    async def ingest(self, body: bytes) -> EventsAccepted:
        """Validate, produce, and answer once Kafka has every event."""
        events = self.validate(body)
        await self.publisher.publish_many(events)
        metrics.INBOUND_EVENTS.labels("api", "produced").inc(len(events))
        produced = [ProducedEvent(e.event_id, str(type(e).__struct_config__.tag)) for e in events]
        return EventsAccepted(accepted=len(produced), events=produced)


def _bad(message: str) -> BatchRejected:
    return BatchRejected([], message)
