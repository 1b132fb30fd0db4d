"""``/api/orders/unmatched`` and ``/api/orders/{order}/studies``: the reconciliation of
stored studies with orders over REST (see :mod:`dicomhub.services.links`). Mounted
before :mod:`dicomhub.web.orders`, whose ``/orders/{order}`` would take ``unmatched``
for an order's name."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from dicomhub.errors import InvalidRequest, NotFound
from dicomhub.model.caller import Caller
from dicomhub.model.orders import Order
from dicomhub.services.archive import Archive
from dicomhub.services.orders import OrderKey
from dicomhub.web.auth import caller_of
from dicomhub.web.errors import json_object

__all__ = ["routes"]

_MAX_BODY = 4096


def _integer(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low} and {high}")
    return value


def routes(archive: Archive) -> list[BaseRoute]:
    """The routes mounted at ``/api`` ahead of the order routes."""
    links = archive.links

    async def unmatched(request: Request) -> JSONResponse:
        offset = _integer(request, "offset", 0, 0, 10**9)
        limit = _integer(request, "limit", 100, 1, 1000)
        found, total = await run_in_threadpool(
            links.unmatched, caller_of(request), offset=offset, limit=limit
        )
        return JSONResponse(
            {"total": total, "offset": offset, "limit": limit, "studies": [s.public() for s in found]}
        )

    def _link(name: str, study_uid: str, caller: Caller) -> Order:
        try:
            key = OrderKey(order_id=archive.orders.order(OrderKey(accession_number=name), caller).order_id)
        except NotFound:
            key = OrderKey(order_id=name)
        return links.link_by_hand(study_uid, key, caller)

    async def link_study(request: Request) -> JSONResponse:
        body = await json_object(request, _MAX_BODY)
        unknown = sorted(set(body) - {"study_instance_uid"})
        if unknown:
            raise InvalidRequest(f"unknown field(s) {', '.join(unknown)} (known: study_instance_uid)")
        uid = body.get("study_instance_uid")
        if not isinstance(uid, str) or not uid.strip():
            raise InvalidRequest("'study_instance_uid' is required (a string)")
        caller = caller_of(request)
        order = await run_in_threadpool(_link, str(request.path_params["order"]), uid.strip(), caller)
        studies = await run_in_threadpool(links.linked_studies, OrderKey(order_id=order.order_id), caller)
        return JSONResponse({**order.public(), "studies": [s.public() for s in studies]})

    return [
        Route("/orders/unmatched", unmatched, methods=["GET"]),
        Route("/orders/{order}/studies", link_study, methods=["POST"]),
    ]
