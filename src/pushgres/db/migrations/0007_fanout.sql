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
--   pushgres.group_slices     the slices of a fan-out enqueued so far (resumable fan-outs).
--
-- Functions: message_problem (what is wrong with a portable message), send_to_users /
-- send_to_user (a fan-out to every active device of each user, on each app of the target),
-- open_fanout / close_fanout (a fan-out in slices, over several sessions), group_outcome (a
-- fan-out's outcome by status and reason, per user if asked).

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

-- The same rule for app names, checked five times faster: Postgres's regular expressions
-- expand a bounded repeat such as {0,63} into that many states, evaluated for every row.
ALTER TABLE pushgres.queue DROP CONSTRAINT queue_app_name;
ALTER TABLE pushgres.queue ADD CONSTRAINT queue_app_name
    CHECK (app ~ '^[A-Za-z0-9][A-Za-z0-9_.-]*$' AND length(app) <= 64);

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
    CONSTRAINT app_groups_name CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]*$' AND length(name) <= 64),
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
    -- false while a fan-out given in slices is still being enqueued (open_fanout ..
    -- close_fanout); a one-call fan-out is complete when it commits.
    complete              boolean     NOT NULL DEFAULT false,
    created_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT groups_dedupe_key_length CHECK (length(dedupe_key) BETWEEN 1 AND 256),
    CONSTRAINT groups_metadata_object CHECK (metadata IS NULL OR jsonb_typeof(metadata) = 'object'),
    -- NULL keys never conflict: only fan-outs given a key are deduplicated.
    CONSTRAINT groups_dedupe UNIQUE (target, dedupe_key)
);

-- The slices of a fan-out enqueued so far, each in its own transaction: a slice given again
-- (a fan-out resumed after a failure) adds nothing.
CREATE TABLE pushgres.group_slices (
    group_id              bigint  NOT NULL REFERENCES pushgres.groups (id) ON DELETE CASCADE,
    slice                 integer NOT NULL,
    users                 bigint  NOT NULL DEFAULT 0,
    users_without_device  bigint  NOT NULL DEFAULT 0,
    notifications         bigint  NOT NULL DEFAULT 0,
    -- The slice's user ids, as given: a slice given again must be the same users.
    digest                text    NOT NULL,
    PRIMARY KEY (group_id, slice),
    CONSTRAINT group_slices_slice CHECK (slice >= 0)
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
        IF k IN ('title', 'subtitle', 'body', 'image', 'collapse_key') THEN
            IF kind <> 'string' THEN
                RETURN format('message.%s must be a string', k);
            END IF;
        ELSIF k IN ('sound', 'link', 'thread') THEN
            IF kind <> 'string' OR v #>> '{}' = '' THEN
                RETURN format('message.%s must be a non-empty string', k);
            END IF;
        ELSIF k = 'data' THEN
            IF kind <> 'object' THEN
                RETURN 'message.data must be an object';
            END IF;
        ELSIF k = 'badge' THEN
            IF kind <> 'number' OR v::text !~ '^[0-9]+$' OR v::numeric > 2147483647 THEN
                RETURN 'message.badge must be a whole number 0..2147483647';
            END IF;
        ELSIF k = 'ttl' THEN
            IF kind <> 'number' OR v::text !~ '^[0-9]+$' OR v::numeric NOT BETWEEN 1 AND 2419200 THEN
                RETURN 'message.ttl must be whole seconds 1..2419200 (28 days)';
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
    IF octet_length(message ->> 'collapse_key') NOT BETWEEN 1 AND 64 THEN
        RETURN 'message.collapse_key must be 1 to 64 bytes';
    END IF;
    IF message ->> 'image' IS NOT NULL THEN
        IF message ->> 'image' !~ '^https://([^/?#\s]*@)?([^/?#:@\s\[\]]+|\[[0-9A-Fa-f:.]+\])(:[0-9]*)?([/?#]|$)'
                OR message ->> 'image' ~ '\s' THEN
            RETURN 'message.image must be an https URL';
        END IF;
        IF NOT message ?| ARRAY['title', 'body'] THEN
            RETURN 'message.image is shown with an alert: give a title or a body too';
        END IF;
    END IF;
    IF NOT message ?| ARRAY['title', 'subtitle', 'body', 'data', 'badge', 'sound', 'image',
                            'link', 'thread'] THEN
        RETURN 'message has nothing to deliver (no title, body, data, badge, sound, ...)';
    END IF;
    RETURN NULL;
END;
$$;

-- A fan-out's group: the message checked, the target resolved (an app, or a group in
-- pushgres.app_groups), the group created incomplete. With a dedupe_key already used for the
-- target, nothing is created and the existing group is returned (duplicate = true) with
-- whether it is complete: an incomplete one can be resumed by giving its slices again.
CREATE FUNCTION pushgres.open_fanout(
    target text,
    message jsonb,
    overrides jsonb DEFAULT NULL,
    dedupe_key text DEFAULT NULL,
    metadata jsonb DEFAULT NULL
) RETURNS TABLE (group_id bigint, duplicate boolean, complete boolean, users bigint,
                 users_without_device bigint, notifications bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    problem text := pushgres.message_problem(message);
    target_apps text[];
    gid bigint;
    g pushgres.groups%ROWTYPE;
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
    IF target IS NULL OR target !~ '^[A-Za-z0-9][A-Za-z0-9_.-]*$' OR length(target) > 64 THEN
        RAISE EXCEPTION 'pushgres.send_to_users: % is not an app or group name', coalesce(target, 'NULL')
            USING ERRCODE = '22023';
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
    INSERT INTO pushgres.groups AS gr (target, apps, message, overrides, dedupe_key, metadata)
    VALUES (target, target_apps, message, overrides, dedupe_key, metadata)
    ON CONFLICT ON CONSTRAINT groups_dedupe DO NOTHING
    RETURNING gr.id INTO gid;
    IF gid IS NULL THEN
        SELECT * INTO g FROM pushgres.groups gr
        WHERE gr.target = target AND gr.dedupe_key = dedupe_key;
        RETURN QUERY SELECT g.id, true, g.complete, g.users, g.users_without_device,
                            g.notifications;
        RETURN;
    END IF;
    RETURN QUERY SELECT gid, false, false, 0::bigint, 0::bigint, 0::bigint;
END;
$$;

-- A fan-out given in slices is complete: its counts are final.
CREATE FUNCTION pushgres.close_fanout(group_id bigint)
RETURNS TABLE (users bigint, users_without_device bigint, notifications bigint)
LANGUAGE sql AS $$
    -- FOR UPDATE waits for the slices in flight (they hold FOR KEY SHARE); later ones then
    -- find the group complete.
    SELECT 1 FROM pushgres.groups g WHERE g.id = close_fanout.group_id FOR UPDATE;
    UPDATE pushgres.groups g SET complete = true WHERE g.id = close_fanout.group_id
    RETURNING g.users, g.users_without_device, g.notifications;
$$;

-- A fan-out: one notification per active device of each user, on each app of the target (an
-- app, or a group in pushgres.app_groups). Stale, invalid, uninstalled and unregistered
-- devices are skipped. The message's delivery keys become the rows' columns: collapse_key →
-- collapse_id, ttl → expires_at (from send_at), priority → 10 (high, the default) or 5.
-- overrides: native payload pieces per platform, {"apns": {...}, "fcm": {...}}, merged over
-- each provider's rendering. With a dedupe_key, a fan-out repeating (target, dedupe_key)
-- adds nothing and returns the first one's group (duplicate = true).
--
-- In slices: open_fanout gives the group; each slice of users is then given with
-- add_to_group (the message may be NULL: the group's is used) and its number as slice, in
-- as many transactions and sessions as wanted -- a slice given twice adds nothing the second
-- time (duplicate = true) -- and close_fanout completes the group.
CREATE FUNCTION pushgres.send_to_users(
    target text,
    user_ids text[],
    message jsonb,
    overrides jsonb DEFAULT NULL,
    send_at timestamptz DEFAULT NULL,
    dedupe_key text DEFAULT NULL,
    metadata jsonb DEFAULT NULL,
    add_to_group bigint DEFAULT NULL,
    max_attempts smallint DEFAULT 5,
    slice integer DEFAULT NULL
) RETURNS TABLE (group_id bigint, duplicate boolean, users bigint, users_without_device bigint,
                 notifications bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    gid bigint := add_to_group;
    g pushgres.groups%ROWTYPE;
    o record;
    content jsonb;
    prio smallint;
    due timestamptz := coalesce(send_at, now());
    expiry timestamptz;
    n_users bigint;
    n_reached bigint;
    n_rows bigint;
    nestloop text;
    memory text;
    digest text;
    done pushgres.group_slices%ROWTYPE;
BEGIN
    IF gid IS NULL THEN
        IF slice IS NOT NULL THEN
            RAISE EXCEPTION 'pushgres.send_to_users: a slice is added to a group: give '
                            'add_to_group (from pushgres.open_fanout)' USING ERRCODE = '22023';
        END IF;
        SELECT * INTO o FROM pushgres.open_fanout(target, message, overrides, dedupe_key, metadata);
        IF o.duplicate THEN
            RETURN QUERY SELECT o.group_id, true, o.users, o.users_without_device,
                                o.notifications;
            RETURN;
        END IF;
        gid := o.group_id;
    END IF;
    SELECT * INTO g FROM pushgres.groups gr WHERE gr.id = gid FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pushgres.send_to_users: no fan-out group %', gid USING ERRCODE = '22023';
    END IF;
    IF add_to_group IS NOT NULL THEN
        IF g.complete THEN
            RAISE EXCEPTION 'pushgres.send_to_users: fan-out group % is complete: nothing can be '
                            'added to it', gid USING ERRCODE = '22023';
        END IF;
        IF message IS NOT NULL AND message <> g.message THEN
            RAISE EXCEPTION 'pushgres.send_to_users: the message differs from fan-out group %''s '
                            '(give NULL to use the group''s)', gid USING ERRCODE = '22023';
        END IF;
    END IF;
    IF slice IS NOT NULL THEN
        digest := md5(array_to_string(coalesce(user_ids, '{}'), E'\n', ''));
        INSERT INTO pushgres.group_slices AS s (group_id, slice, digest)
        VALUES (gid, slice, digest)
        ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN  -- given before: its rows are queued already
            SELECT * INTO done FROM pushgres.group_slices s
            WHERE s.group_id = gid AND s.slice = slice;
            IF done.digest <> digest THEN
                RAISE EXCEPTION 'pushgres.send_to_users: slice % of fan-out group % was given '
                                'before with other users: resume a fan-out with the same users '
                                'in the same order', slice, gid USING ERRCODE = '22023';
            END IF;
            RETURN QUERY SELECT gid, true, done.users, done.users_without_device,
                                done.notifications;
            RETURN;
        END IF;
    END IF;
    content := g.message - ARRAY['collapse_key', 'ttl', 'priority'];
    prio := CASE g.message ->> 'priority' WHEN 'normal' THEN 5 ELSE 10 END;
    IF g.message ? 'ttl' THEN
        expiry := due + make_interval(secs => (g.message ->> 'ttl')::float8);
    END IF;

    -- Planned for each call, with the arguments' sizes known. For many users, a hash join
    -- over the registry (one pass) instead of an index probe per user and app: 7 times faster
    -- for 1,000,000 users, which the planner does not see by itself.
    IF cardinality(user_ids) > 10000 THEN
        nestloop := current_setting('enable_nestloop');
        memory := current_setting('work_mem');
        PERFORM set_config('enable_nestloop', 'off', true);
        PERFORM set_config('work_mem', '64MB', true);
    END IF;
    EXECUTE $fanout$
        WITH u AS (
            SELECT DISTINCT x.uid FROM unnest($1::text[]) AS x(uid) WHERE x.uid IS NOT NULL
        ), ins AS (
            INSERT INTO pushgres.queue (app, platform, device_token, payload, priority,
                                        collapse_id, expires_at, send_at, max_attempts,
                                        metadata, message, user_id, group_id)
            SELECT d.app, d.platform, d.token, coalesce($3 -> d.platform, '{}'), $4, $5, $6,
                   $7, $8, $9, $10, d.user_id, $11
            FROM u JOIN pushgres.devices d
                 ON d.user_id = u.uid AND d.app = ANY($2) AND d.state = 'active'
            RETURNING user_id
        ), reached AS (
            SELECT ins.user_id FROM ins GROUP BY ins.user_id
        )
        SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM reached), (SELECT count(*) FROM ins)
    $fanout$
    INTO n_users, n_reached, n_rows
    USING coalesce(user_ids, '{}'), g.apps, g.overrides, prio, g.message ->> 'collapse_key',
          expiry, due, max_attempts, g.metadata, content, gid;
    IF nestloop IS NOT NULL THEN
        PERFORM set_config('enable_nestloop', nestloop, true);
        PERFORM set_config('work_mem', memory, true);
    END IF;

    UPDATE pushgres.groups gr
    SET users = gr.users + n_users,
        users_without_device = gr.users_without_device + (n_users - n_reached),
        notifications = gr.notifications + n_rows,
        complete = gr.complete OR add_to_group IS NULL
    WHERE gr.id = gid;
    IF slice IS NOT NULL THEN
        UPDATE pushgres.group_slices s
        SET users = n_users, users_without_device = n_users - n_reached, notifications = n_rows
        WHERE s.group_id = gid AND s.slice = slice;
    END IF;
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
