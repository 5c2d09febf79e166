-- pushgres schema, version 6: finding devices that went quiet.
--
-- Maintenance marks an app's active devices stale once they have not been seen for the app's
-- stale_after_days (FCM also treats a token as expired on Android after 270 days without
-- contact: "Best practices for FCM registration token management"). This index finds them
-- without reading the app's other devices.

CREATE INDEX devices_active_seen ON pushgres.devices (app, last_seen_at) WHERE state = 'active';
