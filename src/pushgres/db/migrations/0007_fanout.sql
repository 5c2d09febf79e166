-- pushgres schema, version 7: sending to people, portable messages, uninstall probes.
--
--   pushgres.queue / results  gain the portable message (queue), the user and the fan-out
--                             group a row was enqueued for, and whether it is an uninstall
--                             probe. A row with a message carries in `payload` only the
--                             native overrides merged over the provider's rendering.
--   pushgres.app_groups       the config's groups of apps (an iOS and an Android app of one
--                             product), written by the daemon at start and at each reload,
--                             so that SQL can name a group.
--   pushgres.groups           one row per fan-out: what was sent to whom, and how many.
--   pushgres.devices          gains probed_at: when an uninstall probe last went to it.
--
-- Functions: message_problem (what is wrong with a portable message), send_to_users /
-- send_to_user (a fan-out to every active device of each user, on each app of the target),
-- group_outcome (a fan-out's outcome by status and reason, per user if asked).

ALTER TABLE pushgres.queue
    ADD COLUMN message  jsonb,
    ADD COLUMN user_id  text,
    ADD COLUMN group_id bigint,
    ADD COLUMN probe    boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT queue_message_object CHECK (message IS NULL OR jsonb_typeof(message) = 'object');

-- A row with a portable message holds native overrides in its payload, which need no 'aps'.
ALTER TABLE pushgres.queue DROP CONSTRAINT queue_apns_payload_has_aps;
ALTER TABLE pushgres.queue ADD CONSTRAINT queue_apns_payload_has_aps CHECK (
    platform <> 'apns' OR message IS NOT NULL
    OR coalesce(jsonb_typeof(payload -> 'aps'), '') = 'object');

CREATE INDEX queue_group ON pushgres.queue (group_id) WHERE group_id IS NOT NULL;

ALTER TABLE pushgres.results
    ADD COLUMN user_id  text,
    ADD COLUMN group_id bigint,
    ADD COLUMN probe    boolean NOT NULL DEFAULT false;

CREATE INDEX results_group ON pushgres.results (group_id) WHERE group_id IS NOT NULL;

ALTER TABLE pushgres.devices ADD COLUMN probed_at timestamptz;

-- Devices an uninstall probe may go to: not seen for a while, not known dead.
CREATE INDEX devices_probe ON pushgres.devices (app, last_seen_at)
    WHERE state IN ('active', 'stale');

-- The uninstall probes of the last minute, to keep an app's pace.
CREATE INDEX devices_probed ON pushgres.devices (app, probed_at) WHERE probed_at IS NOT NULL;

CREATE TABLE pushgres.app_groups (
    name        text        PRIMARY KEY,
    apps        text[]      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT app_groups_name CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    CONSTRAINT app_groups_apps CHECK (cardinality(apps) >= 1)
);

CREATE TABLE pushgres.groups (
    id                    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target                text        NOT NULL,
    apps                  text[]      NOT NULL,
    message               jsonb       NOT NULL,
    overrides             jsonb,
    dedupe_key            text,
    metadata              jsonb,
    users                 bigint      NOT NULL DEFAULT 0,
    users_without_device  bigint      NOT NULL DEFAULT 0,
    notifications         bigint      NOT NULL DEFAULT 0,
    created_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT groups_dedupe_key_length CHECK (length(dedupe_key) BETWEEN 1 AND 256),
    CONSTRAINT groups_metadata_object CHECK (metadata IS NULL OR jsonb_typeof(metadata) = 'object'),
    -- NULL keys never conflict: only fan-outs given a key are deduplicated.
    CONSTRAINT groups_dedupe UNIQUE (target, dedupe_key)
);

-- What is wrong with a portable message, or NULL. The same rules as pushgres.message.check
-- in Python (a test holds the two to the same answers).
CREATE FUNCTION pushgres.message_problem(message jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    k text;
    v jsonb;
    kind text;
BEGIN
    IF message IS NULL OR jsonb_typeof(message) <> 'object' THEN
        RETURN 'a message must be a JSON object';
    END IF;
    FOR k, v IN SELECT e.key, e.value FROM jsonb_each(message) e ORDER BY e.key LOOP
        kind := jsonb_typeof(v);
        IF k IN ('title', 'subtitle', 'body', 'sound', 'image', 'link', 'thread', 'collapse_key') THEN
            IF kind <> 'string' THEN
                RETURN format('message.%s must be a string', k);
            END IF;
        ELSIF k = 'data' THEN
            IF kind <> 'object' THEN
                RETURN 'message.data must be an object';
            END IF;
        ELSIF k IN ('badge', 'ttl') THEN
            IF kind <> 'number' OR v::numeric <> trunc(v::numeric) OR v::numeric < 0 THEN
                RETURN format('message.%s must be a whole number >= 0', k);
            END IF;
        ELSIF k = 'priority' THEN
            IF kind <> 'string' OR v #>> '{}' NOT IN ('high', 'normal') THEN
                RETURN 'message.priority must be "high" or "normal"';
            END IF;
        ELSE
            RETURN format('message has an unknown key %s (known: title, subtitle, body, data, '
                          'badge, sound, image, link, thread, collapse_key, ttl, priority)',
                          to_json(k));
        END IF;
    END LOOP;
    IF (message ->> 'ttl')::numeric > 2419200 THEN
        RETURN 'message.ttl must be at most 2419200 seconds (28 days)';
    END IF;
    IF octet_length(message ->> 'collapse_key') NOT BETWEEN 1 AND 64 THEN
        RETURN 'message.collapse_key must be 1 to 64 bytes';
    END IF;
    IF message ->> 'image' IS NOT NULL AND message ->> 'image' !~ '^https://' THEN
        RETURN 'message.image must be an https URL';
    END IF;
    IF NOT message ?| ARRAY['title', 'subtitle', 'body', 'data', 'badge', 'sound', 'image',
                            'link', 'thread'] THEN
        RETURN 'message has nothing to deliver (no title, body, data, badge, sound, ...)';
    END IF;
    RETURN NULL;
END;
$$;

-- A fan-out: one notification per active device of each user, on each app of the target (an
-- app, or a group in pushgres.app_groups). Stale, invalid, uninstalled and unregistered
-- devices are skipped. The message's delivery keys become the rows' columns: collapse_key →
-- collapse_id, ttl → expires_at (from send_at), priority → 10 (high, the default) or 5.
-- overrides: native payload pieces per platform, {"apns": {...}, "fcm": {...}}, merged over
-- each provider's rendering. A fan-out is given in chunks by passing the group_id the first
-- chunk returned as add_to_group. With a dedupe_key, a fan-out repeating (target, dedupe_key)
-- adds nothing and returns the first one's group (duplicate = true).
CREATE FUNCTION pushgres.send_to_users(
    target text,
    user_ids text[],
    message jsonb,
    overrides jsonb DEFAULT NULL,
    send_at timestamptz DEFAULT NULL,
    dedupe_key text DEFAULT NULL,
    metadata jsonb DEFAULT NULL,
    add_to_group bigint DEFAULT NULL,
    max_attempts smallint DEFAULT 5
) RETURNS TABLE (group_id bigint, duplicate boolean, users bigint, users_without_device bigint,
                 notifications bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    problem text := pushgres.message_problem(message);
    target_apps text[];
    gid bigint := add_to_group;
    g pushgres.groups%ROWTYPE;
    content jsonb := message - ARRAY['collapse_key', 'ttl', 'priority'];
    prio smallint := CASE message ->> 'priority' WHEN 'normal' THEN 5 ELSE 10 END;
    due timestamptz := coalesce(send_at, now());
    expiry timestamptz;
    n_users bigint;
    n_reached bigint;
    n_rows bigint;
BEGIN
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'pushgres.send_to_users: %', problem USING ERRCODE = '22023';
    END IF;
    IF overrides IS NOT NULL AND (jsonb_typeof(overrides) <> 'object'
            OR EXISTS (SELECT 1 FROM jsonb_each(overrides) o
                       WHERE o.key NOT IN ('apns', 'fcm') OR jsonb_typeof(o.value) <> 'object')) THEN
        RAISE EXCEPTION 'pushgres.send_to_users: overrides must be {"apns": {...}, "fcm": {...}}'
            USING ERRCODE = '22023';
    END IF;
    IF target IS NULL OR target !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$' THEN
        RAISE EXCEPTION 'pushgres.send_to_users: % is not an app or group name', coalesce(target, 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF message ? 'ttl' THEN
        expiry := due + make_interval(secs => (message ->> 'ttl')::float8);
    END IF;
    SELECT a.apps INTO target_apps FROM pushgres.app_groups a WHERE a.name = target;
    IF target_apps IS NULL THEN
        IF NOT EXISTS (SELECT 1 FROM pushgres.devices d WHERE d.app = target) THEN
            RAISE EXCEPTION 'pushgres.send_to_users: no app or group named % (no device is '
                            'registered for such an app, and no group has that name)', target
                USING ERRCODE = '22023',
                      HINT = 'groups are the [groups] of the daemon''s config, written at its start';
        END IF;
        target_apps := ARRAY[target];
    END IF;

    IF gid IS NULL THEN
        INSERT INTO pushgres.groups AS gr (target, apps, message, overrides, dedupe_key, metadata)
        VALUES (target, target_apps, message, overrides, dedupe_key, metadata)
        ON CONFLICT ON CONSTRAINT groups_dedupe DO NOTHING
        RETURNING gr.id INTO gid;
        IF gid IS NULL THEN
            SELECT * INTO g FROM pushgres.groups gr
            WHERE gr.target = target AND gr.dedupe_key = dedupe_key;
            RETURN QUERY SELECT g.id, true, g.users, g.users_without_device, g.notifications;
            RETURN;
        END IF;
    ELSE
        SELECT * INTO g FROM pushgres.groups gr WHERE gr.id = gid FOR UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'pushgres.send_to_users: no fan-out group %', gid USING ERRCODE = '22023';
        END IF;
        target_apps := g.apps;
    END IF;

    WITH u AS (
        SELECT DISTINCT x.uid FROM unnest(user_ids) AS x(uid) WHERE x.uid IS NOT NULL
    ), ins AS (
        INSERT INTO pushgres.queue (app, platform, device_token, payload, priority, collapse_id,
                                    expires_at, send_at, max_attempts, metadata, message,
                                    user_id, group_id)
        SELECT d.app, d.platform, d.token, coalesce(overrides -> d.platform, '{}'), prio,
               message ->> 'collapse_key', expiry, due, max_attempts, metadata, content,
               d.user_id, gid
        FROM u JOIN pushgres.devices d
             ON d.user_id = u.uid AND d.app = ANY(target_apps) AND d.state = 'active'
        RETURNING user_id
    ), reached AS (
        SELECT count(*) AS n_rows, count(DISTINCT ins.user_id) AS n_reached FROM ins
    )
    SELECT (SELECT count(*) FROM u), reached.n_reached, reached.n_rows
    INTO n_users, n_reached, n_rows
    FROM reached;

    UPDATE pushgres.groups gr
    SET users = gr.users + n_users,
        users_without_device = gr.users_without_device + (n_users - n_reached),
        notifications = gr.notifications + n_rows
    WHERE gr.id = gid;
    RETURN QUERY SELECT gid, false, n_users, n_users - n_reached, n_rows;
END;
$$;

-- One user: pushgres.send_to_users for a single user id.
CREATE FUNCTION pushgres.send_to_user(
    target text,
    user_id text,
    message jsonb,
    overrides jsonb DEFAULT NULL,
    send_at timestamptz DEFAULT NULL,
    dedupe_key text DEFAULT NULL,
    metadata jsonb DEFAULT NULL
) RETURNS TABLE (group_id bigint, duplicate boolean, users bigint, users_without_device bigint,
                 notifications bigint)
LANGUAGE sql AS $$
    SELECT * FROM pushgres.send_to_users(target, ARRAY[user_id], message, overrides, send_at,
                                         dedupe_key, metadata);
$$;

-- A fan-out's outcome: how many of its notifications are queued (waiting or in flight) or in
-- each terminal status, by reason; per user when per_user (else user_id is NULL).
CREATE FUNCTION pushgres.group_outcome(group_id bigint, per_user boolean DEFAULT false)
RETURNS TABLE (user_id text, status text, reason text, count bigint)
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN per_user THEN o.user_id END, o.status, o.reason, count(*)
    FROM (
        SELECT q.user_id, 'queued'::text AS status, q.last_reason AS reason
        FROM pushgres.queue q WHERE q.group_id = group_outcome.group_id
        UNION ALL
        SELECT r.user_id, r.status, r.reason
        FROM pushgres.results r WHERE r.group_id = group_outcome.group_id
    ) o
    GROUP BY 1, 2, 3
    ORDER BY 1 NULLS FIRST, 2, 4 DESC, 3;
$$;
