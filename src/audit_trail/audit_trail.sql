-- The audit trail: the append-only audit_log (written only by the log
-- writer), the purge anchor, their policies, the row triggers that record
-- every change to members, API keys, secrets, webhook endpoints and
-- organizations, and the grants.

CREATE TABLE tenant_guard.audit_log (
    id bigserial PRIMARY KEY,
    -- The entry's position in the chain: 1, 2, 3, ... without gaps.
    seq bigint NOT NULL,
    at timestamptz NOT NULL,
    -- Who acted: the role in effect (SET ROLE counts; SECURITY DEFINER
    -- functions do not) and the session's login role.
    db_role text NOT NULL,
    session_role text NOT NULL,
    -- The organization the event concerns (its admins read the entry).
    org_id uuid,
    -- The request context the actor had, if any.
    ctx_org_id uuid,
    ctx_user_id uuid,
    ctx_api_key_id uuid,
    action text NOT NULL,
    object_type text NOT NULL,
    object_id uuid,
    object_kind text,
    object_name text,
    detail text,
    outcome text NOT NULL CHECK (outcome IN ('allowed', 'refused', 'rolled_back')),
    sqlstate text,
    -- SHA-256 chain value, and its HMAC under the audit key of the
    -- passphrase with this key id (docs/design.md, "The audit trail").
    chain bytea NOT NULL,
    key_id bigint,
    mac bytea
);
CREATE INDEX audit_log_seq_idx ON tenant_guard.audit_log (seq);
CREATE INDEX audit_log_org_at_idx ON tenant_guard.audit_log (org_id, at);
CREATE INDEX audit_log_at_idx ON tenant_guard.audit_log USING brin (at);

-- Where purge_audit_log() left the chain: the last removed position, its
-- chain value, and an HMAC of both. At most one row.
CREATE TABLE tenant_guard.audit_log_anchor (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    seq bigint NOT NULL,
    chain bytea NOT NULL,
    key_id bigint NOT NULL,
    mac bytea NOT NULL,
    purged_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE tenant_guard.audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_guard.audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_guard_select ON tenant_guard.audit_log
    FOR SELECT USING (org_id = tenant_guard.current_org_id_if('admin'));
CREATE POLICY tenant_guard_service_read ON tenant_guard.audit_log FOR SELECT TO tenant_guard_service USING (true);
ALTER TABLE tenant_guard.audit_log_anchor ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_guard.audit_log_anchor FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_guard_service_read ON tenant_guard.audit_log_anchor FOR SELECT TO tenant_guard_service USING (true);

SELECT pg_catalog.pg_extension_config_dump('tenant_guard.audit_log', '');
SELECT pg_catalog.pg_extension_config_dump('tenant_guard.audit_log_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('tenant_guard.audit_log_anchor', '');

-- Every change to the tables that hold rights and secrets, whoever makes
-- it (the extension's functions, a cascade, a superuser's own DML): one
-- event per row, recorded when the transaction ends (allowed at commit,
-- rolled_back otherwise). SECURITY DEFINER so that it records even for a
-- role someone granted write access to these tables. One function per
-- table, so that each is checked against its table's columns (plpgsql_check).
CREATE FUNCTION tenant_guard._trail_organizations_changed()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM tenant_guard._trail_note('create_organization', NEW.id, 'organization', NEW.id, NULL, NEW.name, NULL);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM tenant_guard._trail_note('delete_organization', OLD.id, 'organization', OLD.id, NULL, OLD.name, NULL);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION tenant_guard._trail_memberships_changed()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND (TG_OP = 'DELETE' OR (NEW.org_id, NEW.user_id) IS DISTINCT FROM (OLD.org_id, OLD.user_id)) THEN
        PERFORM tenant_guard._trail_note('remove_member', OLD.org_id, 'member', OLD.user_id, OLD.role, NULL, NULL);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND (NEW.org_id, NEW.user_id) IS DISTINCT FROM (OLD.org_id, OLD.user_id)) THEN
        PERFORM tenant_guard._trail_note('add_member', NEW.org_id, 'member', NEW.user_id, NEW.role, NULL, NULL);
    ELSIF TG_OP = 'UPDATE' AND NEW.role IS DISTINCT FROM OLD.role THEN
        PERFORM tenant_guard._trail_note('set_member_role', NEW.org_id, 'member', NEW.user_id, NEW.role, NULL,
                                         format('%s -> %s', OLD.role, NEW.role));
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION tenant_guard._trail_api_keys_changed()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM tenant_guard._trail_note(CASE WHEN NEW.created_by IS NULL THEN 'import_api_key' ELSE 'create_api_key' END,
                                         NEW.org_id, 'api_key', NEW.id, NEW.role, left(NEW.name, 200),
                                         format('scopes %s, expires %s', NEW.scopes, coalesce(NEW.expires_at::text, 'never')));
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM tenant_guard._trail_note('delete_api_key', OLD.org_id, 'api_key', OLD.id, OLD.role, left(OLD.name, 200), NULL);
    ELSIF OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL THEN
        PERFORM tenant_guard._trail_note('revoke_api_key', NEW.org_id, 'api_key', NEW.id, NEW.role, left(NEW.name, 200), NULL);
    ELSIF OLD.rotated_to IS NULL AND NEW.rotated_to IS NOT NULL THEN
        PERFORM tenant_guard._trail_note('rotate_api_key', NEW.org_id, 'api_key', NEW.id, NEW.role, left(NEW.name, 200),
                                         format('replaced by %s; this key expires %s', NEW.rotated_to, NEW.expires_at));
    ELSE
        PERFORM tenant_guard._trail_note('change_api_key', NEW.org_id, 'api_key', NEW.id, NEW.role, left(NEW.name, 200),
                                         format('role %s, scopes %s, expires %s, revoked %s', NEW.role, NEW.scopes,
                                                coalesce(NEW.expires_at::text, 'never'), coalesce(NEW.revoked_at::text, 'no')));
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION tenant_guard._trail_secrets_changed()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    typ text;
BEGIN
    typ := CASE coalesce(NEW.kind, OLD.kind) WHEN 'wordpress' THEN 'wordpress_credentials'
                                             WHEN 'webhook' THEN 'webhook_secret' ELSE 'secret' END;
    IF TG_OP = 'DELETE' THEN
        PERFORM tenant_guard._trail_note(CASE typ WHEN 'secret' THEN 'delete_secret' ELSE 'delete_' || typ END,
                                         OLD.org_id, typ, OLD.id, OLD.kind, OLD.name, NULL);
    ELSE
        PERFORM tenant_guard._trail_note(CASE typ WHEN 'secret' THEN 'put_secret' ELSE 'put_' || typ END,
                                         NEW.org_id, typ, NEW.id, NEW.kind, NEW.name,
                                         CASE TG_OP WHEN 'UPDATE' THEN 'replaced' ELSE 'new' END);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION tenant_guard._trail_webhook_endpoints_changed()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM tenant_guard._trail_note('create_webhook_endpoint', NEW.org_id, 'webhook_endpoint', NEW.id, NULL, NEW.url,
                                         format('events %s', NEW.events));
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM tenant_guard._trail_note('delete_webhook_endpoint', OLD.org_id, 'webhook_endpoint', OLD.id, NULL, OLD.url, NULL);
    ELSE
        IF OLD.active AND NOT NEW.active THEN
            PERFORM tenant_guard._trail_note('disable_webhook_endpoint', NEW.org_id, 'webhook_endpoint', NEW.id, NULL, NEW.url, NULL);
        ELSIF NOT OLD.active AND NEW.active THEN
            PERFORM tenant_guard._trail_note('enable_webhook_endpoint', NEW.org_id, 'webhook_endpoint', NEW.id, NULL, NEW.url, NULL);
        END IF;
        IF NEW.previous_secret_until IS DISTINCT FROM OLD.previous_secret_until THEN
            PERFORM tenant_guard._trail_note('rotate_webhook_secret', NEW.org_id, 'webhook_endpoint', NEW.id, NULL, NEW.url,
                                             format('the previous secret signs too until %s', NEW.previous_secret_until));
        END IF;
        IF (NEW.url, NEW.events, NEW.org_id) IS DISTINCT FROM (OLD.url, OLD.events, OLD.org_id) THEN
            PERFORM tenant_guard._trail_note('change_webhook_endpoint', NEW.org_id, 'webhook_endpoint', NEW.id, NULL, NEW.url,
                                             format('events %s', NEW.events));
        END IF;
    END IF;
    RETURN NULL;
END
$$;

-- TRUNCATE of one of them (a superuser's): one event for the table.
CREATE FUNCTION tenant_guard._trail_truncated()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM tenant_guard._trail_note('truncate', NULL, 'table', NULL, NULL,
                                     format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME), NULL);
    RETURN NULL;
END
$$;

CREATE TRIGGER tenant_guard_audit_trail AFTER INSERT OR DELETE ON tenant_guard.organizations
    FOR EACH ROW EXECUTE FUNCTION tenant_guard._trail_organizations_changed();
CREATE TRIGGER tenant_guard_audit_trail AFTER INSERT OR DELETE OR UPDATE OF org_id, user_id, role ON tenant_guard.memberships
    FOR EACH ROW EXECUTE FUNCTION tenant_guard._trail_memberships_changed();
CREATE TRIGGER tenant_guard_audit_trail
    AFTER INSERT OR DELETE OR UPDATE OF org_id, role, scopes, expires_at, revoked_at, rotated_to, created_by
    ON tenant_guard.api_keys
    FOR EACH ROW EXECUTE FUNCTION tenant_guard._trail_api_keys_changed();
CREATE TRIGGER tenant_guard_audit_trail AFTER INSERT OR DELETE OR UPDATE OF org_id, kind, name, ciphertext ON tenant_guard.secrets
    FOR EACH ROW EXECUTE FUNCTION tenant_guard._trail_secrets_changed();
CREATE TRIGGER tenant_guard_audit_trail
    AFTER INSERT OR DELETE OR UPDATE OF org_id, url, events, active, previous_secret_until
    ON tenant_guard.webhook_endpoints
    FOR EACH ROW EXECUTE FUNCTION tenant_guard._trail_webhook_endpoints_changed();
CREATE TRIGGER tenant_guard_audit_trail_truncate AFTER TRUNCATE ON tenant_guard.organizations
    FOR EACH STATEMENT EXECUTE FUNCTION tenant_guard._trail_truncated();
CREATE TRIGGER tenant_guard_audit_trail_truncate AFTER TRUNCATE ON tenant_guard.memberships
    FOR EACH STATEMENT EXECUTE FUNCTION tenant_guard._trail_truncated();
CREATE TRIGGER tenant_guard_audit_trail_truncate AFTER TRUNCATE ON tenant_guard.api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION tenant_guard._trail_truncated();
CREATE TRIGGER tenant_guard_audit_trail_truncate AFTER TRUNCATE ON tenant_guard.secrets
    FOR EACH STATEMENT EXECUTE FUNCTION tenant_guard._trail_truncated();
CREATE TRIGGER tenant_guard_audit_trail_truncate AFTER TRUNCATE ON tenant_guard.webhook_endpoints
    FOR EACH STATEMENT EXECUTE FUNCTION tenant_guard._trail_truncated();

REVOKE ALL ON tenant_guard.audit_log, tenant_guard.audit_log_anchor FROM PUBLIC;
REVOKE ALL ON SEQUENCE tenant_guard.audit_log_id_seq FROM PUBLIC;
REVOKE ALL ON FUNCTION
    tenant_guard._trail_note(text, uuid, text, uuid, text, text, text, text),
    tenant_guard._trail_protect(oid, text, text),
    tenant_guard._trail_organizations_changed(), tenant_guard._trail_memberships_changed(),
    tenant_guard._trail_api_keys_changed(), tenant_guard._trail_secrets_changed(),
    tenant_guard._trail_webhook_endpoints_changed(), tenant_guard._trail_truncated(),
    tenant_guard.verify_audit_log(bigint, bytea), tenant_guard.purge_audit_log(interval),
    tenant_guard.audit_log_queue()
FROM PUBLIC;
-- protect() and unprotect() run with their caller's rights.
GRANT EXECUTE ON FUNCTION tenant_guard._trail_protect(oid, text, text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION tenant_guard.verify_audit_log(bigint, bytea), tenant_guard.audit_log_queue()
    TO tenant_guard_service;
-- Org admins read their org's entries (RLS); the service role reads all.
GRANT SELECT ON tenant_guard.audit_log TO PUBLIC;
GRANT SELECT ON tenant_guard.audit_log, tenant_guard.audit_log_anchor TO tenant_guard_service;
-- purge_audit_log() is a superuser's: the trail watches the service role too.
