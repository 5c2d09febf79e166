-- pushgres schema, version 2: a row that holds its own dedupe key is never its own duplicate.
--
-- The daemon puts an interrupted first attempt back into the queue by re-inserting it with
-- the same id and attempts = 0 (an interrupted send is no attempt). Version 1's trigger found
-- the row's own key in pushgres.dedupe_keys and dropped the row: it vanished. A key taken by
-- the same id is now the row itself coming back, and the insert goes ahead.

CREATE OR REPLACE FUNCTION pushgres.queue_dedupe() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pushgres.dedupe_keys (app, dedupe_key, id)
    VALUES (NEW.app, NEW.dedupe_key, NEW.id)
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        RETURN NEW;
    END IF;
    PERFORM 1 FROM pushgres.dedupe_keys
    WHERE app = NEW.app AND dedupe_key = NEW.dedupe_key AND id = NEW.id;
    IF FOUND THEN
        RETURN NEW;  -- the row's own key: a re-insert, not a duplicate
    END IF;
    RETURN NULL;
END;
$$;
