"""The sidecar: the HTTP API app backends and bots talk to (``create_app(settings)`` in ``app.py``)."""
