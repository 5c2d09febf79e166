-- pushgres schema, version 10: deliveries written down as they are answered.
--
-- A batch's outcomes become durable when its claim transaction commits, after its last
-- answer. Until then a kill -9 (or a lost connection) rolls the whole batch back into the
-- queue, and every notification the provider had already accepted would be sent again.
-- pushgres.delivered closes that window: while a batch is on the wire, the daemon writes the
-- ids the provider accepted here every few milliseconds, one row per batch and write (the
-- batch's random key, the ids, the attempt of each), in transactions of their own; the batch
-- deletes its rows when it commits. A claim that finds a row here records it sent instead of
-- sending it again. After a kill only the notifications in flight at that moment (and those
-- answered in the last few milliseconds) can be delivered twice.
--
-- UNLOGGED: no WAL, so writing it costs little; Postgres empties it after its own crash (then
-- a batch rolled back by the same crash can be delivered twice, as before this table) and it
-- is not copied to standbys. It holds only what batches in flight have had accepted.

CREATE UNLOGGED TABLE pushgres.delivered (
    batch       bigint      NOT NULL,
    ids         bigint[]    NOT NULL,
    attempts    smallint[]  NOT NULL,
    written_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT delivered_parallel CHECK (cardinality(ids) = cardinality(attempts))
) WITH (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);

CREATE INDEX delivered_batch ON pushgres.delivered (batch);
