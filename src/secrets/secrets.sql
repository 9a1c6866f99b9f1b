-- Secrets at rest: the table (envelopes only), its policies, the pgcrypto
-- import and the grants.

-- Secrets at rest: only the envelope (see README "Secrets at rest") is stored.
CREATE TABLE tenant_guard.secrets (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL REFERENCES tenant_guard.organizations (id) ON DELETE CASCADE,
    kind text NOT NULL CHECK (length(kind) BETWEEN 1 AND 100),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 500),
    ciphertext bytea NOT NULL CHECK (length(ciphertext) >= 33 AND get_byte(ciphertext, 0) = 1),
    key_id bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, kind, name)
);
CREATE INDEX secrets_key_id_idx ON tenant_guard.secrets (key_id);

ALTER TABLE tenant_guard.secrets ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_guard.secrets FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_guard_select ON tenant_guard.secrets
    FOR SELECT USING (org_id = tenant_guard.current_org_id_if('admin'));
CREATE POLICY tenant_guard_service_read ON tenant_guard.secrets FOR SELECT TO tenant_guard_service USING (true);

-- Migration from pgcrypto: decrypt rows of `source` (columns org_id uuid,
-- kind text, name text, ciphertext bytea made by pgp_sym_encrypt) with the
-- old key and store each under tenant_guard's envelope. Runs with the
-- caller's rights (it must be able to read `source`); service role only.
CREATE FUNCTION tenant_guard.import_pgcrypto_secrets(source regclass, pgp_key text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    pgcrypto_schema name;
    n bigint;
BEGIN
    SELECT e.extnamespace::regnamespace::name INTO pgcrypto_schema FROM pg_extension e WHERE e.extname = 'pgcrypto';
    IF pgcrypto_schema IS NULL THEN
        RAISE EXCEPTION 'pgcrypto is not installed in this database' USING ERRCODE = '55000';
    END IF;
    EXECUTE format(
        'SELECT count(tenant_guard.put_secret_for(s.org_id, s.kind, s.name, %I.pgp_sym_decrypt(s.ciphertext, $1))) FROM %s s',
        pgcrypto_schema, source)
    INTO n USING pgp_key;
    RETURN n;
END
$$;

SELECT pg_catalog.pg_extension_config_dump('tenant_guard.secrets', '');

REVOKE ALL ON tenant_guard.secrets FROM PUBLIC;
REVOKE ALL ON FUNCTION
    tenant_guard.put_secret(text, text, text), tenant_guard.delete_secret(text, text),
    tenant_guard.put_wordpress_credentials(text, text, text),
    tenant_guard.encrypt(bytea, bytea), tenant_guard.decrypt(bytea, bytea),
    tenant_guard.get_secret(uuid, text, text), tenant_guard.put_secret_for(uuid, text, text, text),
    tenant_guard.get_wordpress_credentials(uuid, text), tenant_guard.wordpress_authorization(uuid, text),
    tenant_guard.rotate_secrets(int), tenant_guard.import_pgcrypto_secrets(regclass, text)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    tenant_guard.put_secret(text, text, text), tenant_guard.delete_secret(text, text),
    tenant_guard.put_wordpress_credentials(text, text, text)
TO PUBLIC;
GRANT EXECUTE ON FUNCTION
    tenant_guard.encrypt(bytea, bytea), tenant_guard.decrypt(bytea, bytea),
    tenant_guard.get_secret(uuid, text, text), tenant_guard.put_secret_for(uuid, text, text, text),
    tenant_guard.get_wordpress_credentials(uuid, text), tenant_guard.wordpress_authorization(uuid, text),
    tenant_guard.rotate_secrets(int), tenant_guard.import_pgcrypto_secrets(regclass, text)
TO tenant_guard_service;
-- Org admins list metadata (RLS); the ciphertext column is not granted to PUBLIC.
GRANT SELECT (id, org_id, kind, name, key_id, created_at, updated_at) ON tenant_guard.secrets TO PUBLIC;
GRANT SELECT ON tenant_guard.secrets TO tenant_guard_service;

-- Functions that receive keys or secrets as arguments (all SECURITY DEFINER,
-- as only a superuser may set this parameter): an ERROR raised inside
-- them must not log the calling statement (log_min_error_statement would put
-- a literal key or secret into the server log). The setting is applied while
-- the function runs, which is when its errors are logged.
-- (authenticate() and authenticate_jwt(), on every request's path, set it
-- transaction-locally just before raising instead: no cost when they succeed.
-- webhooks.sql does the same for its two.)
ALTER FUNCTION tenant_guard.put_secret(text, text, text) SET log_min_error_statement = panic;
ALTER FUNCTION tenant_guard.put_secret_for(uuid, text, text, text) SET log_min_error_statement = panic;
ALTER FUNCTION tenant_guard.put_wordpress_credentials(text, text, text) SET log_min_error_statement = panic;
ALTER FUNCTION tenant_guard.encrypt(bytea, bytea) SET log_min_error_statement = panic;
ALTER FUNCTION tenant_guard.decrypt(bytea, bytea) SET log_min_error_statement = panic;
-- (import_pgcrypto_secrets runs with its caller's rights, so it cannot carry
-- this setting: pass the pgcrypto key to it as a bind parameter.)
