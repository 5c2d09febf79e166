-- pushgres schema, version 9: the queue is cut into shards by a hash of the device token.
--
-- Each row's shard is hashtext(device_token) modulo pushgres.queue_shards() (16), computed by
-- Postgres on insert. A device's rows are always in one shard, so the claim keeps their order
-- there. Every claim statement reads the bulk rows of one shard of one app (`shard = $3` in
-- claim_batch): daemons serving the same app each claim their own shards first (shares
-- assigned from pushgres.daemons, see pipeline/shards.py), so they do not scan and skip each
-- other's locked rows in one index range. The transactional lane stays one small index across
-- shards (a password reset is not kept waiting for its shard's turn). Adding the column
-- rewrites the queue once.

CREATE FUNCTION pushgres.queue_shards() RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS 'SELECT 16';

ALTER TABLE pushgres.queue
    ADD COLUMN shard smallint NOT NULL
        GENERATED ALWAYS AS ((hashtext(device_token) & 15)::smallint) STORED;

DROP INDEX pushgres.queue_claim;
CREATE INDEX queue_claim ON pushgres.queue (app, shard, priority DESC, send_at, id);
