-- The request log: the table the writer fills, its policies, the purge and the grants.

-- Every authenticate() outcome; written by the request-log worker, never
-- the key. Partitioned by day (UTC): at 1,000 requests a second the log
-- gains 86 million rows a day, and purge_request_log() drops whole days
-- instead of deleting them row by row.
CREATE TABLE tenant_guard.request_log (
    id bigserial,
    at timestamptz NOT NULL,
    org_id uuid,
    api_key_id uuid,
    outcome text NOT NULL CHECK (outcome IN ('ok', 'invalid', 'revoked', 'expired', 'rate_limited')),
    action text,
    client_addr inet
) PARTITION BY RANGE (at);
-- No index on the partitioned table itself: each partition gets its own
-- (below), so that pg_dump keeps partitions a restore can re-create and
-- attach (a parent index would make the restore create them twice).

-- The partition of `day` (UTC), request_log_pYYYYMMDD, made when missing
-- (by the log writer, ahead of need, and by the purge): created on its own
-- and then attached, which takes no lock that a reader of the log holds.
-- Its rows are read through request_log (RLS there); the partition itself
-- has row-level security without policies: only its owner reads it.
CREATE FUNCTION tenant_guard._request_log_partition(day date)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    part text := format('request_log_p%s', to_char(day, 'YYYYMMDD'));
    lo timestamptz := (day::timestamp AT TIME ZONE 'UTC');
BEGIN
    IF day IS NULL THEN
        RAISE EXCEPTION 'day must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF to_regclass(format('tenant_guard.%I', part)) IS NOT NULL THEN
        RETURN;
    END IF;
    BEGIN
        EXECUTE format('CREATE TABLE tenant_guard.%I (LIKE tenant_guard.request_log INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
        EXECUTE format('CREATE INDEX ON tenant_guard.%I (org_id, at)', part);
        EXECUTE format('ALTER TABLE tenant_guard.%I ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY', part);
        EXECUTE format('ALTER TABLE tenant_guard.request_log ATTACH PARTITION tenant_guard.%I FOR VALUES FROM (%L) TO (%L)',
                       part, lo, lo + interval '1 day');
    EXCEPTION
        WHEN duplicate_table OR duplicate_object THEN
            NULL;   -- made meanwhile by another session
        WHEN invalid_object_definition THEN
            NULL;   -- the day lies in a wider partition (the log of a
                    -- 0.1.0 database, attached by the 0.2.0 update)
    END;
END
$$;

ALTER TABLE tenant_guard.request_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_guard.request_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_guard_select ON tenant_guard.request_log
    FOR SELECT USING (org_id = tenant_guard.current_org_id_if('admin'));
CREATE POLICY tenant_guard_service_read ON tenant_guard.request_log FOR SELECT TO tenant_guard_service USING (true);

-- When each maintenance task last ran (security_audit() reports a request
-- log that has not been purged for long).
CREATE TABLE tenant_guard.maintenance_runs (
    task text PRIMARY KEY,
    last_run_at timestamptz NOT NULL,
    last_count bigint NOT NULL
);
ALTER TABLE tenant_guard.maintenance_runs ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_guard.maintenance_runs FORCE ROW LEVEL SECURITY;
SELECT pg_catalog.pg_extension_config_dump('tenant_guard.maintenance_runs', '');
REVOKE ALL ON tenant_guard.maintenance_runs FROM PUBLIC;

-- The cut of a purge: now() minus `older_than`, which must be given and
-- must not put the cut in the future (an interval that compares as
-- non-negative, such as '-1 mon +30 days 1 hour', can). Both purges use it.
CREATE FUNCTION tenant_guard._purge_cut(older_than interval)
RETURNS timestamptz
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF older_than IS NULL THEN
        RAISE EXCEPTION 'older_than must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF now() - older_than > now() THEN
        RAISE EXCEPTION 'older_than must not put the cut in the future' USING ERRCODE = '22023',
            HINT = 'Give a non-negative interval, such as ''30 days''.';
    END IF;
    RETURN now() - older_than;
END
$$;

-- Remove entries older than `older_than`: whole partitions below the cut
-- are dropped (counted first, no row is deleted one by one); the rows
-- before the cut in the partition that holds it are deleted. Dropping a
-- partition locks the whole log, so the purge waits for that lock at most
-- 100 ms (readers queue behind the wait), and once it cannot have it,
-- deletes the rows of the remaining old days instead: a long transaction
-- that reads the log delays the dropping of days, not the purge (their
-- empty partitions go at a later run). Makes today's and tomorrow's
-- partitions if missing. Returns how many rows went.
CREATE FUNCTION tenant_guard.purge_request_log(older_than interval)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint := 0;
    k bigint;
    cutoff timestamptz := tenant_guard._purge_cut(older_than);
    waited text := current_setting('lock_timeout');
    dropping boolean := true;
    p record;
BEGIN
    FOR p IN SELECT c.oid::regclass AS part,
                    (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz AS hi,
                    (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\)'))[1]::timestamptz AS lo
               FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = 'tenant_guard.request_log'::regclass
              ORDER BY 2 LOOP
        IF p.hi IS NOT NULL AND p.hi <= cutoff THEN
            IF dropping THEN
                BEGIN
                    PERFORM set_config('lock_timeout', '100ms', true);
                    EXECUTE format('SELECT count(*) FROM %s', p.part) INTO k;
                    EXECUTE format('DROP TABLE %s', p.part);
                    PERFORM set_config('lock_timeout', waited, true);
                    n := n + k;
                    CONTINUE;
                EXCEPTION WHEN lock_not_available THEN
                    dropping := false;   -- (the block's setting is undone)
                END;
            END IF;
            EXECUTE format('DELETE FROM %s', p.part);
            GET DIAGNOSTICS k = ROW_COUNT;
            n := n + k;
        ELSIF p.lo IS NULL OR p.lo < cutoff THEN
            EXECUTE format('DELETE FROM %s WHERE at < $1', p.part) USING cutoff;
            GET DIAGNOSTICS k = ROW_COUNT;
            n := n + k;
        END IF;
    END LOOP;
    PERFORM tenant_guard._request_log_partition((now() AT TIME ZONE 'UTC')::date);
    PERFORM tenant_guard._request_log_partition((now() AT TIME ZONE 'UTC')::date + 1);
    INSERT INTO tenant_guard.maintenance_runs AS m (task, last_run_at, last_count)
    VALUES ('purge_request_log', now(), n)
    ON CONFLICT (task) DO UPDATE SET last_run_at = excluded.last_run_at, last_count = excluded.last_count;
    RETURN n;
END
$$;

-- (Its partitions are ordinary tables: pg_dump keeps them, rows included.)
SELECT pg_catalog.pg_extension_config_dump('tenant_guard.request_log_id_seq', '');

REVOKE ALL ON tenant_guard.request_log FROM PUBLIC;
REVOKE ALL ON FUNCTION tenant_guard.purge_request_log(interval), tenant_guard.request_log_queue(),
    tenant_guard._request_log_partition(date), tenant_guard._purge_cut(interval) FROM PUBLIC;
GRANT SELECT ON tenant_guard.request_log TO PUBLIC;    -- rows filtered by RLS (admins, own org)
GRANT SELECT ON tenant_guard.request_log TO tenant_guard_service;
GRANT EXECUTE ON FUNCTION tenant_guard.purge_request_log(interval), tenant_guard.request_log_queue() TO tenant_guard_service;
