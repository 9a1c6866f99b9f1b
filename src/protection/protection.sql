-- Protecting the application's tables: protect(), the self-approval
-- trigger, and the guard for new tables (its event trigger is created last,
-- after every other capability's tables, so it watches only what follows).

-- The one rule for "an org column": a column of type uuid, or of a domain
-- over uuid (at any depth). protect() and the protection guard both ask it.
CREATE FUNCTION tenant_guard._is_uuid_column(tbl oid, col name)
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH RECURSIVE t(typ, base) AS (
        SELECT a.atttypid, ty.typbasetype
          FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid
         WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL
        SELECT ty.oid, ty.typbasetype FROM t JOIN pg_type ty ON ty.oid = t.base WHERE t.base <> 0
    )
    SELECT EXISTS (SELECT 1 FROM t WHERE t.typ = 'uuid'::regtype)
$$;

CREATE FUNCTION tenant_guard._org_column_check(tbl regclass, col name)
RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    typ oid;
BEGIN
    IF tbl IS NULL OR col IS NULL THEN
        RAISE EXCEPTION 'table and column must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT a.atttypid INTO typ FROM pg_attribute a
     WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column % does not exist in table %', quote_ident(col), tbl USING ERRCODE = '42703';
    END IF;
    IF NOT tenant_guard._is_uuid_column(tbl, col) THEN
        RAISE EXCEPTION 'column % of table % must be of type uuid, not %', quote_ident(col), tbl, typ::regtype
            USING ERRCODE = '42804';
    END IF;
END
$$;

CREATE FUNCTION tenant_guard.protect(
    tbl regclass,
    org_column name DEFAULT 'org_id',
    read_role text DEFAULT 'viewer',
    write_role text DEFAULT 'member',
    delete_role text DEFAULT 'admin')
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    pol record;
    kind "char";
    has_index boolean;
    rl text;
    mode text;
BEGIN
    PERFORM tenant_guard._org_column_check(tbl, org_column);
    FOREACH rl IN ARRAY ARRAY[read_role, write_role, delete_role] LOOP
        IF rl IS NULL OR NOT EXISTS (SELECT 1 FROM tenant_guard.roles WHERE name = rl) THEN
            RAISE EXCEPTION 'unknown role' USING ERRCODE = '22023',
                HINT = 'Roles are owner, admin, member and viewer.';
        END IF;
    END LOOP;
    SELECT c.relkind INTO kind FROM pg_class c WHERE c.oid = tbl;
    IF kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', tbl USING ERRCODE = '42809';
    END IF;

    -- The table itself and, for a partitioned table, every partition (a
    -- partition queried directly is governed by its own policies).
    FOR r IN SELECT relid FROM pg_partition_tree(tbl) UNION SELECT tbl LOOP
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', r.relid::regclass);
        EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', r.relid::regclass);
        -- Idempotent: drop what an earlier protect() made (quietly).
        FOR pol IN SELECT polname FROM pg_policy WHERE polrelid = r.relid AND polname LIKE 'tenant\_guard\_%' LOOP
            EXECUTE format('DROP POLICY %I ON %s', pol.polname, r.relid::regclass);
        END LOOP;
        -- One RESTRICTIVE policy per command carries the whole rule, so no
        -- other policy can widen access beyond the org and role; and the same
        -- rule again as one PERMISSIVE policy per command (RLS needs a
        -- permissive policy to admit anything). Written twice, the rule means
        -- the same whichever mode a policy is copied with: Citus copies
        -- policies to its shards without AS RESTRICTIVE (docs/citus.md), so
        -- on a Citus table the four are PERMISSIVE from the start (its
        -- coordinator and shards then hold the same policies), and the guard
        -- refuses any other permissive policy there.
        -- `org = current_org_id_if(role)` is one stable expression: an index
        -- condition evaluated once per scan, not a per-row filter.
        mode := CASE WHEN tenant_guard._is_citus_table(r.relid) THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END;
        EXECUTE format('CREATE POLICY tenant_guard_select ON %s AS %s FOR SELECT USING (%I = tenant_guard.current_org_id_if(%L))',
                       r.relid::regclass, mode, org_column, read_role);
        EXECUTE format('CREATE POLICY tenant_guard_insert ON %s AS %s FOR INSERT WITH CHECK (%I = tenant_guard.current_org_id_if(%L))',
                       r.relid::regclass, mode, org_column, write_role);
        EXECUTE format('CREATE POLICY tenant_guard_update ON %s AS %s FOR UPDATE USING (%I = tenant_guard.current_org_id_if(%L)) WITH CHECK (%I = tenant_guard.current_org_id_if(%L))',
                       r.relid::regclass, mode, org_column, write_role, org_column, write_role);
        EXECUTE format('CREATE POLICY tenant_guard_delete ON %s AS %s FOR DELETE USING (%I = tenant_guard.current_org_id_if(%L))',
                       r.relid::regclass, mode, org_column, delete_role);
        EXECUTE format('CREATE POLICY tenant_guard_allow_select ON %s AS PERMISSIVE FOR SELECT USING (%I = tenant_guard.current_org_id_if(%L))',
                       r.relid::regclass, org_column, read_role);
        EXECUTE format('CREATE POLICY tenant_guard_allow_insert ON %s AS PERMISSIVE FOR INSERT WITH CHECK (%I = tenant_guard.current_org_id_if(%L))',
                       r.relid::regclass, org_column, write_role);
        EXECUTE format('CREATE POLICY tenant_guard_allow_update ON %s AS PERMISSIVE FOR UPDATE USING (%I = tenant_guard.current_org_id_if(%L)) WITH CHECK (%I = tenant_guard.current_org_id_if(%L))',
                       r.relid::regclass, org_column, write_role, org_column, write_role);
        EXECUTE format('CREATE POLICY tenant_guard_allow_delete ON %s AS PERMISSIVE FOR DELETE USING (%I = tenant_guard.current_org_id_if(%L))',
                       r.relid::regclass, org_column, delete_role);
    END LOOP;

    -- TRUNCATE ignores RLS, a trigger runs inside other tenants' transactions
    -- and foreign keys check rows regardless of RLS: only the owner keeps them.
    FOR r IN SELECT DISTINCT p.relid, a.grantee
               FROM (SELECT relid FROM pg_partition_tree(tbl) UNION SELECT tbl) p
               JOIN pg_class c ON c.oid = p.relid,
                    LATERAL aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
              WHERE a.grantee <> c.relowner AND a.privilege_type IN ('TRUNCATE', 'TRIGGER', 'REFERENCES')
    LOOP
        EXECUTE format('REVOKE TRUNCATE, TRIGGER, REFERENCES ON %s FROM %s CASCADE', r.relid::regclass,
                       CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r.grantee)) END);
    END LOOP;
    -- What a third party granted (with grant option) may survive: say so.
    FOR r IN SELECT DISTINCT p.relid, a.grantee
               FROM (SELECT relid FROM pg_partition_tree(tbl) UNION SELECT tbl) p
               JOIN pg_class c ON c.oid = p.relid,
                    LATERAL aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
              WHERE a.grantee <> c.relowner AND a.privilege_type IN ('TRUNCATE', 'TRIGGER', 'REFERENCES')
    LOOP
        RAISE WARNING '% still holds TRUNCATE, TRIGGER or REFERENCES on % (granted by another role); revoke it as that role',
            CASE WHEN r.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(r.grantee)::text END, r.relid::regclass;
    END LOOP;

    SELECT EXISTS (
        SELECT 1 FROM pg_index i
         WHERE i.indrelid = tbl
           AND i.indkey[0] = (SELECT attnum FROM pg_attribute WHERE attrelid = tbl AND attname = org_column)
    ) INTO has_index;
    IF NOT has_index THEN
        EXECUTE format('CREATE INDEX ON %s (%I)', tbl, org_column);
    END IF;
    PERFORM tenant_guard._trail_protect(tbl, 'protect');
EXCEPTION WHEN OTHERS THEN
    -- The audit trail records a refusal at once, a protect() when its
    -- transaction ends.
    PERFORM tenant_guard._trail_protect(tbl, 'protect', SQLSTATE);
    RAISE;
END
$$;

CREATE FUNCTION tenant_guard.unprotect(tbl regclass)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    p text;
BEGIN
    FOR r IN SELECT relid FROM pg_partition_tree(tbl) UNION SELECT tbl LOOP
        FOR p IN SELECT polname FROM pg_policy WHERE polrelid = r.relid AND polname LIKE 'tenant\_guard\_%' LOOP
            EXECUTE format('DROP POLICY %I ON %s', p, r.relid::regclass);
        END LOOP;
        EXECUTE format('ALTER TABLE %s NO FORCE ROW LEVEL SECURITY', r.relid::regclass);
        EXECUTE format('ALTER TABLE %s DISABLE ROW LEVEL SECURITY', r.relid::regclass);
    END LOOP;
    PERFORM tenant_guard._trail_protect(tbl, 'unprotect');
EXCEPTION WHEN OTHERS THEN
    PERFORM tenant_guard._trail_protect(tbl, 'unprotect', SQLSTATE);
    RAISE;
END
$$;

CREATE FUNCTION tenant_guard._forbid_self_approval()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_row jsonb := to_jsonb(NEW);
    old_row jsonb := CASE WHEN TG_OP = 'UPDATE' THEN to_jsonb(OLD) END;
    requester text := new_row ->> TG_ARGV[0];
    approver text := new_row ->> TG_ARGV[1];
    me text := tenant_guard.current_user_id()::text;
BEGIN
    -- An AFTER trigger: it judges the row as finally written, whatever other
    -- (BEFORE) triggers did to it.
    IF TG_OP = 'INSERT' AND (me IS NULL OR requester IS DISTINCT FROM me) THEN
        -- Requests are filed by a signed-in user in their own name (else: file
        -- one in a colleague's name, or with no requester at all, perhaps from
        -- an API key, then approve it).
        RAISE EXCEPTION 'a request can only be filed by a signed-in user in their own name' USING ERRCODE = '42501';
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF requester IS DISTINCT FROM old_row ->> TG_ARGV[0] THEN
            RAISE EXCEPTION 'the requester of a request cannot be changed' USING ERRCODE = '42501';
        END IF;
        -- An approval covers only the content its approver saw: once a row is
        -- approved, its content changes only together with clearing the
        -- approval (approver set to NULL, to be approved again), or by the
        -- approver themselves, who sees what they write.
        IF old_row ->> TG_ARGV[1] IS NOT NULL AND approver IS NOT NULL
           AND (new_row - TG_ARGV[1]) IS DISTINCT FROM (old_row - TG_ARGV[1])
           AND (me IS NULL OR me IS DISTINCT FROM approver) THEN
            RAISE EXCEPTION 'an approved request cannot be changed; clear the approval in the same update to change it'
                USING ERRCODE = '42501';
        END IF;
    END IF;
    -- Setting or changing the approver: only a signed-in user, naming
    -- themselves, and never the requester.
    IF approver IS NOT NULL AND (TG_OP = 'INSERT' OR approver IS DISTINCT FROM old_row ->> TG_ARGV[1]) THEN
        IF me IS NULL THEN
            RAISE EXCEPTION 'approving needs a user context (not an API key, not no context)' USING ERRCODE = '42501';
        END IF;
        IF approver <> me THEN
            RAISE EXCEPTION 'an approval can only be recorded by the approver themselves' USING ERRCODE = '42501';
        END IF;
        IF approver = requester THEN
            RAISE EXCEPTION 'a request cannot be approved by its requester' USING ERRCODE = '42501';
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION tenant_guard.forbid_self_approval(tbl regclass, requester_column name, approver_column name)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    col name;
BEGIN
    FOREACH col IN ARRAY ARRAY[requester_column, approver_column] LOOP
        IF col IS NULL OR NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = tbl AND attname = col
                        AND attnum > 0 AND NOT attisdropped) THEN
            RAISE EXCEPTION 'column % does not exist in table %', quote_ident(col), tbl
                USING ERRCODE = '42703';
        END IF;
    END LOOP;
    EXECUTE format('DROP TRIGGER IF EXISTS tenant_guard_no_self_approval ON %s', tbl);
    EXECUTE format('CREATE TRIGGER tenant_guard_no_self_approval AFTER INSERT OR UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION tenant_guard._forbid_self_approval(%L, %L)',
                   tbl, requester_column, approver_column);
END
$$;

---------------------------------------------------------------- protection guard
CREATE FUNCTION tenant_guard._guard_new_tables()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c record;
BEGIN
    IF current_setting('tenant_guard.require_protection') = 'off' THEN
        RETURN;
    END IF;
    -- Every relation a command touched, including the subcommands of CREATE
    -- SCHEMA; the tables of a composite type it altered (ALTER TYPE ...
    -- CASCADE); and everything inheriting from any of them (ALTER TABLE ...
    -- ADD COLUMN reaches children; ATTACH PARTITION names the parent). The
    -- commit-time check (guard.rs) decides which are org tables without RLS.
    FOR c IN
        WITH RECURSIVE cmd AS (
            SELECT d.classid, d.objid FROM pg_event_trigger_ddl_commands() d
        ), touched(relid) AS (
            SELECT base.relid FROM (
                SELECT cmd.objid AS relid FROM cmd WHERE cmd.classid = 'pg_class'::regclass
                UNION
                SELECT t.oid FROM cmd JOIN pg_class ct ON ct.oid = cmd.objid AND cmd.classid = 'pg_class'::regclass
                                      JOIN pg_class t ON t.reloftype = ct.reltype AND ct.relkind = 'c'
                UNION
                SELECT t.oid FROM cmd JOIN pg_class t ON t.reloftype = cmd.objid AND cmd.classid = 'pg_type'::regclass
                UNION
                -- CREATE / ALTER POLICY: the policy's table.
                SELECT p.polrelid FROM cmd JOIN pg_policy p ON p.oid = cmd.objid AND cmd.classid = 'pg_policy'::regclass
                UNION
                -- GRANT names no object here: every table protect() made.
                SELECT p.polrelid FROM pg_policy p
                 WHERE p.polname = 'tenant_guard_select'
                   AND EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() g WHERE g.command_tag = 'GRANT')
            ) base
            UNION
            SELECT i.inhrelid FROM pg_inherits i JOIN touched ON i.inhparent = touched.relid
        )
        SELECT DISTINCT relid FROM touched
    LOOP
        PERFORM tenant_guard._note_unprotected_table(c.relid);
    END LOOP;
END
$$;

-- Every DDL command: a table with an org column can appear through many
-- (CREATE TABLE, CREATE SCHEMA ... CREATE TABLE, CREATE TABLE AS, SELECT
-- INTO, ALTER TABLE, ALTER TYPE ... CASCADE, ...).
CREATE EVENT TRIGGER tenant_guard_require_protection ON ddl_command_end
    EXECUTE FUNCTION tenant_guard._guard_new_tables();

-- DROP POLICY is reported only to sql_drop triggers: the table of every
-- dropped policy is checked at commit too (protect()'s restrictive policies
-- are the whole rule: dropping one opens the table).
CREATE FUNCTION tenant_guard._guard_dropped_policies()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
BEGIN
    IF current_setting('tenant_guard.require_protection') = 'off' THEN
        RETURN;
    END IF;
    FOR r IN SELECT to_regclass(quote_ident(d.address_names[1]) || '.' || quote_ident(d.address_names[2])) AS rel
               FROM pg_event_trigger_dropped_objects() d
              WHERE d.object_type = 'policy' AND cardinality(d.address_names) = 3
    LOOP
        IF r.rel IS NOT NULL THEN
            PERFORM tenant_guard._note_unprotected_table(r.rel);
        END IF;
    END LOOP;
END
$$;

CREATE EVENT TRIGGER tenant_guard_require_protection_drops ON sql_drop
    EXECUTE FUNCTION tenant_guard._guard_dropped_policies();

REVOKE ALL ON FUNCTION
    tenant_guard._is_uuid_column(oid, name), tenant_guard._org_column_check(regclass, name),
    tenant_guard.protect(regclass, name, text, text, text), tenant_guard.unprotect(regclass),
    tenant_guard._forbid_self_approval(), tenant_guard.forbid_self_approval(regclass, name, name),
    tenant_guard._guard_new_tables(), tenant_guard._guard_dropped_policies(), tenant_guard._note_unprotected_table(oid)
FROM PUBLIC;
-- protect() and friends run with the caller's rights (only a table's owner
-- can protect it), so the helpers they call are PUBLIC's too.
GRANT EXECUTE ON FUNCTION
    tenant_guard._is_uuid_column(oid, name), tenant_guard._org_column_check(regclass, name),
    tenant_guard.protect(regclass, name, text, text, text), tenant_guard.unprotect(regclass),
    tenant_guard._forbid_self_approval(), tenant_guard.forbid_self_approval(regclass, name, name)
TO PUBLIC;
