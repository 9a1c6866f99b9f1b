-- Organizations, memberships and the role ladder: tables, policies, the
-- member-management functions and their grants.

-- The role ladder: read-only reference data for PL/pgSQL and policy
-- authors, filled from core/src/roles.rs (the one place the ranks are
-- written) by an install-time function that is dropped right after.
CREATE TABLE tenant_guard.roles (
    name text PRIMARY KEY,
    rank int NOT NULL UNIQUE
);
INSERT INTO tenant_guard.roles (name, rank) SELECT l.name, l.rank FROM tenant_guard._role_ladder() l;
DROP FUNCTION tenant_guard._role_ladder();

CREATE TABLE tenant_guard.organizations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tenant_guard.memberships (
    org_id uuid NOT NULL REFERENCES tenant_guard.organizations (id) ON DELETE CASCADE,
    user_id uuid NOT NULL,
    role text NOT NULL REFERENCES tenant_guard.roles (name),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX memberships_user_idx ON tenant_guard.memberships (user_id);

-- Readable through RLS (own org only), writable only through the functions below.
ALTER TABLE tenant_guard.organizations ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_guard.organizations FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_guard_select ON tenant_guard.organizations
    FOR SELECT USING (id = tenant_guard.current_org_id());

ALTER TABLE tenant_guard.memberships ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_guard.memberships FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_guard_select ON tenant_guard.memberships
    FOR SELECT USING (org_id = tenant_guard.current_org_id());

-- BYPASSRLS is a role attribute and is not inherited by the members of
-- tenant_guard_service; these policies give its members read access to
-- tenant_guard's own tables without SET ROLE (one per table, in each
-- capability's file).
CREATE POLICY tenant_guard_service_read ON tenant_guard.organizations FOR SELECT TO tenant_guard_service USING (true);
CREATE POLICY tenant_guard_service_read ON tenant_guard.memberships FOR SELECT TO tenant_guard_service USING (true);

CREATE FUNCTION tenant_guard.create_organization(name text, owner_user_id uuid)
RETURNS uuid
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_id uuid;
BEGIN
    IF owner_user_id IS NULL THEN
        RAISE EXCEPTION 'owner_user_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    INSERT INTO tenant_guard.organizations (name) VALUES (create_organization.name) RETURNING id INTO new_id;
    INSERT INTO tenant_guard.memberships (org_id, user_id, role) VALUES (new_id, owner_user_id, 'owner');
    RETURN new_id;
EXCEPTION WHEN OTHERS THEN
    -- A refusal is recorded in the audit trail at once, with its SQLSTATE
    -- (what succeeds is recorded by the tables' triggers at commit).
    PERFORM tenant_guard._trail_note('create_organization', NULL, 'organization', NULL, NULL,
                                     left(create_organization.name, 200), NULL, SQLSTATE);
    RAISE;
END
$$;

-- Shared checks for membership changes in the current org. Returns the org id.
CREATE FUNCTION tenant_guard._check_member_change(target uuid, new_role text)
RETURNS uuid
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    org uuid := tenant_guard.current_org_id();
    me uuid := tenant_guard.current_user_id();
    my_rank int;
    target_rank int;
    wanted_rank int;
BEGIN
    PERFORM tenant_guard._require_user_role('admin');
    IF target IS NULL THEN
        RAISE EXCEPTION 'user_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF target = me THEN
        RAISE EXCEPTION 'nobody can change their own membership' USING ERRCODE = '42501';
    END IF;
    -- Serialize membership changes per organization, and read the rows the
    -- checks depend on with row locks: a locking read sees the latest version
    -- (READ COMMITTED) or fails with a serialization error (REPEATABLE READ),
    -- so a stale snapshot cannot pass the rank and last-owner checks.
    PERFORM 1 FROM tenant_guard.organizations WHERE id = org FOR UPDATE;
    PERFORM 1 FROM tenant_guard.memberships m WHERE m.org_id = org AND (m.role = 'owner' OR m.user_id IN (me, target)) FOR UPDATE;
    SELECT r.rank INTO my_rank FROM tenant_guard.memberships m JOIN tenant_guard.roles r ON r.name = m.role
     WHERE m.org_id = org AND m.user_id = me;
    IF my_rank IS NULL OR my_rank < (SELECT r.rank FROM tenant_guard.roles r WHERE r.name = 'admin') THEN
        RAISE EXCEPTION 'managing members needs role admin or higher (per the membership table)' USING ERRCODE = '42501';
    END IF;
    SELECT r.rank INTO target_rank FROM tenant_guard.memberships m JOIN tenant_guard.roles r ON r.name = m.role
     WHERE m.org_id = org AND m.user_id = target;
    IF target_rank > my_rank THEN
        RAISE EXCEPTION 'you cannot change a member who ranks above you' USING ERRCODE = '42501';
    END IF;
    IF new_role IS NOT NULL THEN
        SELECT r.rank INTO wanted_rank FROM tenant_guard.roles r WHERE r.name = new_role;
        IF wanted_rank IS NULL THEN
            RAISE EXCEPTION 'unknown role' USING ERRCODE = '22023',
                HINT = 'Roles are owner, admin, member and viewer.';
        END IF;
        IF wanted_rank > my_rank THEN
            RAISE EXCEPTION 'you cannot grant a role above your own' USING ERRCODE = '42501';
        END IF;
    END IF;
    RETURN org;
END
$$;

CREATE FUNCTION tenant_guard._assert_owner_remains(org uuid)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM tenant_guard.memberships WHERE org_id = org AND role = 'owner') THEN
        RAISE EXCEPTION 'the last owner of an organization cannot be removed or demoted' USING ERRCODE = '42501';
    END IF;
END
$$;

CREATE FUNCTION tenant_guard.add_member(user_id uuid, role text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    org uuid;
BEGIN
    org := tenant_guard._check_member_change(add_member.user_id, coalesce(add_member.role, ''));
    BEGIN
        INSERT INTO tenant_guard.memberships (org_id, user_id, role) VALUES (org, add_member.user_id, add_member.role);
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'that user is already a member; use set_member_role()' USING ERRCODE = '23505';
    END;
EXCEPTION WHEN OTHERS THEN
    PERFORM tenant_guard._trail_note('add_member', tenant_guard.current_org_id(), 'member', add_member.user_id,
                                     left(add_member.role, 100), NULL, NULL, SQLSTATE);
    RAISE;
END
$$;

CREATE FUNCTION tenant_guard.set_member_role(user_id uuid, role text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    org uuid;
BEGIN
    org := tenant_guard._check_member_change(set_member_role.user_id, coalesce(set_member_role.role, ''));
    UPDATE tenant_guard.memberships m SET role = set_member_role.role
     WHERE m.org_id = org AND m.user_id = set_member_role.user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'that user is not a member of this organization' USING ERRCODE = '02000';
    END IF;
    PERFORM tenant_guard._assert_owner_remains(org);
EXCEPTION WHEN OTHERS THEN
    PERFORM tenant_guard._trail_note('set_member_role', tenant_guard.current_org_id(), 'member', set_member_role.user_id,
                                     left(set_member_role.role, 100), NULL, NULL, SQLSTATE);
    RAISE;
END
$$;

CREATE FUNCTION tenant_guard.remove_member(user_id uuid)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    org uuid;
BEGIN
    org := tenant_guard._check_member_change(remove_member.user_id, NULL);
    DELETE FROM tenant_guard.memberships m WHERE m.org_id = org AND m.user_id = remove_member.user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'that user is not a member of this organization' USING ERRCODE = '02000';
    END IF;
    PERFORM tenant_guard._assert_owner_remains(org);
EXCEPTION WHEN OTHERS THEN
    PERFORM tenant_guard._trail_note('remove_member', tenant_guard.current_org_id(), 'member', remove_member.user_id,
                                     NULL, NULL, NULL, SQLSTATE);
    RAISE;
END
$$;

-- Rights that hang on a member: when a member is removed or demoted,
-- API keys they made with a role above what they now hold are revoked, and
-- webhook endpoints they made stop once they are no longer an admin.
-- (authenticate() also checks a key's creator as committed now, which
-- covers a key created concurrently with the change.) A trigger, so direct
-- writes to memberships by a superuser count too.
CREATE FUNCTION tenant_guard._membership_changed()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_rank int;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.org_id = OLD.org_id AND NEW.user_id = OLD.user_id THEN
        SELECT r.rank INTO new_rank FROM tenant_guard.roles r WHERE r.name = NEW.role;
    END IF;
    UPDATE tenant_guard.api_keys k SET revoked_at = now()
     WHERE k.org_id = OLD.org_id AND k.created_by = OLD.user_id AND k.revoked_at IS NULL
       AND (new_rank IS NULL OR (SELECT r.rank FROM tenant_guard.roles r WHERE r.name = k.role) > new_rank);
    UPDATE tenant_guard.webhook_endpoints w SET active = false
     WHERE w.org_id = OLD.org_id AND w.created_by = OLD.user_id AND w.active
       AND (new_rank IS NULL OR new_rank < (SELECT r.rank FROM tenant_guard.roles r WHERE r.name = 'admin'));
    RETURN NULL;
END
$$;

CREATE TRIGGER tenant_guard_membership_changed AFTER UPDATE OR DELETE ON tenant_guard.memberships
    FOR EACH ROW EXECUTE FUNCTION tenant_guard._membership_changed();

-- Any change to memberships or API keys (including a superuser's own DML
-- and TRUNCATE) makes every context be checked again once it commits
-- (context/mod.rs: the change counter).
CREATE FUNCTION tenant_guard._rights_changed()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM tenant_guard._note_rights_changed();
    RETURN NULL;
END
$$;

CREATE TRIGGER tenant_guard_rights_changed AFTER UPDATE OF org_id, user_id, role OR DELETE OR TRUNCATE
    ON tenant_guard.memberships
    FOR EACH STATEMENT EXECUTE FUNCTION tenant_guard._rights_changed();

-- Tables of an extension are left out of pg_dump unless registered: without
-- this a dump would hold no organization or member (likewise in each file).
SELECT pg_catalog.pg_extension_config_dump('tenant_guard.organizations', '');
SELECT pg_catalog.pg_extension_config_dump('tenant_guard.memberships', '');

REVOKE ALL ON tenant_guard.roles, tenant_guard.organizations, tenant_guard.memberships FROM PUBLIC;
REVOKE ALL ON FUNCTION
    tenant_guard.create_organization(text, uuid), tenant_guard._check_member_change(uuid, text),
    tenant_guard._assert_owner_remains(uuid), tenant_guard.add_member(uuid, text),
    tenant_guard.set_member_role(uuid, text), tenant_guard.remove_member(uuid), tenant_guard._membership_changed(),
    tenant_guard._rights_changed()
FROM PUBLIC;
GRANT SELECT ON tenant_guard.roles TO PUBLIC;
GRANT SELECT ON tenant_guard.organizations, tenant_guard.memberships TO PUBLIC;   -- rows filtered by RLS
GRANT SELECT ON tenant_guard.organizations, tenant_guard.memberships TO tenant_guard_service;
GRANT EXECUTE ON FUNCTION
    tenant_guard.add_member(uuid, text), tenant_guard.set_member_role(uuid, text), tenant_guard.remove_member(uuid)
TO PUBLIC;
GRANT EXECUTE ON FUNCTION tenant_guard.create_organization(text, uuid) TO tenant_guard_service;
