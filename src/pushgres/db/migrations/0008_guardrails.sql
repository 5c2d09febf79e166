-- pushgres schema, version 8: guardrails -- categories, frequency caps, quiet hours, local time.
--
--   pushgres.categories  the config's notification categories, written by the daemon at start
--                        and at each reload, so that an enqueue naming an unknown category is
--                        refused by the database itself (a trigger on the queue).
--   pushgres.queue       gains the notification's category (NULL: its app's default), its own
--                        time zone (NULL: the registry's for the token, else the app's) and
--                        local_send_at, a wall-clock time at which to send it in the device's
--                        time zone ("09:00 on 24 December, wherever the device is").
--   pushgres.results     gains the category the notification was sent (or held back) under,
--                        and the terminal status 'suppressed' (a frequency cap held it back).
--   pushgres.cap_ledger  what each frequency cap has counted for each person: the times and
--                        the messages admitted within the cap's window, at most its limit.
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
    ADD CONSTRAINT queue_timezone_known CHECK (timezone IS NULL OR pushgres.is_time_zone(timezone));

-- An enqueue naming a category the config does not declare is refused, naming it. Rows without
-- a category (their app's default) pay nothing; the daemon's own re-inserts (retries,
-- deferrals) are not checked again, so a category removed from the config later cannot wedge
-- rows already queued under it.
CREATE FUNCTION pushgres.queue_category_known() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('pushgres.daemon', true), '') = 'on'
       OR EXISTS (SELECT 1 FROM pushgres.categories c WHERE c.name = NEW.category) THEN
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
    rule        text          NOT NULL,
    subject     text          NOT NULL,
    -- When each counted message was admitted, oldest first, and the message: a fan-out's
    -- group id, or minus the notification's id (a person's devices count one message once).
    sent_at     timestamptz[] NOT NULL DEFAULT '{}',
    events      bigint[]      NOT NULL DEFAULT '{}',
    -- When the newest entry leaves the window: the row can be forgotten after that.
    expires_at  timestamptz   NOT NULL DEFAULT now(),
    PRIMARY KEY (rule, subject)
) WITH (fillfactor = 80);

-- Fan-outs to people under a category, or at a local time.
ALTER TABLE pushgres.groups
    ADD COLUMN category       text,
    ADD COLUMN local_send_at  timestamp;
