"""goalhorn's chaos suite (``make chaos``, ``python -m chaos``): faults injected into a deployment of the
real commands on private services, measured against a ledger of every push expected.

It starts its own RabbitMQ node and Redis servers on free ports (:mod:`chaos.services`), so it never
touches the services other tests use; every scenario (:mod:`chaos.scenarios`) runs ``goalhorn run
fanout|deliver`` (and ``ingest``/``api`` where it needs them) and ``goalhorn sandbox`` as processes
through :class:`bench.deployment.Deployment`, injects its fault, and reports one row
(:mod:`chaos.report`): published, delivered once, lost, duplicated, dead-lettered, recovery time, and
its own targets. A missed target fails the run (exit 1).
"""
