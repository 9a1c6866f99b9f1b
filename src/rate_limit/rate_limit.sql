-- rate_limit(): the SQL face of the shared-memory GCRA limiter.

CREATE FUNCTION tenant_guard.rate_limit(bucket text, per_period int, period interval, burst int DEFAULT 0)
RETURNS boolean
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT tenant_guard._rate_limit(bucket, per_period, (extract(epoch FROM period) * 1000000)::bigint, burst) $$;
COMMENT ON FUNCTION tenant_guard.rate_limit(text, int, interval, int) IS
    'GCRA: true when this call is admitted; buckets are per database and org; NULL arguments raise 22004';

REVOKE ALL ON FUNCTION tenant_guard.rate_limit(text, int, interval, int), tenant_guard._rate_limit(text, int, bigint, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenant_guard.rate_limit(text, int, interval, int), tenant_guard._rate_limit(text, int, bigint, int) TO PUBLIC;
