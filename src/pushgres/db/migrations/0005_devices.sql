-- pushgres schema, version 5: the device registry.
--
--   pushgres.devices        one row per (app, token): the user it belongs to (NULL: anonymous),
--                           where it runs (APNs environment, time zone, locale, app version,
--                           free attributes), when it was registered, last seen and last changed
--                           state, and its state: active, invalid (a provider said it is dead,
--                           with the provider's timestamp), stale, uninstalled, unregistered.
--   pushgres.device_events  each device's history: registered, seen, identified, logged out,
--                           moved (to another user), rotated (replaced by a new token),
--                           invalidated, reactivated, unregistered.
--
-- A token belongs to at most one user per app (the primary key): registering or identifying it
-- for another user moves it. Every operation is a function; each takes effect in the caller's
-- transaction. Apple's rule for a 410 answer holds: a token registered after the provider's
-- invalidation timestamp is active again, one registered before it stays invalid ("Handling
-- notification responses from APNs").

CREATE TABLE pushgres.devices (
    app               text        NOT NULL,
    platform          text        NOT NULL,
    token             text        NOT NULL,
    user_id           text,
    installation_id   text,
    environment       text,
    timezone          text,
    locale            text,
    app_version       text,
    attributes        jsonb       NOT NULL DEFAULT '{}',
    state             text        NOT NULL DEFAULT 'active',
    state_reason      text,
    invalidated_at    timestamptz,
    registered_at     timestamptz NOT NULL DEFAULT now(),
    last_seen_at      timestamptz NOT NULL DEFAULT now(),
    state_changed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app, token),
    CONSTRAINT devices_platform CHECK (platform IN ('apns', 'fcm')),
    CONSTRAINT devices_state CHECK (
        state IN ('active', 'invalid', 'stale', 'uninstalled', 'unregistered')),
    CONSTRAINT devices_environment CHECK (environment IN ('production', 'sandbox')),
    CONSTRAINT devices_token_length CHECK (length(token) BETWEEN 1 AND 4096),
    CONSTRAINT devices_apns_token_hex CHECK (platform <> 'apns' OR token ~ '^[0-9A-Fa-f]+$'),
    CONSTRAINT devices_fcm_token_chars CHECK (platform <> 'fcm' OR token ~ '^[A-Za-z0-9_:.-]+$'),
    CONSTRAINT devices_user_length CHECK (length(user_id) BETWEEN 1 AND 256),
    CONSTRAINT devices_attributes_object CHECK (jsonb_typeof(attributes) = 'object')
);

CREATE INDEX devices_user ON pushgres.devices (app, user_id) WHERE user_id IS NOT NULL;
CREATE INDEX devices_installation ON pushgres.devices (app, installation_id)
    WHERE installation_id IS NOT NULL;

CREATE TABLE pushgres.device_events (
    id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    app      text        NOT NULL,
    token    text        NOT NULL,
    at       timestamptz NOT NULL DEFAULT now(),
    event    text        NOT NULL,
    user_id  text,
    detail   jsonb
);

CREATE INDEX device_events_token ON pushgres.device_events (app, token, id);

-- Register (or refresh) one device. Returns its state afterwards and what happened:
-- 'registered' (new), 'seen' (known, nothing changed but last seen), 'moved' (now another
-- user's), 'identified', 'reactivated' (registered after its invalidation), 'still_invalid'
-- (registered before it), 'rotated' (it replaced the installation's previous token).
CREATE FUNCTION pushgres.register_device(
    app text,
    platform text,
    token text,
    user_id text DEFAULT NULL,
    installation_id text DEFAULT NULL,
    environment text DEFAULT NULL,
    timezone text DEFAULT NULL,
    locale text DEFAULT NULL,
    app_version text DEFAULT NULL,
    attributes jsonb DEFAULT NULL,
    registered_at timestamptz DEFAULT now()
) RETURNS TABLE (state text, event text)
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    old pushgres.devices%ROWTYPE;
    previous pushgres.devices%ROWTYPE;
    happened text;
    new_state text := 'active';
    owner text := user_id;
BEGIN
    IF timezone IS NOT NULL THEN
        BEGIN
            PERFORM now() AT TIME ZONE timezone;
        EXCEPTION WHEN invalid_parameter_value THEN
            RAISE EXCEPTION 'device %: time zone % is not an IANA time zone name', token, timezone
                USING ERRCODE = '22023';
        END;
    END IF;
    SELECT * INTO old FROM pushgres.devices d
    WHERE d.app = register_device.app AND d.token = register_device.token
    FOR UPDATE;
    -- Token rotation: the installation's previous active token is retired, its user moves.
    IF installation_id IS NOT NULL THEN
        SELECT * INTO previous FROM pushgres.devices d
        WHERE d.app = register_device.app AND d.installation_id = register_device.installation_id
          AND d.token <> register_device.token AND d.state = 'active'
        FOR UPDATE;
        IF FOUND THEN
            UPDATE pushgres.devices d
            SET state = 'unregistered', state_reason = 'rotated', state_changed_at = now(),
                user_id = NULL
            WHERE d.app = previous.app AND d.token = previous.token;
            INSERT INTO pushgres.device_events (app, token, event, user_id, detail)
            VALUES (app, previous.token, 'rotated', previous.user_id,
                    jsonb_build_object('replaced_by', token));
            owner := coalesce(owner, previous.user_id);
        END IF;
    END IF;
    IF old.token IS NULL THEN
        INSERT INTO pushgres.devices AS d (app, platform, token, user_id, installation_id,
            environment, timezone, locale, app_version, attributes, registered_at, last_seen_at)
        VALUES (app, platform, token, owner, installation_id, environment, timezone, locale,
                app_version, coalesce(attributes, '{}'), registered_at,
                greatest(registered_at, now()));
        happened := CASE WHEN previous.token IS NOT NULL THEN 'rotated' ELSE 'registered' END;
    ELSE
        IF old.platform <> platform THEN
            RAISE EXCEPTION 'device %: registered for % already, not %', token, old.platform, platform
                USING ERRCODE = '22023';
        END IF;
        new_state := old.state;
        happened := 'seen';
        IF old.state = 'invalid' THEN
            IF registered_at > coalesce(old.invalidated_at, old.state_changed_at) THEN
                new_state := 'active';
                happened := 'reactivated';
                DELETE FROM pushgres.invalid_tokens t
                WHERE t.app = register_device.app AND t.device_token = register_device.token;
            ELSE
                happened := 'still_invalid';
            END IF;
        ELSIF old.state <> 'active' THEN
            new_state := 'active';  -- stale, uninstalled or unregistered: seen again
            happened := 'reactivated';
        END IF;
        IF new_state = 'active' AND owner IS NOT NULL AND owner IS DISTINCT FROM old.user_id THEN
            happened := CASE WHEN old.user_id IS NULL THEN 'identified' ELSE 'moved' END;
        END IF;
        IF previous.token IS NOT NULL THEN
            happened := 'rotated';
        END IF;
        UPDATE pushgres.devices d
        SET user_id = CASE WHEN new_state = 'active' THEN coalesce(owner, d.user_id)
                           ELSE d.user_id END,
            installation_id = coalesce(register_device.installation_id, d.installation_id),
            environment = coalesce(register_device.environment, d.environment),
            timezone = coalesce(register_device.timezone, d.timezone),
            locale = coalesce(register_device.locale, d.locale),
            app_version = coalesce(register_device.app_version, d.app_version),
            attributes = CASE WHEN register_device.attributes IS NULL THEN d.attributes
                              ELSE d.attributes || register_device.attributes END,
            last_seen_at = greatest(d.last_seen_at, now()),
            state = new_state,
            state_reason = CASE WHEN new_state = d.state THEN d.state_reason END,
            invalidated_at = CASE WHEN new_state = 'invalid' THEN d.invalidated_at END,
            state_changed_at = CASE WHEN new_state = d.state THEN d.state_changed_at ELSE now() END
        WHERE d.app = register_device.app AND d.token = register_device.token;
    END IF;
    IF happened <> 'seen' THEN
        INSERT INTO pushgres.device_events (app, token, event, user_id, detail)
        VALUES (app, token, happened, owner,
                CASE WHEN happened = 'moved' THEN jsonb_build_object('from', old.user_id) END);
    END IF;
    RETURN QUERY SELECT new_state, happened;
END;
$$;

-- Attach a device to a user (at login or checkout). A token belongs to one user per app:
-- identifying it for another user moves it. Returns false when the registry does not know it.
CREATE FUNCTION pushgres.identify_device(app text, token text, user_id text)
RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    before text;
BEGIN
    IF user_id IS NULL THEN
        RAISE EXCEPTION 'identify_device: user_id is required (logout_device detaches a device)'
            USING ERRCODE = '22023';
    END IF;
    SELECT d.user_id INTO before FROM pushgres.devices d
    WHERE d.app = identify_device.app AND d.token = identify_device.token FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF before IS DISTINCT FROM user_id THEN
        UPDATE pushgres.devices d SET user_id = identify_device.user_id
        WHERE d.app = identify_device.app AND d.token = identify_device.token;
        INSERT INTO pushgres.device_events (app, token, event, user_id, detail)
        VALUES (app, token, CASE WHEN before IS NULL THEN 'identified' ELSE 'moved' END, user_id,
                CASE WHEN before IS NOT NULL THEN jsonb_build_object('from', before) END);
    END IF;
    RETURN true;
END;
$$;

-- Detach a device from its user (logout): it stays registered, anonymous, and stops receiving
-- that user's notifications. Returns false when the registry does not know it.
CREATE FUNCTION pushgres.logout_device(app text, token text)
RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    before text;
BEGIN
    SELECT d.user_id INTO before FROM pushgres.devices d
    WHERE d.app = logout_device.app AND d.token = logout_device.token FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF before IS NOT NULL THEN
        UPDATE pushgres.devices d SET user_id = NULL
        WHERE d.app = logout_device.app AND d.token = logout_device.token;
        INSERT INTO pushgres.device_events (app, token, event, user_id)
        VALUES (app, token, 'logged_out', before);
    END IF;
    RETURN true;
END;
$$;

-- A new token replaces an old one of the same installation: the old one is retired
-- (unregistered), the new one takes its user (and is registered if new). Returns the new
-- token's event, as register_device does; false-y (NULL) when the old token is unknown.
CREATE FUNCTION pushgres.rotate_device_token(app text, old_token text, new_token text)
RETURNS text
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    old pushgres.devices%ROWTYPE;
    happened text;
BEGIN
    SELECT * INTO old FROM pushgres.devices d
    WHERE d.app = rotate_device_token.app AND d.token = old_token FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    UPDATE pushgres.devices d
    SET state = 'unregistered', state_reason = 'rotated', state_changed_at = now(), user_id = NULL
    WHERE d.app = rotate_device_token.app AND d.token = old_token;
    INSERT INTO pushgres.device_events (app, token, event, user_id, detail)
    VALUES (app, old_token, 'rotated', old.user_id, jsonb_build_object('replaced_by', new_token));
    SELECT r.event INTO happened FROM pushgres.register_device(
        app, old.platform, new_token, user_id => old.user_id,
        installation_id => old.installation_id, environment => old.environment,
        timezone => old.timezone, locale => old.locale, app_version => old.app_version,
        attributes => old.attributes) AS r;
    RETURN happened;
END;
$$;

-- Unregister devices (the app said the token is no longer used): they receive nothing more.
-- Returns how many known, not already unregistered, devices were unregistered.
CREATE FUNCTION pushgres.unregister_devices(app text, tokens text[])
RETURNS bigint
LANGUAGE sql AS $$
    WITH gone AS (
        UPDATE pushgres.devices d
        SET state = 'unregistered', state_reason = 'unregistered', state_changed_at = now()
        FROM (SELECT DISTINCT t FROM unnest(tokens) AS t) AS t(token)
        WHERE d.app = unregister_devices.app AND d.token = t.token AND d.state <> 'unregistered'
        RETURNING d.app, d.token, d.user_id
    ), logged AS (
        INSERT INTO pushgres.device_events (app, token, event, user_id)
        SELECT app, token, 'unregistered', user_id FROM gone
    )
    SELECT count(*) FROM gone
$$;

CREATE FUNCTION pushgres.unregister_device(app text, token text)
RETURNS boolean
LANGUAGE sql AS $$
    SELECT pushgres.unregister_devices(app, ARRAY[token]) > 0
$$;
