"""Token hygiene: forget devices whose provider says the token is dead.

UNREGISTERED (FCM), 410 Unregistered and BadDeviceToken (APNs) come back as ``invalid_token``.
The device is removed unless the user re-registered it meanwhile: a stored device with another
address, or (APNs 410) one added after the moment APNs says the token became invalid, stays.
"""

from __future__ import annotations

from collections.abc import Sequence

from goalhorn.models import DeliveryResult, Device
from goalhorn.preferences.store import PreferenceStore


async def prune_tokens(store: PreferenceStore, dead: Sequence[tuple[Device, DeliveryResult]]) -> tuple[int, int]:
    """Remove the devices of ``dead`` results; returns (removed, kept because re-registered)."""
    if not dead:
        return 0, 0
    current = await store.devices_of_many([device.user_id for device, _ in dead])
    removed = kept = 0
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
