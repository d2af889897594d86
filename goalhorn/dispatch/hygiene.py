"""Token hygiene: forget devices whose provider says the token is dead.

UNREGISTERED (FCM), 410 Unregistered and BadDeviceToken (APNs) come back as ``invalid_token``.
The device is removed unless the user re-registered it meanwhile: a stored device with another
address, or (APNs 410) one added after the moment APNs says the token became invalid, stays.

A Live Activity's devices are not stored devices (``goalhorn.liveactivities.audience``: ``la:...``
update, push-to-start and Android registrations, ``channel:...`` a game's broadcast channel): a dead
one is forgotten in the Live Activity registry, if it is still the one registered there.
"""

from __future__ import annotations

from collections.abc import Sequence

from goalhorn.liveactivities.registry import LiveRegistry
from goalhorn.models import DeliveryResult, Device
from goalhorn.preferences.store import PreferenceStore

LIVE_DEVICE_PREFIXES = ("la:", "channel:")
"""Device ids of a Live Activity intent's devices, which live in the Live Activity registry."""


async def prune_tokens(
    store: PreferenceStore, dead: Sequence[tuple[Device, DeliveryResult]], live: LiveRegistry | None = None
) -> tuple[int, int]:
    """Remove the devices of ``dead`` results; returns (removed, kept because re-registered)."""
    removed = kept = 0
    stored_dead = []
    for device, result in dead:
        if not device.device_id.startswith(LIVE_DEVICE_PREFIXES):
            stored_dead.append((device, result))
        elif live is not None and await live.forget_dead(device.device_id, device.user_id, device.address):
            removed += 1
        else:
            kept += 1  # registered again since (or no registry to forget it in)
    dead = stored_dead
    if not dead:
        return removed, kept
    current = await store.devices_of_many([device.user_id for device, _ in dead])
    for (device, result), devices in zip(dead, current, strict=True):
        stored = next((d for d in devices if d.device_id == device.device_id), None)
        if stored is None:
            continue
        reregistered = stored.address != device.address or (
            result.invalid_since is not None and stored.added_at is not None and stored.added_at > result.invalid_since
        )
        if reregistered:
            kept += 1
        elif await store.remove_device(device.user_id, device.device_id):
            removed += 1
    return removed, kept
