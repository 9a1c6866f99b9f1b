-- API keys: the table (hashes only), its policies, revoke_api_key() and the grants.

-- API keys: only the SHA-256 of a key is stored; `prefix` is the public
-- display part (first 12 characters).
CREATE TABLE tenant_guard.api_keys (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL REFERENCES tenant_guard.organizations (id) ON DELETE CASCADE,
    name text NOT NULL,
    prefix text NOT NULL,
    key_hash bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    role text NOT NULL REFERENCES tenant_guard.roles (name),
    scopes text[] NOT NULL DEFAULT '{}',
    rate_limit_per_minute int NOT NULL DEFAULT 600 CHECK (rate_limit_per_minute > 0),
    expires_at timestamptz,
    revoked_at timestamptz,
    last_used_at timestamptz,
    created_by uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    rotated_to uuid REFERENCES tenant_guard.api_keys (id) ON DELETE SET NULL
);
CREATE INDEX api_keys_org_idx ON tenant_guard.api_keys (org_id);
CREATE INDEX api_keys_created_by_idx ON tenant_guard.api_keys (org_id, created_by);

ALTER TABLE tenant_guard.api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_guard.api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_guard_select ON tenant_guard.api_keys
    FOR SELECT USING (org_id = tenant_guard.current_org_id_if('admin'));
CREATE POLICY tenant_guard_service_read ON tenant_guard.api_keys FOR SELECT TO tenant_guard_service USING (true);

CREATE FUNCTION tenant_guard.revoke_api_key(key_id uuid)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM tenant_guard._require_user_role('admin');
    UPDATE tenant_guard.api_keys k SET revoked_at = coalesce(k.revoked_at, now())
     WHERE k.id = revoke_api_key.key_id AND k.org_id = tenant_guard.current_org_id();
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no API key with that id in this organization' USING ERRCODE = '02000';
    END IF;
EXCEPTION WHEN OTHERS THEN
    -- A refusal is recorded in the audit trail at once (a revocation, by
    -- the table's trigger at commit).
    PERFORM tenant_guard._trail_note('revoke_api_key', tenant_guard.current_org_id(), 'api_key', revoke_api_key.key_id,
                                     NULL, NULL, NULL, SQLSTATE);
    RAISE;
END
$$;

SELECT pg_catalog.pg_extension_config_dump('tenant_guard.api_keys', '');

-- Revocation, expiry and deletion of keys make contexts be checked again
-- once they commit (see organizations.sql).
CREATE TRIGGER tenant_guard_rights_changed AFTER UPDATE OF org_id, role, scopes, expires_at, revoked_at, created_by OR DELETE OR TRUNCATE
    ON tenant_guard.api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION tenant_guard._rights_changed();

REVOKE ALL ON tenant_guard.api_keys FROM PUBLIC;
REVOKE ALL ON FUNCTION
    tenant_guard.authenticate(text, text, inet), tenant_guard.create_api_key(text, text, text[], interval, int),
    tenant_guard.rotate_api_key(uuid, interval), tenant_guard.revoke_api_key(uuid),
    tenant_guard.import_api_key_hash(uuid, text, bytea, text, text[], timestamptz, int, text)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    tenant_guard.authenticate(text, text, inet), tenant_guard.create_api_key(text, text, text[], interval, int),
    tenant_guard.rotate_api_key(uuid, interval), tenant_guard.revoke_api_key(uuid)
TO PUBLIC;
GRANT EXECUTE ON FUNCTION tenant_guard.import_api_key_hash(uuid, text, bytea, text, text[], timestamptz, int, text) TO tenant_guard_service;
-- Org admins list their own (RLS); the hash column is never granted to PUBLIC.
GRANT SELECT (id, org_id, name, prefix, role, scopes, rate_limit_per_minute, expires_at, revoked_at,
              last_used_at, created_by, created_at, rotated_to)
    ON tenant_guard.api_keys TO PUBLIC;
GRANT SELECT ON tenant_guard.api_keys TO tenant_guard_service;
