"""The worker's route table covers the protocol, and says where each request runs."""

from __future__ import annotations

import typing

import protocol
from worker.handlers import Handlers
from worker.lanes import Lane
from worker.routes import ROUTES


def test_every_request_type_has_a_route_and_a_handler_named_after_it() -> None:
    requests = set(typing.get_args(protocol.Request))
    assert set(ROUTES) == requests, "a request type without a route (or a route for a type outside the union)"
    for cls, route in ROUTES.items():
        tag = cls.__struct_config__.tag
        assert route.handler is getattr(Handlers, tag), f"{tag} is handled by {route.handler.__name__}, not Handlers.{tag}"


def test_lanes_are_the_documented_ones() -> None:
    lanes = {cls.__struct_config__.tag: route.lane for cls, route in ROUTES.items()}
    # PROTOCOL.md section 5: answered at once; beside the model; one job at a time.
    assert {t for t, lane in lanes.items() if lane is Lane.INLINE} == {"ping", "init", "abort", "end_reasoning", "sessions"}
    assert {t for t, lane in lanes.items() if lane is Lane.AUX} == {"tokenize", "detokenize", "count"}
    assert lanes["preload"] is Lane.PREEMPTIBLE and lanes["cleanup"] is Lane.QUEUED
    assert {t for t, route in ((c.__struct_config__.tag, r) for c, r in ROUTES.items()) if route.before_init} == {"ping", "init"}
