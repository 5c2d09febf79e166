-- Every SQL statement pushgres runs, each under a "-- name: <query_name>" header.
-- Loaded once by pushgres.db.queries; Python never builds SQL by concatenation.

-- name: migrations_table
CREATE TABLE IF NOT EXISTS pushgres.schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)

-- name: create_schema
CREATE SCHEMA IF NOT EXISTS pushgres

-- name: migrate_lock
SELECT pg_advisory_lock(hashtext('pushgres.migrate'))

-- name: migrate_unlock
SELECT pg_advisory_unlock(hashtext('pushgres.migrate'))

-- name: applied_versions
SELECT version FROM pushgres.schema_migrations ORDER BY version

-- name: record_migration
INSERT INTO pushgres.schema_migrations (version, name) VALUES ($1, $2)

-- name: has_migrations_table
SELECT to_regclass('pushgres.schema_migrations') IS NOT NULL

-- name: schema_version
SELECT coalesce(max(version), 0) FROM pushgres.schema_migrations

-- name: claim_batch
WITH c AS MATERIALIZED (
    SELECT id FROM pushgres.queue
    WHERE app = $1 AND send_at <= now()
    ORDER BY priority DESC, send_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
DELETE FROM pushgres.queue q USING c
WHERE q.id = c.id
RETURNING q.id, q.app, q.platform, q.device_token, q.payload::text AS payload, q.priority,
          q.push_type, q.collapse_id, q.expires_at, q.topic, q.send_at, q.dedupe_key,
          q.max_attempts, q.metadata::text AS metadata, q.attempts, q.last_reason, q.enqueued_at,
          (q.expires_at IS NOT NULL AND q.expires_at <= now()) AS is_expired,
          -- A token the registry knows is judged by its state there; any other by the dead
          -- tokens the providers named. Either way only since before the row was enqueued.
          coalesce(
              (SELECT d.state IN ('invalid', 'uninstalled', 'unregistered')
                      AND d.state_changed_at <= q.enqueued_at
               FROM pushgres.devices d
               WHERE d.app = q.app AND d.token = q.device_token),
              EXISTS (SELECT 1 FROM pushgres.invalid_tokens t
                      WHERE t.app = q.app AND t.device_token = q.device_token
                        AND t.invalidated_at <= q.enqueued_at)) AS is_token_invalid

-- name: queue_apps
-- The distinct apps in the queue, by a loose index scan (one probe per app, not a table scan).
WITH RECURSIVE apps AS (
    (SELECT app FROM pushgres.queue ORDER BY app LIMIT 1)
    UNION ALL
    SELECT (SELECT q.app FROM pushgres.queue q WHERE q.app > apps.app ORDER BY q.app LIMIT 1)
    FROM apps WHERE apps.app IS NOT NULL
)
SELECT app FROM apps WHERE app IS NOT NULL

-- name: claim_unknown_app
-- Rows of an app no live daemon serves, once they are older than the grace period.
WITH c AS MATERIALIZED (
    SELECT id FROM pushgres.queue
    WHERE app = $1 AND enqueued_at <= now() - make_interval(secs => $2)
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
DELETE FROM pushgres.queue q USING c
WHERE q.id = c.id
RETURNING q.id, q.app, q.platform, q.device_token, q.payload::text AS payload, q.priority,
          q.push_type, q.collapse_id, q.expires_at, q.topic, q.send_at, q.dedupe_key,
          q.max_attempts, q.metadata::text AS metadata, q.attempts, q.last_reason, q.enqueued_at,
          false AS is_expired, false AS is_token_invalid

-- name: invalidate_tokens
-- Dead tokens, in the transaction that writes their results: recorded for direct sends, and
-- the registry's devices marked invalid with the provider's timestamp -- unless the device
-- was registered again after that timestamp (Apple: such a token is valid again).
WITH t AS (
    SELECT DISTINCT ON (app, device_token) app, device_token, reason, provider_timestamp
    FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
        AS t(app, device_token, reason, provider_timestamp)
), recorded AS (
    INSERT INTO pushgres.invalid_tokens (app, device_token, reason, provider_timestamp)
    SELECT app, device_token, reason, provider_timestamp FROM t
    ON CONFLICT (app, device_token) DO UPDATE
    SET reason = excluded.reason,
        provider_timestamp = excluded.provider_timestamp,
        invalidated_at = now()
), dead AS (
    UPDATE pushgres.devices d
    SET state = 'invalid', state_reason = t.reason,
        invalidated_at = coalesce(t.provider_timestamp, now()), state_changed_at = now()
    FROM t
    WHERE d.app = t.app AND d.token = t.device_token AND d.state <> 'invalid'
      AND d.last_seen_at <= coalesce(t.provider_timestamp, now())
    RETURNING d.app, d.token, d.user_id, t.reason, t.provider_timestamp
)
INSERT INTO pushgres.device_events (app, token, event, user_id, detail)
SELECT app, token, 'invalidated', user_id,
       jsonb_build_object('reason', reason, 'provider_timestamp', provider_timestamp)
FROM dead

-- name: requeue
-- The arrays in pushgres.db.columns.REQUEUE_COLUMNS order.
INSERT INTO pushgres.queue (id, app, platform, device_token, payload, priority, push_type,
                            collapse_id, expires_at, topic, send_at, dedupe_key, max_attempts,
                            metadata, attempts, last_reason, enqueued_at)
SELECT id, app, platform, device_token, payload::jsonb, priority, push_type, collapse_id,
       expires_at, topic, now() + make_interval(secs => delay_s), dedupe_key, max_attempts,
       metadata::jsonb, attempts, last_reason, enqueued_at
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::smallint[],
            $7::text[], $8::text[], $9::timestamptz[], $10::text[], $11::float8[], $12::text[],
            $13::smallint[], $14::text[], $15::smallint[], $16::text[], $17::timestamptz[])
    AS t(id, app, platform, device_token, payload, priority, push_type, collapse_id, expires_at,
         topic, delay_s, dedupe_key, max_attempts, metadata, attempts, last_reason, enqueued_at)

-- name: take_back_stragglers
-- Rows whose send outlived their batch wait in the queue under a lease (send_at past their
-- deadline). When a straggler's answer comes, its row is taken back — unless the lease ran
-- out and another claim holds it now (SKIP LOCKED): then that claim decides it.
-- The attempts must match the lease too: a row that was claimed and put back since is not ours.
WITH c AS MATERIALIZED (
    SELECT q.id FROM pushgres.queue q
    JOIN unnest($1::bigint[], $2::smallint[]) AS t(id, attempts)
        ON q.id = t.id AND q.attempts = t.attempts
    FOR UPDATE OF q SKIP LOCKED
)
DELETE FROM pushgres.queue q USING c
WHERE q.id = c.id
RETURNING q.id

-- name: enqueue_rows
INSERT INTO pushgres.queue (id, app, platform, device_token, payload, priority, push_type,
                            collapse_id, expires_at, topic, send_at, dedupe_key, max_attempts,
                            metadata)
SELECT id, app, platform, device_token, payload::jsonb, priority, push_type, collapse_id,
       expires_at, topic, coalesce(send_at, now()), dedupe_key, max_attempts, metadata::jsonb
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::smallint[],
            $7::text[], $8::text[], $9::timestamptz[], $10::text[], $11::timestamptz[],
            $12::text[], $13::smallint[], $14::text[])
    WITH ORDINALITY
    AS t(id, app, platform, device_token, payload, priority, push_type, collapse_id, expires_at,
         topic, send_at, dedupe_key, max_attempts, metadata, ord)
ORDER BY ord

-- name: reserve_ids
SELECT nextval(pg_get_serial_sequence('pushgres.queue', 'id')) FROM generate_series(1, $1)

-- name: dedupe_lookup
SELECT d.dedupe_key, d.id
FROM unnest($1::text[]) AS k(dedupe_key)
JOIN pushgres.dedupe_keys d ON d.app = $2 AND d.dedupe_key = k.dedupe_key

-- name: inserted_ids
SELECT id FROM pushgres.queue WHERE id = ANY($1::bigint[])

-- name: outcome
SELECT id, app, platform, status, provider_status, reason, provider_id, attempts,
       enqueued_at, finished_at, metadata::text AS metadata
FROM pushgres.outcome($1::bigint[])

-- name: notify_enqueued
SELECT pg_notify('pushgres_enqueued', '')

-- name: queue_depth
SELECT app, platform, count(*) AS depth,
       count(*) FILTER (WHERE send_at <= now()) AS ready,
       extract(epoch FROM now() - min(enqueued_at))::float8 AS oldest_age_s
FROM pushgres.queue
GROUP BY app, platform
ORDER BY app

-- name: queue_sample
-- The metrics' per-app gauges, on a timer: rows queued, rows due now, age of the oldest due row.
SELECT app, count(*) AS depth,
       count(*) FILTER (WHERE send_at <= now()) AS ready,
       coalesce(extract(epoch FROM now() - min(send_at) FILTER (WHERE send_at <= now())), 0)::float8
           AS oldest_ready_age_s
FROM pushgres.queue
GROUP BY app

-- name: recent_outcomes
SELECT app, status, coalesce(reason, '') AS reason, count(*) AS n
FROM pushgres.results
WHERE finished_at > now() - make_interval(secs => $1)
GROUP BY app, status, reason
ORDER BY app, n DESC

-- name: ensure_partitions
SELECT pushgres.ensure_result_partitions($1)

-- name: drop_partitions
SELECT pushgres.drop_old_result_partitions($1)

-- name: prune_dedupe_keys
DELETE FROM pushgres.dedupe_keys
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM pushgres.dedupe_keys
    WHERE created_at < now() - make_interval(days => $1)
    LIMIT 10000))

-- name: maintenance_lock
SELECT pg_try_advisory_xact_lock(hashtext('pushgres.maintenance'))

-- name: ping
SELECT 1

-- name: heartbeat
INSERT INTO pushgres.daemons AS d (id, host, pid, apps)
VALUES ($1, $2, $3, $4::text[])
ON CONFLICT (id) DO UPDATE SET apps = excluded.apps, heartbeat_at = now()

-- name: forget_daemon
DELETE FROM pushgres.daemons WHERE id = $1

-- name: prune_daemons
DELETE FROM pushgres.daemons WHERE heartbeat_at < now() - interval '1 day'

-- name: served_apps
-- The apps some live daemon serves (heartbeat within $1 seconds).
SELECT DISTINCT unnest(apps) AS app FROM pushgres.daemons
WHERE heartbeat_at > now() - make_interval(secs => $1)

-- name: results_by_reason
-- Outcomes of the ids lo..hi by status and reason (the demo's and benchmark's summary).
SELECT status, coalesce(reason, '') AS reason, count(*) AS n
FROM pushgres.results WHERE id BETWEEN $1 AND $2
GROUP BY status, reason ORDER BY n DESC

-- name: results_done
SELECT count(*) FROM pushgres.results WHERE id BETWEEN $1 AND $2

-- name: results_timing
-- First and last finish, and the enqueue-to-sent latency quantiles, of the ids lo..hi.
SELECT min(finished_at) AS first, max(finished_at) AS last,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - enqueued_at))
           AS p50,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - enqueued_at))
           AS p99
FROM pushgres.results WHERE id BETWEEN $1 AND $2 AND status = 'sent'

-- name: results_sent_tokens
SELECT platform, device_token, count(*) AS n FROM pushgres.results
WHERE id BETWEEN $1 AND $2 AND status = 'sent' GROUP BY platform, device_token

-- name: register_device
SELECT state, event FROM pushgres.register_device(
    $1, $2, $3, user_id => $4, installation_id => $5, environment => $6, timezone => $7,
    locale => $8, app_version => $9, attributes => $10::jsonb,
    registered_at => coalesce($11::timestamptz, now()))

-- name: identify_device
SELECT pushgres.identify_device($1, $2, $3)

-- name: logout_device
SELECT pushgres.logout_device($1, $2)

-- name: rotate_device_token
SELECT pushgres.rotate_device_token($1, $2, $3)

-- name: unregister_devices
SELECT pushgres.unregister_devices($1, $2::text[])

-- name: user_devices
SELECT app, platform, token, user_id, installation_id, environment, timezone, locale,
       app_version, attributes::text AS attributes, state, state_reason, invalidated_at,
       registered_at, last_seen_at, state_changed_at
FROM pushgres.devices
WHERE app = $1 AND user_id = $2
ORDER BY last_seen_at DESC

-- name: device
SELECT app, platform, token, user_id, installation_id, environment, timezone, locale,
       app_version, attributes::text AS attributes, state, state_reason, invalidated_at,
       registered_at, last_seen_at, state_changed_at
FROM pushgres.devices
WHERE app = $1 AND token = $2

-- name: device_history
SELECT at, event, user_id, detail::text AS detail
FROM pushgres.device_events
WHERE app = $1 AND token = $2
ORDER BY id
