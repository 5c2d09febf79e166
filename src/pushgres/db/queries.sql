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
-- The app's transactional rows first (their own small index, across shards), then the bulk
-- rows of one shard ($3), as many as the first leave room for. The registry's device for each token
-- (if any) is joined once: its state, its user and its time zone (the guardrails count caps
-- per person and judge quiet hours in its time zone); and the attempt pushgres.delivered says
-- the provider accepted already, in a batch that never committed (then it is not sent again).
WITH t AS MATERIALIZED (
    SELECT id, device_token FROM pushgres.queue
    WHERE app = $1 AND transactional AND send_at <= now()
    ORDER BY priority DESC, send_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), b10 AS MATERIALIZED (
    -- The bulk lane, one priority at a time: within a priority the due rows come first in the
    -- index and the scan stops at the first future one. (Across priorities one scan would read
    -- every future row of the higher priority -- a campaign held back by quiet hours -- before
    -- reaching the due rows of the next.)
    SELECT id, device_token FROM pushgres.queue
    WHERE app = $1 AND shard = $3 AND priority = 10 AND NOT transactional AND send_at <= now()
    ORDER BY send_at, id
    LIMIT $2 - (SELECT count(*) FROM t)
    FOR UPDATE SKIP LOCKED
), b5 AS MATERIALIZED (
    SELECT id, device_token FROM pushgres.queue
    WHERE app = $1 AND shard = $3 AND priority = 5 AND NOT transactional AND send_at <= now()
    ORDER BY send_at, id
    LIMIT $2 - (SELECT count(*) FROM t) - (SELECT count(*) FROM b10)
    FOR UPDATE SKIP LOCKED
), b1 AS MATERIALIZED (
    SELECT id, device_token FROM pushgres.queue
    WHERE app = $1 AND shard = $3 AND priority = 1 AND NOT transactional AND send_at <= now()
    ORDER BY send_at, id
    LIMIT $2 - (SELECT count(*) FROM t) - (SELECT count(*) FROM b10) - (SELECT count(*) FROM b5)
    FOR UPDATE SKIP LOCKED
), dj AS MATERIALIZED (
    -- What pushgres.delivered says the provider accepted in batches that are not in flight:
    -- a batch in flight holds its key's lock (lock_batch) until it commits or rolls back, and
    -- no claim can reach its rows meanwhile, so its deliveries are not even unpacked. Usually
    -- none are left; after a kill, that batch's few thousand ids.
    SELECT u.id, max(u.attempt) AS attempt
    FROM pushgres.delivered j, unnest(j.ids, j.attempts) AS u(id, attempt)
    WHERE pg_try_advisory_xact_lock_shared(j.batch)
    GROUP BY u.id
), c AS (
    -- The outer LIMIT tells the planner what the computed one above hides: at most $2 rows,
    -- so the DELETE below probes the primary key instead of hashing the whole queue.
    (SELECT id, device_token FROM t
     UNION ALL SELECT id, device_token FROM b10
     UNION ALL SELECT id, device_token FROM b5
     UNION ALL SELECT id, device_token FROM b1) LIMIT $2
)
DELETE FROM pushgres.queue q
USING c LEFT JOIN LATERAL (
    -- One primary-key probe per row, whatever the registry's size.
    SELECT r.state, r.state_changed_at, r.user_id, r.timezone FROM pushgres.devices r
    WHERE r.app = $1 AND r.token = c.device_token
) d ON true
LEFT JOIN dj ON dj.id = c.id
WHERE q.id = c.id
RETURNING q.id, q.app, q.platform, q.device_token, q.payload::text AS payload, q.priority,
          q.push_type, q.collapse_id, q.expires_at, q.topic, q.send_at, q.dedupe_key,
          q.max_attempts, q.metadata::text AS metadata, q.message::text AS message, q.attempts,
          q.last_reason, q.enqueued_at, q.user_id, q.group_id, q.probe, q.category, q.timezone,
          q.local_send_at, q.transactional,
          (q.expires_at IS NOT NULL AND q.expires_at <= now()) AS is_expired,
          -- A token the registry knows is judged by its state there; any other by the dead
          -- tokens the providers named. Either way only since before the row was enqueued.
          coalesce(
              d.state IN ('invalid', 'uninstalled', 'unregistered')
                  AND d.state_changed_at <= q.enqueued_at,
              EXISTS (SELECT 1 FROM pushgres.invalid_tokens t
                      WHERE t.app = q.app AND t.device_token = q.device_token
                        AND t.invalidated_at <= q.enqueued_at)) AS is_token_invalid,
          d.user_id AS device_user, d.timezone AS device_timezone,
          dj.attempt AS delivered_attempt

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
          q.max_attempts, q.metadata::text AS metadata, q.message::text AS message, q.attempts,
          q.last_reason, q.enqueued_at, q.user_id, q.group_id, q.probe, q.category, q.timezone,
          q.local_send_at, q.transactional, false AS is_expired, false AS is_token_invalid,
          NULL::text AS device_user, NULL::text AS device_timezone,
          NULL::smallint AS delivered_attempt

-- name: invalidate_tokens
-- Dead tokens, in the transaction that writes their results: recorded for direct sends, and
-- the registry's devices marked invalid with the provider's timestamp -- unless the device
-- was registered again after that timestamp (Apple: such a token is valid again). A dead
-- answer to an uninstall probe marks the device uninstalled instead.
WITH t AS (
    SELECT DISTINCT ON (app, device_token) app, device_token, reason, provider_timestamp, probe
    FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::boolean[])
        AS t(app, device_token, reason, provider_timestamp, probe)
    ORDER BY app, device_token, probe  -- a notification's answer wins over a probe's
), recorded AS (
    INSERT INTO pushgres.invalid_tokens (app, device_token, reason, provider_timestamp)
    SELECT app, device_token, reason, provider_timestamp FROM t
    ON CONFLICT (app, device_token) DO UPDATE
    SET reason = excluded.reason,
        provider_timestamp = excluded.provider_timestamp,
        invalidated_at = now()
), dead AS (
    UPDATE pushgres.devices d
    SET state = CASE WHEN t.probe THEN 'uninstalled' ELSE 'invalid' END, state_reason = t.reason,
        invalidated_at = coalesce(t.provider_timestamp, now()), state_changed_at = now()
    FROM t
    WHERE d.app = t.app AND d.token = t.device_token AND d.state NOT IN ('invalid', 'uninstalled')
      AND d.last_seen_at <= coalesce(t.provider_timestamp, now())
    RETURNING d.app, d.token, d.user_id, t.reason, t.provider_timestamp, t.probe
)
INSERT INTO pushgres.device_events (app, token, event, user_id, detail)
SELECT app, token, CASE WHEN probe THEN 'uninstalled' ELSE 'invalidated' END, user_id,
       jsonb_build_object('reason', reason, 'provider_timestamp', provider_timestamp)
FROM dead

-- name: requeue
-- The arrays in pushgres.db.columns.REQUEUE_COLUMNS order.
INSERT INTO pushgres.queue (id, app, platform, device_token, payload, priority, push_type,
                            collapse_id, expires_at, topic, send_at, dedupe_key, max_attempts,
                            metadata, message, attempts, last_reason, enqueued_at, user_id,
                            group_id, probe, category, timezone, local_send_at, transactional)
SELECT id, app, platform, device_token, payload::jsonb, priority, push_type, collapse_id,
       expires_at, topic, now() + make_interval(secs => delay_s), dedupe_key, max_attempts,
       metadata::jsonb, message::jsonb, attempts, last_reason, enqueued_at, user_id, group_id,
       probe, category, timezone, local_send_at, transactional
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::smallint[],
            $7::text[], $8::text[], $9::timestamptz[], $10::text[], $11::float8[], $12::text[],
            $13::smallint[], $14::text[], $15::text[], $16::smallint[], $17::text[],
            $18::timestamptz[], $19::text[], $20::bigint[], $21::boolean[], $22::text[],
            $23::text[], $24::timestamp[], $25::boolean[])
    AS t(id, app, platform, device_token, payload, priority, push_type, collapse_id, expires_at,
         topic, delay_s, dedupe_key, max_attempts, metadata, message, attempts, last_reason,
         enqueued_at, user_id, group_id, probe, category, timezone, local_send_at, transactional)

-- name: lock_batch
-- A batch's key, locked by its claim transaction until it ends (see claim_batch's dj).
SELECT pg_advisory_xact_lock($1)

-- name: write_delivered
-- Ids the provider accepted, and their attempts, one row per batch key ($1): the batch's ids
-- are $2[$3[i]:$4[i]] and its attempts $5[$3[i]:$4[i]]. One statement in a transaction of its
-- own, committed without waiting for the WAL flush: the table is unlogged (a Postgres crash
-- empties it anyway), and what a kill can lose is only what was not yet written.
WITH settings AS MATERIALIZED (SELECT set_config('synchronous_commit', 'off', true))
INSERT INTO pushgres.delivered (batch, ids, attempts)
SELECT b.batch, ($2::bigint[])[b.lo:b.hi], ($5::smallint[])[b.lo:b.hi]
FROM settings, unnest($1::bigint[], $3::int[], $4::int[]) AS b(batch, lo, hi)

-- name: forget_delivered
-- A batch's deliveries, in the transaction that records their outcomes.
DELETE FROM pushgres.delivered WHERE batch = $1

-- name: prune_delivered
-- Rows older than $1 seconds none of whose ids is queued any more: a batch that committed
-- without forgetting them (a write after its commit), or whose rows were claimed again.
DELETE FROM pushgres.delivered d
WHERE d.written_at < now() - make_interval(secs => $1)
  AND NOT EXISTS (SELECT 1 FROM pushgres.queue q WHERE q.id = ANY (d.ids))

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
                            metadata, message, category, timezone, local_send_at)
SELECT id, app, platform, device_token, payload::jsonb, priority, push_type, collapse_id,
       expires_at, topic, coalesce(send_at, now()), dedupe_key, max_attempts, metadata::jsonb,
       message::jsonb, category, timezone, local_send_at
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::smallint[],
            $7::text[], $8::text[], $9::timestamptz[], $10::text[], $11::timestamptz[],
            $12::text[], $13::smallint[], $14::text[], $15::text[], $16::text[], $17::text[],
            $18::timestamp[])
    WITH ORDINALITY
    AS t(id, app, platform, device_token, payload, priority, push_type, collapse_id, expires_at,
         topic, send_at, dedupe_key, max_attempts, metadata, message, category, timezone,
         local_send_at, ord)
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
-- The metrics' per-app gauges, on a timer, at a bounded cost whatever the backlog: the apps by
-- a loose index scan, rows queued and rows due counted up to $1 each (through the claim
-- index), and the oldest due row found by one index probe per shard and priority.
WITH RECURSIVE apps AS (
    (SELECT app FROM pushgres.queue ORDER BY app LIMIT 1)
    UNION ALL
    SELECT (SELECT q.app FROM pushgres.queue q WHERE q.app > apps.app ORDER BY q.app LIMIT 1)
    FROM apps WHERE apps.app IS NOT NULL
)
SELECT a.app,
       (SELECT count(*) FROM (SELECT 1 FROM pushgres.queue q WHERE q.app = a.app LIMIT $1) s)
           AS depth,
       (SELECT count(*) FROM (SELECT 1 FROM pushgres.queue q
                              WHERE q.app = a.app AND q.send_at <= now() LIMIT $1) s) AS ready,
       coalesce(extract(epoch FROM now() - (
           SELECT min(o.send_at)
           FROM generate_series(0, pushgres.queue_shards() - 1) AS s(shard),
                unnest('{10,5,1}'::smallint[]) AS p(priority),
                LATERAL (SELECT q.send_at FROM pushgres.queue q
                         WHERE q.app = a.app AND q.shard = s.shard
                           AND q.priority = p.priority AND q.send_at <= now()
                         ORDER BY q.send_at LIMIT 1) o)), 0)::float8 AS oldest_ready_age_s
FROM apps a
WHERE a.app IS NOT NULL

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

-- name: queue_dead_rows
-- The queue's dead and live rows as the statistics count them (every daemon's), and whether
-- this role may vacuum it (owners only, before PostgreSQL 17's MAINTAIN privilege).
SELECT coalesce(s.n_dead_tup, 0) AS dead, coalesce(s.n_live_tup, 0) AS live,
       pg_has_role(c.relowner, 'USAGE') AS may_vacuum
FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid = 'pushgres.queue'::regclass

-- name: vacuum_queue
-- Outside a transaction. SKIP_LOCKED: if autovacuum or another daemon is vacuuming it, skip.
-- TRUNCATE false: the end-of-table truncation would take an ACCESS EXCLUSIVE lock that stalls
-- claims; autovacuum still gives pages back.
VACUUM (SKIP_LOCKED, TRUNCATE false) pushgres.queue

-- name: lift_statement_timeout
SET statement_timeout = 0

-- name: reset_statement_timeout
RESET statement_timeout

-- name: ping
SELECT 1

-- name: heartbeat
INSERT INTO pushgres.daemons AS d (id, host, pid, apps)
VALUES ($1, $2, $3, $4::text[])
ON CONFLICT (id) DO UPDATE SET apps = excluded.apps, heartbeat_at = now()

-- name: live_daemons
-- The daemons alive within $1 seconds and their apps (each app's queue shards are split
-- between the daemons serving it).
SELECT id, apps FROM pushgres.daemons
WHERE heartbeat_at > now() - make_interval(secs => $1)

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

-- name: group_id_range
-- The lowest and highest notification id of fan-out $1, queued or finished (the demo's range).
SELECT min(id) AS lo, max(id) AS hi FROM (
    SELECT id FROM pushgres.queue WHERE group_id = $1
    UNION ALL
    SELECT id FROM pushgres.results WHERE group_id = $1) g

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

-- name: device_import_table
-- The rows of one import, numbered from 1 as given; dropped at the end of the import (or of
-- its transaction).
CREATE TEMP TABLE pushgres_device_import (
    n                integer     NOT NULL,
    app              text        NOT NULL,
    platform         text        NOT NULL,
    token            text        NOT NULL,
    user_id          text,
    installation_id  text,
    environment      text,
    timezone         text,
    locale           text,
    app_version      text,
    attributes       text,
    registered_at    timestamptz,
    last_seen_at     timestamptz
) ON COMMIT DROP

-- name: device_import_analyze
-- A temporary table has no statistics until analyzed: without them the upsert's joins are
-- planned for a handful of rows.
ANALYZE pg_temp.pushgres_device_import

-- name: device_import_problem
-- The first imported row the registry refuses: a time zone the server does not know, or a
-- known token of another platform. (n, field, value) or no row.
SELECT n, field, value FROM (
    SELECT i.n, 'timezone' AS field, i.timezone AS value
    FROM pg_temp.pushgres_device_import i
    WHERE i.timezone IS NOT NULL
      AND lower(i.timezone) NOT IN (SELECT lower(z.name) FROM pg_timezone_names z)
    UNION ALL
    SELECT i.n, 'platform', d.platform
    FROM pg_temp.pushgres_device_import i
    JOIN pushgres.devices d ON d.app = i.app AND d.token = i.token
    WHERE d.platform <> i.platform
) AS problem
ORDER BY n
LIMIT 1

-- name: device_import_apply
-- One set-based upsert of the imported rows, with register_device's rules for a known device:
-- descriptive fields filled (given values win), attributes merged, last seen the later of
-- both, registered the earlier; a token of another user moves; a device not active becomes
-- active when the row says it was seen after the device's state changed (for an invalid one:
-- after the provider's invalidation timestamp, Apple's rule), and an invalid one's dead-token
-- record goes. A new device is active, or invalid when a provider declared its token dead
-- after the row's last sighting. One device_events row each: 'imported', or 'moved'.
-- Returns how many rows inserted, updated (known, same user or none before) and moved.
WITH i AS (
    SELECT n, app, platform, token, user_id, installation_id, environment, timezone, locale,
           app_version, coalesce(attributes::jsonb, '{}') AS attributes,
           registered_at AS given_registered_at,
           coalesce(registered_at, last_seen_at, now()) AS registered_at,
           greatest(last_seen_at, coalesce(registered_at, last_seen_at, now())) AS last_seen_at
    FROM pg_temp.pushgres_device_import
), old AS (
    SELECT d.app, d.token, d.user_id, d.state, d.invalidated_at, d.state_changed_at,
           d.registered_at
    FROM pushgres.devices d
    JOIN pg_temp.pushgres_device_import i ON d.app = i.app AND d.token = i.token
    FOR UPDATE OF d
), merged AS (
    SELECT i.*, o.token IS NOT NULL AS is_known, o.user_id AS old_user_id,
           o.registered_at AS old_registered_at, t.reason AS dead_reason,
           coalesce(t.provider_timestamp, t.invalidated_at) AS dead_at,
           CASE
               WHEN o.token IS NULL THEN
                   CASE WHEN coalesce(t.provider_timestamp, t.invalidated_at) >= i.last_seen_at
                        THEN 'invalid' ELSE 'active' END
               WHEN o.state = 'active' THEN 'active'
               WHEN i.last_seen_at > CASE WHEN o.state = 'invalid'
                                          THEN coalesce(o.invalidated_at, o.state_changed_at)
                                          ELSE o.state_changed_at END
                   THEN 'active'
               ELSE o.state
           END AS new_state
    FROM i
    LEFT JOIN old o ON o.app = i.app AND o.token = i.token
    LEFT JOIN pushgres.invalid_tokens t
        ON o.token IS NULL AND t.app = i.app AND t.device_token = i.token
), ups AS (
    INSERT INTO pushgres.devices AS d (app, platform, token, user_id, installation_id,
        environment, timezone, locale, app_version, attributes, state, state_reason,
        invalidated_at, registered_at, last_seen_at, state_changed_at)
    SELECT app, platform, token,
           CASE WHEN NOT is_known OR new_state = 'active' THEN coalesce(user_id, old_user_id)
                ELSE old_user_id END,
           installation_id, environment, timezone, locale, app_version, attributes, new_state,
           CASE WHEN new_state = 'invalid' AND NOT is_known THEN dead_reason END,
           CASE WHEN new_state = 'invalid' AND NOT is_known THEN dead_at END,
           CASE WHEN is_known THEN coalesce(given_registered_at, old_registered_at)
                ELSE registered_at END,
           last_seen_at, now()
    FROM merged
    ON CONFLICT (app, token) DO UPDATE
    SET user_id = coalesce(excluded.user_id, d.user_id),
        installation_id = coalesce(excluded.installation_id, d.installation_id),
        environment = coalesce(excluded.environment, d.environment),
        timezone = coalesce(excluded.timezone, d.timezone),
        locale = coalesce(excluded.locale, d.locale),
        app_version = coalesce(excluded.app_version, d.app_version),
        attributes = d.attributes || excluded.attributes,
        registered_at = least(d.registered_at, excluded.registered_at),
        last_seen_at = greatest(d.last_seen_at, excluded.last_seen_at),
        state = excluded.state,
        state_reason = CASE WHEN excluded.state = d.state THEN d.state_reason
                            ELSE excluded.state_reason END,
        invalidated_at = CASE WHEN excluded.state = d.state THEN d.invalidated_at
                              ELSE excluded.invalidated_at END,
        state_changed_at = CASE WHEN excluded.state = d.state THEN d.state_changed_at
                                ELSE now() END
    RETURNING d.app, d.token, d.user_id, d.state
), changes AS (
    SELECT u.app, u.token, u.user_id, u.state, o.token IS NOT NULL AS is_known,
           o.user_id AS old_user_id, o.state AS old_state,
           o.user_id IS NOT NULL AND u.user_id IS DISTINCT FROM o.user_id AS is_moved
    FROM ups u
    LEFT JOIN old o ON o.app = u.app AND o.token = u.token
), cleared AS (
    DELETE FROM pushgres.invalid_tokens t
    USING changes c
    WHERE c.old_state = 'invalid' AND c.state = 'active'
      AND t.app = c.app AND t.device_token = c.token
), logged AS (
    INSERT INTO pushgres.device_events (app, token, event, user_id, detail)
    SELECT app, token, CASE WHEN is_moved THEN 'moved' ELSE 'imported' END, user_id,
           CASE WHEN is_moved THEN jsonb_build_object('from', old_user_id, 'imported', true)
                WHEN NOT is_known AND state <> 'active' THEN jsonb_build_object('state', state)
                WHEN is_known AND state <> old_state
                    THEN jsonb_build_object('reactivated_from', old_state)
           END
    FROM changes
)
SELECT count(*) FILTER (WHERE NOT is_known) AS inserted,
       count(*) FILTER (WHERE is_known AND NOT is_moved) AS updated,
       count(*) FILTER (WHERE is_moved) AS moved
FROM changes

-- name: device_import_drop
DROP TABLE pg_temp.pushgres_device_import

-- name: export_devices
-- Every device of one app (NULL: all) in the given states (NULL: all), in key order.
SELECT app, platform, token, user_id, installation_id, environment, timezone, locale,
       app_version, attributes::text AS attributes, state, state_reason, invalidated_at,
       registered_at, last_seen_at, state_changed_at
FROM pushgres.devices
WHERE ($1::text IS NULL OR app = $1::text)
  AND ($2::text[] IS NULL OR state = ANY ($2::text[]))
ORDER BY app, token

-- name: mark_stale_devices
-- Up to $3 of an app's active devices not seen for $2 days become stale (a registration later
-- makes them active again); concurrent daemons skip each other's rows.
WITH c AS (
    SELECT app, token FROM pushgres.devices
    WHERE app = $1 AND state = 'active' AND last_seen_at < now() - make_interval(days => $2::int)
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), stale AS (
    UPDATE pushgres.devices d
    SET state = 'stale', state_reason = format('not seen for %s days', $2::int),
        state_changed_at = now()
    FROM c
    WHERE d.app = c.app AND d.token = c.token
    RETURNING d.app, d.token, d.user_id
), logged AS (
    INSERT INTO pushgres.device_events (app, token, event, user_id)
    SELECT app, token, 'stale', user_id FROM stale
)
SELECT count(*) FROM stale

-- name: device_counts
SELECT app, state, count(*) AS n FROM pushgres.devices GROUP BY app, state ORDER BY app, state

-- name: purge_devices
-- Devices unregistered or uninstalled for $1 days, and their history, are deleted.
WITH gone AS (
    DELETE FROM pushgres.devices
    WHERE state IN ('unregistered', 'uninstalled')
      AND state_changed_at < now() - make_interval(days => $1::int)
    RETURNING app, token
), history AS (
    DELETE FROM pushgres.device_events e USING gone
    WHERE e.app = gone.app AND e.token = gone.token
)
SELECT count(*) FROM gone

-- name: prune_invalid_tokens
-- Dead tokens recorded for direct sends are forgotten after $1 days.
DELETE FROM pushgres.invalid_tokens WHERE invalidated_at < now() - make_interval(days => $1::int)

-- name: prune_groups
-- Fan-outs older than the results' retention ($1 days) with nothing left in the queue are
-- forgotten, with their slices: their results are gone, and their dedupe keys with them.
-- A group a slice is being added to is locked (FOR KEY SHARE) and skipped.
WITH old AS (
    SELECT id FROM pushgres.groups
    WHERE created_at < now() - make_interval(days => $1::int)
    FOR UPDATE SKIP LOCKED
)
DELETE FROM pushgres.groups g USING old
WHERE g.id = old.id AND NOT EXISTS (SELECT 1 FROM pushgres.queue q WHERE q.group_id = g.id)

-- name: sync_app_groups
-- The config's groups of apps ($1 names, $2 each group's apps as a JSON array): written, and
-- a group no longer in the config removed if all its apps are apps of the config ($3).
WITH given AS (
    SELECT g.name, ARRAY(SELECT jsonb_array_elements_text(g.apps)) AS apps
    FROM unnest($1::text[], $2::jsonb[]) AS g(name, apps)
), upserted AS (
    INSERT INTO pushgres.app_groups AS a (name, apps)
    SELECT name, apps FROM given
    ON CONFLICT (name) DO UPDATE SET apps = excluded.apps, updated_at = now()
    WHERE a.apps IS DISTINCT FROM excluded.apps
)
DELETE FROM pushgres.app_groups a
WHERE a.name <> ALL ($1::text[]) AND a.apps <@ $3::text[]

-- name: target_platforms
-- The platforms a fan-out to $1 reaches: those of its apps (a group's, or the app $1), each
-- read off one of the app's registered devices.
SELECT DISTINCT p.platform
FROM unnest(coalesce((SELECT apps FROM pushgres.app_groups WHERE name = $1), ARRAY[$1::text]))
     AS a(app),
     LATERAL (SELECT d.platform FROM pushgres.devices d WHERE d.app = a.app LIMIT 1) p

-- name: open_fanout
SELECT group_id, duplicate, complete, users, users_without_device, notifications
FROM pushgres.open_fanout($1, $2::jsonb, $3::jsonb, $4, $5::jsonb, $6, $7::timestamp)

-- name: fanout_slice
-- One slice ($3) of fan-out group $1's users ($2), its rows after send_at $4.
SELECT duplicate, users, users_without_device, notifications
FROM pushgres.send_to_users(NULL, $2::text[], NULL, send_at => $4, add_to_group => $1,
                            max_attempts => $5, slice => $3)

-- name: close_fanout
SELECT users, users_without_device, notifications FROM pushgres.close_fanout($1)

-- name: fanout_group
SELECT id, target, apps, message::text AS message, overrides::text AS overrides, dedupe_key,
       metadata::text AS metadata, users, users_without_device, notifications, complete,
       created_at
FROM pushgres.groups WHERE id = $1

-- name: group_outcome
SELECT user_id, status, reason, count FROM pushgres.group_outcome($1, $2)

-- name: probe_turn
-- The app's probing turn ($1): one daemon at a time, until its transaction ends. Taken in its
-- own statement, so that the count of the minute's probes after it sees the last turn's.
SELECT pg_try_advisory_xact_lock(hashtextextended('pushgres.probe:' || $1, 0))

-- name: probe_devices
-- An app's devices not seen for $2 days and not probed for $3 days get an uninstall probe: a
-- silent push ($5, the portable message) marked as a probe, priority 5, expiring after a
-- day -- at most $4 a minute for the app, however many daemons serve it (run holding the
-- app's probe_turn).
WITH budget AS (
    SELECT greatest(0, $4::int - (
        SELECT count(*) FROM pushgres.devices
        WHERE app = $1 AND probed_at > now() - interval '1 minute')) AS n
), c AS (
    SELECT app, token FROM pushgres.devices
    WHERE app = $1 AND state IN ('active', 'stale') AND EXISTS (SELECT 1 FROM budget)
      AND last_seen_at < now() - make_interval(days => $2::int)
      AND (probed_at IS NULL OR probed_at < now() - make_interval(days => $3::int))
    ORDER BY probed_at NULLS FIRST, last_seen_at
    LIMIT (SELECT n FROM budget)
    FOR UPDATE SKIP LOCKED
), probed AS (
    UPDATE pushgres.devices d SET probed_at = now()
    FROM c
    WHERE d.app = c.app AND d.token = c.token
    RETURNING d.app, d.platform, d.token
), queued AS (
    INSERT INTO pushgres.queue (app, platform, device_token, payload, priority, expires_at,
                                max_attempts, message, probe)
    SELECT app, platform, token, '{}', 5, now() + interval '1 day', 3, $5::jsonb, true
    FROM probed
    RETURNING 1
)
SELECT count(*) FROM queued

-- name: uninstalls_by_day
-- Devices found uninstalled (an uninstall probe's dead answer), per day and app, for $1 days.
SELECT date_trunc('day', at)::date AS day, app, count(*) AS n
FROM pushgres.device_events
WHERE event = 'uninstalled' AND at >= current_date - $1::int
  AND ($2::text IS NULL OR app = $2::text)
GROUP BY 1, 2
ORDER BY 1 DESC, 2

-- name: cap_lock
-- The frequency caps' entries of one batch's people ($1, a JSON array of subjects), locked
-- until the claim transaction ends (created empty when new). The entries that hold anything
-- come back as one JSON array of [subject, sent_at, events, kinds]: one value to decode
-- instead of a record of three arrays per person.
SELECT coalesce(json_agg(json_build_array(l.subject, l.sent_at, l.events, l.kinds))
                    FILTER (WHERE cardinality(l.sent_at) > 0), '[]')::text
FROM pushgres.lock_cap_ledger(ARRAY(SELECT jsonb_array_elements_text($1::jsonb))) AS l

-- name: cap_write
-- What a batch admitted at $2 (Unix seconds), $1 a JSON array of [subject, forget, event,
-- kind]: each person forgets the first `forget` messages of their entry (older than the
-- longest window, $3 seconds) and counts one more message (`event`, of `kind`) per element,
-- in order.
WITH t AS (
    SELECT e ->> 0 AS subject, (e ->> 1)::int AS forget, (e ->> 2)::bigint AS event,
           e ->> 3 AS kind, ord
    FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS a(e, ord)
), n AS (
    SELECT t.subject, max(t.forget) AS forget, array_agg(t.event ORDER BY t.ord) AS events,
           array_agg(t.kind ORDER BY t.ord) AS kinds, count(*)::int AS k
    FROM t
    GROUP BY t.subject
)
UPDATE pushgres.cap_ledger l
SET sent_at = l.sent_at[n.forget + 1:] || array_fill($2::float8, ARRAY[n.k]),
    events = l.events[n.forget + 1:] || n.events,
    kinds = l.kinds[n.forget + 1:] || n.kinds,
    expires_at = to_timestamp($2::float8 + $3::float8)
FROM n
WHERE l.subject = n.subject

-- name: prune_cap_ledger
-- Caps' entries whose newest message left the longest window: nothing in them counts any more.
-- Entries a batch holds are skipped, and the age is checked again as each is deleted.
DELETE FROM pushgres.cap_ledger
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM pushgres.cap_ledger WHERE expires_at < now() LIMIT 10000
    FOR UPDATE SKIP LOCKED))
  AND expires_at < now()

-- name: sync_categories
-- The config's categories ($1 names, $2 whether each is transactional): written, each marked
-- declared now. A category no daemon has declared for a day is removed: daemons whose configs
-- differ do not take each other's away (rows already queued under one keep its name).
WITH given AS (
    SELECT name, transactional FROM unnest($1::text[], $2::boolean[]) AS g(name, transactional)
), upserted AS (
    INSERT INTO pushgres.categories AS c (name, transactional)
    SELECT name, transactional FROM given
    ON CONFLICT (name) DO UPDATE SET transactional = excluded.transactional, updated_at = now()
)
DELETE FROM pushgres.categories c
WHERE c.name <> ALL ($1::text[]) AND c.updated_at < now() - interval '1 day'

-- name: categories
SELECT name, transactional FROM pushgres.categories ORDER BY name
