"""What every stage of one process shares, built once from settings: Redis, the intent bus, the
dramatiq broker with the delivery actors, the catalog (rules, segments, templates) and the counters.

A process that runs several stages (``goalhorn run all``, the demo, the tests' ``Pipeline``) builds one
:class:`Parts` and hands it to each stage; a process running one stage builds it for that stage alone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import partial

from goalhorn.bus import Bus, make_bus
from goalhorn.catalog import CatalogFile
from goalhorn.counters import PipelineCounters
from goalhorn.dispatch.stage import DeliveryStage, ProviderFactory, make_broker
from goalhorn.keys import Keys
from goalhorn.providers.factory import make_provider
from goalhorn.redis_client import Redis, make_redis
from goalhorn.settings import Settings


@dataclass(eq=False)
class Parts:
    settings: Settings
    keys: Keys
    redis: Redis
    bus: Bus
    catalog: CatalogFile
    counters: PipelineCounters
    delivery: DeliveryStage
    """The delivery actors: fanout enqueues batches to them, deliver runs them."""
    owns_bus: bool = True

    @classmethod
    def build(cls, settings: Settings, providers: ProviderFactory | None = None, *, bus: Bus | None = None) -> Parts:
        """Every shared part from ``settings``; ``providers`` replaces the configured providers (the demo's
        console, tests' fakes) and ``bus`` the configured bus (left open: it is the caller's). The catalog is read
        here, so a bad rules file fails the build."""
        keys = Keys(settings.namespace)
        catalog = CatalogFile(settings.rules_file)
        redis = make_redis(settings)
        factory = providers if providers is not None else partial(make_provider, settings)
        return cls(
            settings=settings,
            keys=keys,
            redis=redis,
            bus=bus if bus is not None else make_bus(settings),
            catalog=catalog,
            counters=PipelineCounters(redis, keys),
            delivery=DeliveryStage(settings, make_broker(settings), factory, catalog.render),
            owns_bus=bus is None,
        )

    async def aclose(self) -> None:
        self.delivery.close()
        await asyncio.to_thread(self.delivery.broker.close)
        if self.owns_bus:
            await self.bus.aclose()
        await self.redis.aclose()
