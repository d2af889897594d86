"""FCM topics: per-team topic membership kept by goalhorn, and the subscriptions behind it."""
