"""Dependencies as ``Annotated`` aliases, so route signatures stay short."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from services.bus import EventLog
from services.gateway.feeds import JobFeeds
from services.gateway.projection import ProjectionWaiter
from services.llm.base import Provider
from services.settings import Settings
from services.store import ReadModels


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _event_log(request: Request) -> EventLog:
    return request.app.state.event_log


def _models(request: Request) -> ReadModels:
    return request.app.state.models


def _provider(request: Request) -> Provider:
    return request.app.state.provider


def _feeds(request: Request) -> JobFeeds:
    return request.app.state.feeds


def _waiter(request: Request) -> ProjectionWaiter:
    return request.app.state.waiter


SettingsDep = Annotated[Settings, Depends(_settings)]
EventLogDep = Annotated[EventLog, Depends(_event_log)]
ModelsDep = Annotated[ReadModels, Depends(_models)]
ProviderDep = Annotated[Provider, Depends(_provider)]
FeedsDep = Annotated[JobFeeds, Depends(_feeds)]
WaiterDep = Annotated[ProjectionWaiter, Depends(_waiter)]
