-- pushgres schema, version 8: guardrails -- categories, frequency caps, quiet hours, local time.
--
--   pushgres.categories  the config's notification categories, written by the daemon at start
--                        and at each reload, so that an enqueue naming an unknown category is
--                        refused by the database itself (a trigger on the queue).
--   pushgres.queue       gains the notification's category (NULL: its app's default), its own
--                        time zone (NULL: the registry's for the token, else the app's),
--                        local_send_at, a wall-clock time at which to send it in the device's
--                        time zone ("09:00 on 24 December, wherever the device is"), and
--                        whether it is transactional (its category's, set at enqueue): the
--                        daemon claims an app's transactional rows ahead of its bulk ones.
--   pushgres.results     gains the category the notification was sent (or held back) under,
--                        and the terminal status 'suppressed' (a frequency cap held it back).
--   pushgres.cap_ledger  what the frequency caps have counted for each person: the messages
--                        admitted within the longest cap window, with when and of what kind.
--                        Rows are locked and updated inside the daemon's claim transaction,
--                        so several daemons draining one person's notifications never exceed
--                        a cap.

CREATE TABLE pushgres.categories (
    name           text        PRIMARY KEY,
    transactional  boolean     NOT NULL DEFAULT false,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT categories_name CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]*$' AND length(name) <= 64)
);

-- Whether PostgreSQL knows a time zone name (an error, not false, would abort the INSERT with a
-- message that names no column).
CREATE FUNCTION pushgres.is_time_zone(name text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    PERFORM now() AT TIME ZONE name;
    RETURN true;
EXCEPTION WHEN invalid_parameter_value THEN
    RETURN false;
END;
$$;

ALTER TABLE pushgres.queue
    ADD COLUMN category       text,
    ADD COLUMN timezone       text,
    ADD COLUMN local_send_at  timestamp,
    ADD COLUMN transactional  boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT queue_timezone_known CHECK (timezone IS NULL OR pushgres.is_time_zone(timezone));

-- The transactional lane: an app's transactional rows, claimed ahead of its bulk ones (a small
-- index: a million-row campaign does not stand in front of a password reset).
CREATE INDEX queue_claim_transactional ON pushgres.queue (app, priority DESC, send_at, id)
    WHERE transactional;

-- An enqueue naming a category the config does not declare is refused, naming it; one naming
-- a transactional category goes in the transactional lane. Rows without a category (their
-- app's default) pay nothing; the daemon's own re-inserts (retries, deferrals) keep their lane
-- and are not checked again, so a category removed from the config later cannot wedge rows
-- already queued under it.
CREATE FUNCTION pushgres.queue_category_known() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    is_transactional boolean;
BEGIN
    IF coalesce(current_setting('pushgres.daemon', true), '') = 'on' THEN
        RETURN NEW;
    END IF;
    SELECT c.transactional INTO is_transactional FROM pushgres.categories c
    WHERE c.name = NEW.category;
    IF FOUND THEN
        NEW.transactional := is_transactional;
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'pushgres: unknown category % (app %, device token %...)',
        quote_literal(NEW.category), quote_literal(NEW.app), left(NEW.device_token, 8)
        USING ERRCODE = '23514',
              HINT = 'declare it as [categories.' || NEW.category || '] in the daemon''s config; '
                     'the daemon writes the categories to pushgres.categories when it starts';
END;
$$;

CREATE TRIGGER queue_category_known BEFORE INSERT ON pushgres.queue
FOR EACH ROW WHEN (NEW.category IS NOT NULL)
EXECUTE FUNCTION pushgres.queue_category_known();

ALTER TABLE pushgres.results
    ADD COLUMN category text;

ALTER TABLE pushgres.results DROP CONSTRAINT results_status;
ALTER TABLE pushgres.results ADD CONSTRAINT results_status
    CHECK (status IN ('sent', 'failed', 'token_invalid', 'expired', 'suppressed'));

CREATE TABLE pushgres.cap_ledger (
    subject     text        PRIMARY KEY,
    -- The messages admitted to the person within the longest cap window, oldest first: when
    -- (Unix seconds), which (a fan-out's group id, or minus the notification's id: a person's
    -- devices count one message once) and what kind ('app/category': each cap counts the
    -- kinds it covers).
    sent_at     float8[]    NOT NULL DEFAULT '{}',
    events      bigint[]    NOT NULL DEFAULT '{}',
    kinds       text[]      NOT NULL DEFAULT '{}',
    -- When the newest message leaves the longest window: the row can be forgotten then.
    expires_at  timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 80);

-- The caps' entries of one batch's people, created empty when new, locked until the caller's
-- transaction ends. Missing entries are inserted first (no lock on existing ones), then all
-- are locked in sorted order: daemons whose batches share people wait for one another and
-- never deadlock, and an entry is never rewritten just to lock it. An entry that maintenance
-- pruned between the two steps is inserted and locked again.
CREATE FUNCTION pushgres.lock_cap_ledger(subjects text[])
RETURNS TABLE (subject text, sent_at float8[], events bigint[], kinds text[])
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    wanted integer := cardinality(lock_cap_ledger.subjects);
    locked integer;
BEGIN
    LOOP
        INSERT INTO pushgres.cap_ledger AS l (subject)
        SELECT s.subject FROM unnest(lock_cap_ledger.subjects) AS s(subject) ORDER BY s.subject
        ON CONFLICT DO NOTHING;
        SELECT count(*) INTO locked FROM (
            SELECT 1 FROM pushgres.cap_ledger l
            WHERE l.subject = ANY (lock_cap_ledger.subjects)
            ORDER BY l.subject
            FOR UPDATE) AS x;
        EXIT WHEN locked >= wanted;
    END LOOP;
    RETURN QUERY
        SELECT l.subject, l.sent_at, l.events, l.kinds FROM pushgres.cap_ledger l
        WHERE l.subject = ANY (lock_cap_ledger.subjects);
END;
$$;

-- Fan-outs to people under a category, or at a local time.
ALTER TABLE pushgres.groups
    ADD COLUMN category       text,
    ADD COLUMN local_send_at  timestamp;

-- Fan-outs under a category, at a local time: open_fanout, send_to_users and send_to_user
-- take category and local_send_at (recorded on the group, given to each of its rows).
-- Versions 7's functions are replaced whole (their signatures change).
DROP FUNCTION pushgres.send_to_user(text, text, jsonb, jsonb, timestamptz, text, jsonb);
DROP FUNCTION pushgres.send_to_users(text, text[], jsonb, jsonb, timestamptz, text, jsonb, bigint,
                                     smallint, integer);
DROP FUNCTION pushgres.open_fanout(text, jsonb, jsonb, text, jsonb);

CREATE FUNCTION pushgres.open_fanout(
    target text,
    message jsonb,
    overrides jsonb DEFAULT NULL,
    dedupe_key text DEFAULT NULL,
    metadata jsonb DEFAULT NULL,
    category text DEFAULT NULL,
    local_send_at timestamp DEFAULT NULL
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
    IF category IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM pushgres.categories c WHERE c.name = category) THEN
        RAISE EXCEPTION 'pushgres.send_to_users: unknown category %', quote_literal(category)
            USING ERRCODE = '22023',
                  HINT = 'declare it as [categories.' || category || '] in the daemon''s config';
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
    INSERT INTO pushgres.groups AS gr (target, apps, message, overrides, dedupe_key, metadata,
                                       category, local_send_at)
    VALUES (target, target_apps, message, overrides, dedupe_key, metadata, category,
            local_send_at)
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
    slice integer DEFAULT NULL,
    category text DEFAULT NULL,
    local_send_at timestamp DEFAULT NULL
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
    due timestamptz;
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
        SELECT * INTO o FROM pushgres.open_fanout(target, message, overrides, dedupe_key, metadata,
                                                  category, local_send_at);
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
    -- A local send time: from the first moment it happens anywhere (UTC+14); the daemon holds
    -- each row until it happens in its device's time zone.
    due := coalesce(send_at, (g.local_send_at - interval '14 hours') AT TIME ZONE 'UTC', now());
    content := g.message - ARRAY['collapse_key', 'ttl', 'priority'];
    prio := CASE g.message ->> 'priority' WHEN 'normal' THEN 5 ELSE 10 END;
    IF g.message ? 'ttl' THEN
        -- With a local send time, the ttl counts from the last moment that time happens
        -- (UTC-12): every device gets the whole ttl from its own local time at least.
        expiry := CASE WHEN send_at IS NULL AND g.local_send_at IS NOT NULL
                       THEN (g.local_send_at + interval '12 hours') AT TIME ZONE 'UTC'
                       ELSE due END
                  + make_interval(secs => (g.message ->> 'ttl')::float8);
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
                                        metadata, message, user_id, group_id, category,
                                        local_send_at)
            SELECT d.app, d.platform, d.token, coalesce($3 -> d.platform, '{}'), $4, $5, $6,
                   $7, $8, $9, $10, d.user_id, $11, $12, $13
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
          expiry, due, max_attempts, g.metadata, content, gid, g.category, g.local_send_at;
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
    metadata jsonb DEFAULT NULL,
    category text DEFAULT NULL,
    local_send_at timestamp DEFAULT NULL
) RETURNS TABLE (group_id bigint, duplicate boolean, users bigint, users_without_device bigint,
                 notifications bigint)
LANGUAGE sql AS $$
    SELECT * FROM pushgres.send_to_users(target, ARRAY[user_id], message, overrides, send_at,
                                         dedupe_key, metadata, category => category,
                                         local_send_at => local_send_at);
$$;
