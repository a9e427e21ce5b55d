"""The customer for people: scores explained, tier overrides, outcome feedback, erasure."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT

from router.api.auth import KEY_REQUIRED, ApiKey
from router.api.responses import BODY, KEYED, errors
from router.serving.customers import CustomerService
from schemas.api import CustomerView, ErasureAccepted, OutcomeAccepted, OutcomeRequest, Override, OverrideRequest

__all__ = ["CustomerController"]

CustomerId = Annotated[str, Parameter(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")]
DecisionId = Annotated[str, Parameter(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]
_ADMIN = frozenset({"admin"})


class CustomerController(Controller):
    path = "/v1"
    tags = ("customers",)
    opt = KEY_REQUIRED
    security = ({"ApiKey": []},)

    @get(
        "/customers/{customer_id:str}",
        operation_id="get_customer",
        summary="Customer view: every score and why (GDPR transparency)",
        responses=errors(KEYED, 503),
        opt={"scopes": frozenset({"ops", "admin"})},
        description="Scopes: ops, admin. Churn factors in plain words, CLV with its inputs, override, recent decisions.",
    )
    async def view(self, customer_id: CustomerId, customers: NamedDependency[CustomerService]) -> CustomerView:
        return await customers.view(customer_id)

    @put(
        "/customers/{customer_id:str}/override",
        operation_id="set_override",
        status_code=HTTP_200_OK,
        summary="Override the tier (with reason and expiry)",
        responses=errors(KEYED, BODY, 404, 503),
        opt={"scopes": _ADMIN},
        description="Scope: admin. Honoured by every decision until it expires; audited.",
    )
    async def set_override(
        self,
        customer_id: CustomerId,
        data: JSONBody[OverrideRequest],
        customers: NamedDependency[CustomerService],
        caller: NamedDependency[ApiKey],
    ) -> Override:
        return await customers.set_override(customer_id, data, caller.name)

    @delete(
        "/customers/{customer_id:str}/override",
        operation_id="remove_override",
        status_code=HTTP_204_NO_CONTENT,
        summary="Remove a tier override",
        responses=errors(KEYED, 404, 503),
        opt={"scopes": _ADMIN},
        description="Scope: admin. Audited.",
    )
    async def remove_override(
        self, customer_id: CustomerId, customers: NamedDependency[CustomerService], caller: NamedDependency[ApiKey]
    ) -> None:
        await customers.remove_override(customer_id, caller.name)

    @post(
        "/customers/{customer_id:str}/erasure",
        operation_id="erase_customer",
        status_code=HTTP_202_ACCEPTED,
        summary="Erase the customer (GDPR art. 17)",
        responses=errors(KEYED, BODY, 503),
        opt={"scopes": _ADMIN},
        description="Scope: admin. Produces an `erasure_requested` event (acks=all) that the consumer applies "
        "exactly once; deletes the override and the per-customer audit stream at once. Audited.",
    )
    async def erase(
        self, customer_id: CustomerId, customers: NamedDependency[CustomerService], caller: NamedDependency[ApiKey]
    ) -> ErasureAccepted:
        return await customers.erase(customer_id, caller.name)

    @post(
        "/decisions/{decision_id:str}/outcome",
        operation_id="record_outcome",
        status_code=HTTP_202_ACCEPTED,
        summary="Feed back what happened after a decision",
        responses=errors(KEYED, BODY, 404, 503),
        opt={"scopes": frozenset({"helpdesk", "ops", "admin"})},
        description="Scopes: helpdesk, ops, admin. Produces an `outcome` event keyed by customer: a training label. "
        "404 unless the decision is one of this customer's recent decisions (the customer's audit trail).",
    )
    async def outcome(
        self,
        decision_id: DecisionId,
        data: JSONBody[OutcomeRequest],
        customers: NamedDependency[CustomerService],
        caller: NamedDependency[ApiKey],
    ) -> OutcomeAccepted:
        return await customers.outcome(decision_id, data, caller.name)
