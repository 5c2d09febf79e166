-- pushgres schema, version 4: daemons record themselves and the apps they serve.
--
-- Several daemons may serve different subsets of apps on one database. Each one upserts its
-- row every few seconds; a notification is failed as UnknownApp only when no live daemon
-- (heartbeat within the liveness window) serves its app.

CREATE TABLE pushgres.daemons (
    id            text        PRIMARY KEY,
    host          text        NOT NULL,
    pid           integer     NOT NULL,
    apps          text[]      NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);
