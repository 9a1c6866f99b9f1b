-- The request log: the table the writer fills, its policies, the purge and the grants.

-- Every authenticate() outcome; written by the request-log worker, never the key.
CREATE TABLE tenant_guard.request_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL,
    org_id uuid,
    api_key_id uuid,
    outcome text NOT NULL CHECK (outcome IN ('ok', 'invalid', 'revoked', 'expired', 'rate_limited')),
    action text,
    client_addr inet
);
CREATE INDEX request_log_org_at_idx ON tenant_guard.request_log (org_id, at);
-- BRIN: the log is append-only in time order, and purge_request_log() is its only user.
CREATE INDEX request_log_at_idx ON tenant_guard.request_log USING brin (at);

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

CREATE FUNCTION tenant_guard.purge_request_log(older_than interval)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'older_than must be a non-negative interval' USING ERRCODE = '22023';
    END IF;
    DELETE FROM tenant_guard.request_log WHERE at < now() - older_than;
    GET DIAGNOSTICS n = ROW_COUNT;
    INSERT INTO tenant_guard.maintenance_runs AS m (task, last_run_at, last_count)
    VALUES ('purge_request_log', now(), n)
    ON CONFLICT (task) DO UPDATE SET last_run_at = excluded.last_run_at, last_count = excluded.last_count;
    RETURN n;
END
$$;

SELECT pg_catalog.pg_extension_config_dump('tenant_guard.request_log', '');
SELECT pg_catalog.pg_extension_config_dump('tenant_guard.request_log_id_seq', '');

REVOKE ALL ON tenant_guard.request_log FROM PUBLIC;
REVOKE ALL ON FUNCTION tenant_guard.purge_request_log(interval), tenant_guard.request_log_queue() FROM PUBLIC;
GRANT SELECT ON tenant_guard.request_log TO PUBLIC;    -- rows filtered by RLS (admins, own org)
GRANT SELECT ON tenant_guard.request_log TO tenant_guard_service;
GRANT EXECUTE ON FUNCTION tenant_guard.purge_request_log(interval), tenant_guard.request_log_queue() TO tenant_guard_service;
