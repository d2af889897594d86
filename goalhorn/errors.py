"""Every error goalhorn raises on purpose derives from :class:`GoalhornError`.

::

    GoalhornError
    ├── ConfigError                 bad settings, rules or segment files
    ├── FeedError                   a feed payload that cannot be used
    │   └── PayloadRejected         one malformed payload; carries source and reason
    ├── BusError                    the intent bus
    │   ├── BusUnavailable          broker unreachable after the reconnect budget
    │   ├── PublishNotConfirmed     broker nacked, returned (unroutable) or timed out a publish
    │   ├── UnknownQueue            a queue name outside the declared topology
    │   └── Requeue                 (goalhorn.bus) a handler's "put it back, later": held, not failed
    ├── StoreError                  Redis-backed stores
    ├── AddressRefused              a webhook URL the SSRF guard refuses (not retryable)
    ├── AdminError                  an ops command's argument or target that cannot be used
    └── ProviderError               a provider failed for the whole batch (not per token)
        ├── ProviderUnavailable     5xx, connection refused, timeout: retryable
        ├── ProviderRateLimited     429; carries ``retry_after`` seconds
        ├── ProviderAuthError       credentials rejected; retryable after operator action
        └── ChannelRejected         APNs refused a channel management request (reason): not retryable
            └── ChannelLimitReached the app holds Apple's 10,000 channels (CannotCreateChannelConfig)

Vendor errors are translated at the boundary with ``raise ... from exc``. Per-token outcomes
(unregistered token, bad device token) are not errors: they are ``DeliveryResult`` values.
"""

from __future__ import annotations


class GoalhornError(Exception):
    """Root of goalhorn's errors."""


class ConfigError(GoalhornError):
    """Settings, rules or segment definitions that cannot be used."""


class AdminError(GoalhornError):
    """An ops command's argument or target that cannot be used (an unknown queue, a bad filter, a
    file that is not a drain file); the message says what to fix."""


class FeedError(GoalhornError):
    """A feed payload that cannot be used."""


class PayloadRejected(FeedError):
    """One malformed payload, with the source it came from and a short machine-readable reason."""

    def __init__(self, source: str, reason: str, detail: str = "", payload: bytes = b"") -> None:
        self.source = source
        self.reason = reason
        self.detail = detail
        self.payload = payload
        """The part of the input that was rejected, when it is smaller than what was fed."""
        super().__init__(f"{source}: {reason}" + (f" ({detail})" if detail else ""))


class BusError(GoalhornError):
    """The intent bus failed."""


class BusUnavailable(BusError):
    """The broker could not be reached within the reconnect budget."""


class PublishNotConfirmed(BusError):
    """The broker did not confirm a publish: nacked, returned as unroutable, or timed out."""


class UnknownQueue(BusError):
    """A queue name that is not part of the declared topology."""


class StoreError(GoalhornError):
    """A Redis-backed store failed."""


class AddressRefused(GoalhornError):
    """A webhook URL points somewhere the SSRF guard does not allow; retrying will not help."""


class ProviderError(GoalhornError):
    """A provider failed for a whole batch."""

    retryable = True


class ProviderUnavailable(ProviderError):
    """5xx, refused connection or timeout."""


class ProviderRateLimited(ProviderError):
    """The provider asked us to slow down; ``retry_after`` is in seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProviderAuthError(ProviderError):
    """The provider rejected our credentials."""


class ChannelRejected(ProviderError):
    """APNs refused a broadcast channel management request (``operation``: create, read, delete, list)
    with ``reason``; the same request will be refused again."""

    retryable = False

    def __init__(self, operation: str, reason: str, status: int) -> None:
        super().__init__(f"APNs channel {operation} refused: {status} {reason}")
        self.operation = operation
        self.reason = reason
        self.status = status


class ChannelLimitReached(ChannelRejected):
    """The app holds as many broadcast channels as Apple allows (10,000 per environment): delete
    finished matches' channels before creating more."""
