-- pushgres schema, version 3: enqueue results a caller can use; outcomes in input order.
--
-- Version 1's pushgres.enqueue_many returned the ids of the rows it inserted and nothing for
-- an element whose (app, dedupe_key) was taken: the caller could not tell which element was
-- dropped, nor find the notification it duplicated (to read its outcome). It now returns one
-- row per element, in input order: its 1-based position, the id of the notification it
-- stands for (the new row's, or for a duplicate the id that holds the key in
-- pushgres.dedupe_keys) and whether it was a duplicate. Within one call, an element repeating
-- an earlier element's (app, dedupe_key) is a duplicate of that element. The return type
-- changes, so the function is dropped and created again.
--
-- pushgres.outcome returned its rows in no particular order; it now returns them in the order
-- of the ids given (one row per element naming a known notification).

DROP FUNCTION pushgres.enqueue_many(
    text[], text[], text[], jsonb[], smallint[], text[], text[], timestamptz[], text[],
    timestamptz[], text[], smallint[], jsonb[]);

-- Bulk enqueue from SQL: parallel arrays, one notification per element. The optional arrays
-- may be NULL (every element takes the default); a given array has one element per
-- notification, else the call fails naming it (SQLSTATE 22023).
CREATE FUNCTION pushgres.enqueue_many(
    apps text[],
    platforms text[],
    device_tokens text[],
    payloads jsonb[],
    priorities smallint[] DEFAULT NULL,
    push_types text[] DEFAULT NULL,
    collapse_ids text[] DEFAULT NULL,
    expires_ats timestamptz[] DEFAULT NULL,
    topics text[] DEFAULT NULL,
    send_ats timestamptz[] DEFAULT NULL,
    dedupe_keys text[] DEFAULT NULL,
    max_attempts_list smallint[] DEFAULT NULL,
    metadatas jsonb[] DEFAULT NULL
) RETURNS TABLE (ord bigint, id bigint, duplicate boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    n integer := coalesce(cardinality(enqueue_many.apps), 0);
    bad text;
    new_ids bigint[];
BEGIN
    SELECT string_agg(format('%s has %s', a.name, coalesce(a.len::text, 'none (NULL)')), ', ')
    INTO bad
    FROM (VALUES
        ('platforms', cardinality(enqueue_many.platforms), true),
        ('device_tokens', cardinality(enqueue_many.device_tokens), true),
        ('payloads', cardinality(enqueue_many.payloads), true),
        ('priorities', cardinality(enqueue_many.priorities), false),
        ('push_types', cardinality(enqueue_many.push_types), false),
        ('collapse_ids', cardinality(enqueue_many.collapse_ids), false),
        ('expires_ats', cardinality(enqueue_many.expires_ats), false),
        ('topics', cardinality(enqueue_many.topics), false),
        ('send_ats', cardinality(enqueue_many.send_ats), false),
        ('dedupe_keys', cardinality(enqueue_many.dedupe_keys), false),
        ('max_attempts_list', cardinality(enqueue_many.max_attempts_list), false),
        ('metadatas', cardinality(enqueue_many.metadatas), false)
    ) AS a(name, len, required)
    WHERE a.len IS DISTINCT FROM n AND (a.required OR a.len IS NOT NULL);
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'pushgres.enqueue_many: apps has % element(s), but %', n, bad
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'give every array one element per notification, or NULL for the defaults';
    END IF;
    IF n = 0 THEN
        RETURN;
    END IF;

    -- Ids are drawn first so that each element knows the id of its own row.
    new_ids := ARRAY(SELECT nextval(pg_get_serial_sequence('pushgres.queue', 'id'))
                     FROM generate_series(1, n));

    -- In input order, so that of two elements with one (app, dedupe_key) the first is kept.
    INSERT INTO pushgres.queue (id, app, platform, device_token, payload, priority, push_type,
                                collapse_id, expires_at, topic, send_at, dedupe_key,
                                max_attempts, metadata)
    SELECT a.id, a.app, a.platform, a.device_token, a.payload, coalesce(a.priority, 10),
           a.push_type, a.collapse_id, a.expires_at, a.topic, coalesce(a.send_at, now()),
           a.dedupe_key, coalesce(a.max_attempts, 5), a.metadata
    FROM unnest(new_ids, enqueue_many.apps, enqueue_many.platforms, enqueue_many.device_tokens,
                enqueue_many.payloads, enqueue_many.priorities, enqueue_many.push_types,
                enqueue_many.collapse_ids, enqueue_many.expires_ats, enqueue_many.topics,
                enqueue_many.send_ats, enqueue_many.dedupe_keys, enqueue_many.max_attempts_list,
                enqueue_many.metadatas)
         WITH ORDINALITY
         AS a(id, app, platform, device_token, payload, priority, push_type, collapse_id,
              expires_at, topic, send_at, dedupe_key, max_attempts, metadata, ord)
    ORDER BY a.ord;

    -- A new statement, so it sees the rows just inserted and every key the dedupe trigger
    -- found taken (including keys committed by others while the INSERT ran). An element whose
    -- row is not in the queue was skipped by the trigger: a duplicate.
    RETURN QUERY
    SELECT e.ord, coalesce(q.id, d.id), q.id IS NULL
    FROM unnest(new_ids, enqueue_many.apps, enqueue_many.dedupe_keys) WITH ORDINALITY
         AS e(new_id, app, dedupe_key, ord)
    LEFT JOIN pushgres.queue q ON q.id = e.new_id
    LEFT JOIN pushgres.dedupe_keys d
           ON q.id IS NULL AND d.app = e.app AND d.dedupe_key = e.dedupe_key
    ORDER BY e.ord;
END;
$$;

-- A notification's outcome by id: 'queued' while it waits in the hot table, else its result.
-- Rows come in the order of ids; ids of unknown notifications give no row.
CREATE OR REPLACE FUNCTION pushgres.outcome(ids bigint[])
RETURNS TABLE (
    id bigint, app text, platform text, status text, provider_status smallint, reason text,
    provider_id text, attempts smallint, enqueued_at timestamptz, finished_at timestamptz,
    metadata jsonb
)
LANGUAGE sql STABLE AS $$
    SELECT f.id, f.app, f.platform, f.status, f.provider_status, f.reason, f.provider_id,
           f.attempts, f.enqueued_at, f.finished_at, f.metadata
    FROM unnest(ids) WITH ORDINALITY AS i(id, ord)
    JOIN (
        SELECT q.id, q.app, q.platform, 'queued' AS status, NULL::smallint AS provider_status,
               q.last_reason AS reason, NULL::text AS provider_id, q.attempts, q.enqueued_at,
               NULL::timestamptz AS finished_at, q.metadata
        FROM pushgres.queue q WHERE q.id = ANY(ids)
        UNION ALL
        SELECT r.id, r.app, r.platform, r.status, r.provider_status, r.reason, r.provider_id,
               r.attempts, r.enqueued_at, r.finished_at, r.metadata
        FROM pushgres.results r WHERE r.id = ANY(ids)
    ) f ON f.id = i.id
    ORDER BY i.ord;
$$;
