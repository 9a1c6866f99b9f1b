-- security_audit(): one row per misconfiguration, with a remedy (runnable
-- SQL where a fix can be written as SQL). Each group of checks is one SQL
-- function; security_audit() runs them, drops acknowledged findings and
-- sorts the rest. Levels: error (a promise is broken or can be), warn (a
-- weakness or missed hygiene), info (worth knowing; nothing to fix on a
-- clean install). Codes are stable: docs/security-audit.md lists them all.

CREATE TYPE tenant_guard.audit_finding AS (
    code text,
    level text,
    categories text[],
    object text,
    detail text,
    remedy text
);

-- Findings a DBA has looked at and accepted: (code, object), or (code, '*')
-- for every object of a code. Kept in dumps.
CREATE TABLE tenant_guard.security_audit_acknowledgements (
    code text NOT NULL CHECK (code ~ '^[a-z_]{1,64}$'),
    object text NOT NULL CHECK (length(object) BETWEEN 1 AND 1000),
    reason text NOT NULL CHECK (length(reason) BETWEEN 1 AND 1000),
    acknowledged_by name NOT NULL DEFAULT session_user,
    acknowledged_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (code, object)
);
ALTER TABLE tenant_guard.security_audit_acknowledgements ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_guard.security_audit_acknowledgements FORCE ROW LEVEL SECURITY;
SELECT pg_catalog.pg_extension_config_dump('tenant_guard.security_audit_acknowledgements', '');
REVOKE ALL ON tenant_guard.security_audit_acknowledgements FROM PUBLIC;

-- The roles the threat model does not trust: PUBLIC, and every login role
-- that is neither a superuser nor a member of tenant_guard_service.
-- By oid (0 for PUBLIC): the privilege functions take a role dropped
-- meanwhile by oid without an error.
CREATE FUNCTION tenant_guard._audit_untrusted()
RETURNS TABLE (roleid oid, rolname name)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 0::oid, 'public'::name
    UNION ALL
    SELECT r.oid, r.rolname FROM pg_roles r
     WHERE r.rolcanlogin AND NOT r.rolsuper AND NOT pg_has_role(r.oid, 'tenant_guard_service', 'MEMBER')
$$;

-- Untrusted roles that can read or change `rel` (directly or through a
-- role they belong to), or NULL.
CREATE FUNCTION tenant_guard._audit_exposed(rel oid)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT string_agg(u.rolname, ', ' ORDER BY u.roleid <> 0, u.rolname) FROM tenant_guard._audit_untrusted() u
     WHERE has_table_privilege(u.roleid, rel, 'SELECT, INSERT, UPDATE, DELETE')
        OR has_any_column_privilege(u.roleid, rel, 'SELECT, INSERT, UPDATE')
$$;

-- The grantees to revoke `rel`'s privileges from so no untrusted role keeps
-- them: PUBLIC, or roles an untrusted login role is (or belongs to), as
-- named in the table's or its columns' ACLs.
CREATE FUNCTION tenant_guard._audit_revoke_from(rel oid)
RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH g AS (
        SELECT a.grantee FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = rel AND a.grantee <> c.relowner
        UNION
        SELECT a.grantee FROM pg_class c JOIN pg_attribute att ON att.attrelid = c.oid, aclexplode(att.attacl) a
         WHERE c.oid = rel AND a.grantee <> c.relowner
    )
    SELECT string_agg(CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END, ', '
                      ORDER BY g.grantee <> 0, pg_get_userbyid(g.grantee))
      FROM g
     WHERE g.grantee = 0
        OR EXISTS (SELECT 1 FROM tenant_guard._audit_untrusted() u
                    WHERE u.roleid <> 0 AND pg_has_role(u.roleid, g.grantee, 'MEMBER'))
$$;

-- The relations the table checks look at: every table, view, materialized
-- view and foreign table outside the system schemas and other extensions.
CREATE FUNCTION tenant_guard._audit_relations()
RETURNS TABLE (oid oid, name text, kind "char", rls boolean, forced boolean, owner oid, org boolean,
               org_attnum int2, tg_member boolean, policies bigint, exposed text, schema_usable boolean,
               security_invoker boolean)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.oid, c.oid::regclass::text, c.relkind, c.relrowsecurity, c.relforcerowsecurity, c.relowner,
           c.relkind IN ('r', 'p', 'm', 'f', 'v') AND tenant_guard._is_uuid_column(c.oid, 'org_id'),
           (SELECT a.attnum FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'org_id' AND NOT a.attisdropped),
           ext.extname IS NOT NULL,
           (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid),
           tenant_guard._audit_exposed(c.oid),
           EXISTS (SELECT 1 FROM tenant_guard._audit_untrusted() u WHERE has_schema_privilege(u.roleid, n.oid, 'USAGE')),
           EXISTS (SELECT 1 FROM unnest(c.reloptions) o WHERE lower(o) IN ('security_invoker=true', 'security_invoker=on', 'security_invoker=1', 'security_invoker=yes'))
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      LEFT JOIN LATERAL (SELECT e.extname FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
                          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e') ext ON true
     WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
       AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
       AND n.nspname NOT LIKE 'pg\_temp\_%' AND n.nspname NOT LIKE 'pg\_toast\_temp\_%'
       AND (ext.extname IS NULL OR ext.extname = 'tenant_guard')
$$;

CREATE FUNCTION tenant_guard._audit_tables()
RETURNS SETOF tenant_guard.audit_finding
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH r AS (SELECT * FROM tenant_guard._audit_relations())
    SELECT 'rls_disabled_org_table', 'error', ARRAY['SECURITY'], 'table ' || r.name,
           format('%s has an org_id column but no row-level security: whoever may read it reads every org''s rows%s.',
                  r.name, coalesce(' (readable by ' || r.exposed || ')', '')),
           format('SELECT tenant_guard.protect(%L);', r.name)
      FROM r WHERE r.kind IN ('r', 'p') AND r.org AND NOT r.rls
    UNION ALL
    SELECT 'rls_disabled_exposed', CASE WHEN r.exposed IS NULL THEN 'info' ELSE 'warn' END, ARRAY['SECURITY'],
           'table ' || r.name,
           format('%s has no row-level security, in a schema untrusted roles can use%s.', r.name,
                  coalesce('; readable by ' || r.exposed, '; no untrusted role has privileges on it now')),
           format(E'ALTER TABLE %1$s ENABLE ROW LEVEL SECURITY;\nALTER TABLE %1$s FORCE ROW LEVEL SECURITY;\n-- then add policies for what each role may see (or REVOKE its privileges)', r.name)
      FROM r WHERE r.kind IN ('r', 'p') AND NOT r.org AND NOT r.rls AND r.policies = 0 AND r.schema_usable AND NOT r.tg_member
    UNION ALL
    SELECT 'rls_not_forced', 'warn', ARRAY['SECURITY'], 'table ' || r.name,
           format('%s has row-level security but not FORCEd: its owner (%s) and whatever runs as the owner, such as its SECURITY DEFINER functions and views, read every row.',
                  r.name, pg_get_userbyid(r.owner)),
           format('ALTER TABLE %s FORCE ROW LEVEL SECURITY;', r.name)
      FROM r WHERE r.kind IN ('r', 'p') AND r.rls AND NOT r.forced
    UNION ALL
    SELECT 'rls_enabled_no_policy', 'info', ARRAY['SECURITY'], 'table ' || r.name,
           format('%s has row-level security and no policy: no role but its owner and superusers sees a row.', r.name),
           CASE WHEN r.org THEN format('SELECT tenant_guard.protect(%L);', r.name)
                ELSE format('-- add a policy: CREATE POLICY ... ON %s USING (...);', translate(r.name, E'\n\r', '  ')) END
      FROM r WHERE r.kind IN ('r', 'p') AND r.rls AND r.policies = 0 AND NOT r.tg_member
    UNION ALL
    SELECT 'policies_rls_disabled', 'error', ARRAY['SECURITY'], 'table ' || r.name,
           format('%s has %s polic%s but row-level security is disabled: the policies are ignored.', r.name, r.policies,
                  CASE WHEN r.policies = 1 THEN 'y' ELSE 'ies' END),
           format(E'ALTER TABLE %1$s ENABLE ROW LEVEL SECURITY;\nALTER TABLE %1$s FORCE ROW LEVEL SECURITY;', r.name)
      FROM r WHERE r.kind IN ('r', 'p') AND NOT r.rls AND r.policies > 0
    UNION ALL
    SELECT 'org_column_not_indexed', 'warn', ARRAY['PERFORMANCE'], 'table ' || r.name,
           format('No index of %s begins with org_id: every org-filtered query scans the whole table.', r.name),
           format('CREATE INDEX ON %s (org_id);', r.name)
      -- (a partitioned table is judged by its partitions, which hold the rows)
      FROM r WHERE r.kind = 'r' AND r.org
       AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = r.oid AND i.indkey[0] = r.org_attnum)
    UNION ALL
    SELECT 'rls_unsupported_relation', CASE WHEN r.org THEN 'error' ELSE 'warn' END, ARRAY['SECURITY'],
           CASE r.kind WHEN 'm' THEN 'materialized view ' ELSE 'foreign table ' END || r.name,
           format('%s is a %s, which row-level security does not apply to, and %s can read it%s.', r.name,
                  CASE r.kind WHEN 'm' THEN 'materialized view' ELSE 'foreign table' END, r.exposed,
                  CASE WHEN r.org THEN ': every org''s rows' ELSE '' END),
           coalesce(format('REVOKE ALL ON %s FROM %s;', r.name, tenant_guard._audit_revoke_from(r.oid)),
                    format('-- revoke from the role that gives %s access to %s', r.exposed, translate(r.name, E'\n\r', '  ')))
      FROM r WHERE r.kind IN ('m', 'f') AND r.exposed IS NOT NULL
    UNION ALL
    SELECT 'view_bypasses_rls', CASE WHEN r.exposed IS NULL THEN 'warn' ELSE 'error' END, ARRAY['SECURITY'],
           'view ' || r.name,
           format('View %s reads tables with row-level security as its owner (%s), not as the caller: it is not security_invoker%s.',
                  r.name, pg_get_userbyid(r.owner), coalesce('; readable by ' || r.exposed, '')),
           format('ALTER VIEW %s SET (security_invoker = true);', r.name)
      FROM r WHERE r.kind = 'v' AND NOT r.security_invoker
       AND EXISTS (SELECT 1 FROM pg_rewrite rw
                     JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid AND d.refclassid = 'pg_class'::regclass
                     JOIN pg_class t ON t.oid = d.refobjid
                    WHERE rw.ev_class = r.oid AND t.oid <> r.oid AND t.relrowsecurity)
    UNION ALL
    SELECT 'sensitive_columns_exposed', 'error', ARRAY['SECURITY'], format('column %s.%s', r.name, quote_ident(a.attname)),
           format('Column %s of %s looks sensitive and %s can read it with no row-level security in the way.',
                  quote_ident(a.attname), r.name,
                  (SELECT string_agg(u.rolname, ', ' ORDER BY u.roleid <> 0, u.rolname) FROM tenant_guard._audit_untrusted() u
                    WHERE has_column_privilege(u.roleid, r.oid, a.attnum, 'SELECT'))),
           coalesce(format('REVOKE SELECT ON %s FROM %s;', r.name, tenant_guard._audit_revoke_from(r.oid)),
                    '-- revoke SELECT from the role that gives access')
      FROM r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
     WHERE NOT r.tg_member
       AND (r.kind IN ('m', 'f') OR (r.kind IN ('r', 'p') AND NOT r.rls) OR (r.kind = 'v' AND NOT r.security_invoker))
       AND a.attname ~* '(pass(word|wd|phrase)?|secret|token|api_?key|private_?key|credential|ssn|card_?number)'
       AND EXISTS (SELECT 1 FROM tenant_guard._audit_untrusted() u WHERE has_column_privilege(u.roleid, r.oid, a.attnum, 'SELECT'))
$$;

-- Policies, judged by what their expressions let through for each command
-- (core/src/policy_shape.rs). On a table with an org column, a command is
-- covered when a restrictive policy for everyone checks the org on it;
-- permissive policies of an uncovered command must check it themselves.
CREATE FUNCTION tenant_guard._audit_policies()
RETURNS SETOF tenant_guard.audit_finding
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH helpers AS (
        SELECT ARRAY['tenant_guard.current_org_id()'::regprocedure::oid,
                     'tenant_guard.current_org_id_if(text)'::regprocedure::oid] AS oids
    ), pol AS (
        SELECT p.polname, r.oid AS relid, r.name AS tbl, r.org, p.polpermissive AS permissive,
               0::oid = ANY (p.polroles) AS for_all,
               0::oid = ANY (p.polroles) OR EXISTS (
                   SELECT 1 FROM tenant_guard._audit_untrusted() u, unnest(p.polroles) pr
                    WHERE u.roleid <> 0 AND pg_has_role(u.roleid, pr, 'MEMBER')) AS untrusted,
               CASE p.polcmd WHEN '*' THEN ARRAY['r', 'a', 'w', 'd'] ELSE ARRAY[p.polcmd::text] END AS cmds,
               tenant_guard._policy_shape(p.polqual::text, coalesce(r.org_attnum, 0::int2), h.oids) AS q,
               tenant_guard._policy_shape(p.polwithcheck::text, coalesce(r.org_attnum, 0::int2), h.oids) AS c
          FROM pg_policy p JOIN tenant_guard._audit_relations() r ON r.oid = p.polrelid, helpers h
         WHERE r.rls
    ), per_cmd AS (
        SELECT pol.*, cmd,
               CASE cmd
                   WHEN 'a' THEN CASE WHEN pol.c <> 'none' THEN pol.c ELSE pol.q END
                   WHEN 'w' THEN CASE WHEN pol.q NOT IN ('org_checked', 'none') THEN pol.q
                                      WHEN pol.c <> 'none' THEN pol.c ELSE pol.q END
                   ELSE pol.q
               END AS shape
          FROM pol, unnest(pol.cmds) cmd
    ), covered AS (
        SELECT DISTINCT relid, cmd FROM per_cmd
         WHERE NOT permissive AND for_all AND shape = 'org_checked'
           AND (cmd <> 'w' OR q = 'org_checked')
    ), bad AS (
        SELECT pc.polname, pc.tbl, pc.org, pc.shape,
               string_agg(CASE pc.cmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE' ELSE 'DELETE' END,
                          ', ' ORDER BY pc.cmd) AS commands
          FROM per_cmd pc
         WHERE pc.permissive AND pc.untrusted AND pc.shape NOT IN ('org_checked', 'none')
           AND (pc.org OR pc.shape = 'always_true')
           AND NOT EXISTS (SELECT 1 FROM covered cv WHERE cv.relid = pc.relid AND cv.cmd = pc.cmd)
         GROUP BY pc.polname, pc.tbl, pc.org, pc.shape
    )
    SELECT CASE bad.shape WHEN 'always_true' THEN 'policy_always_true'
                          WHEN 'or_branch_skips_org' THEN 'policy_or_skips_org'
                          ELSE 'policy_without_helpers' END,
           CASE WHEN bad.org THEN 'error' ELSE 'warn' END, ARRAY['SECURITY'],
           format('policy %I on %s', bad.polname, bad.tbl),
           format('Permissive policy %I on %s (%s) %s.', bad.polname, bad.tbl, bad.commands,
                  CASE bad.shape
                      WHEN 'always_true' THEN 'is always true: it lets every row through' ||
                           CASE WHEN bad.org THEN ', of every org' ELSE '' END
                      WHEN 'or_branch_skips_org' THEN 'has an OR branch that lets rows through without comparing org_id with tenant_guard.current_org_id()'
                      ELSE 'never compares org_id with tenant_guard.current_org_id() or current_org_id_if(): it does not confine rows to the caller''s org (settings such as request.jwt.claims can be set by any role)'
                  END),
           CASE WHEN bad.org THEN format(E'DROP POLICY %I ON %s;\nSELECT tenant_guard.protect(%L);', bad.polname, bad.tbl, bad.tbl)
                ELSE format('DROP POLICY %I ON %s;', bad.polname, bad.tbl) END
      FROM bad
    UNION ALL
    SELECT 'multiple_permissive_policies', 'warn', ARRAY['PERFORMANCE', 'SECURITY'],
           format('table %s for %s', m.tbl, m.command),
           format('%s has %s permissive policies for %s (%s) that apply to %s: each is evaluated for every row, and any one of them admits a row.',
                  m.tbl, m.n, m.command, m.names, m.who),
           -- (a name may hold a line break: never let one end a comment line)
           format('-- merge %s on %s into one policy (OR their conditions), then drop the others', translate(m.names, E'\n\r', '  '), translate(m.tbl, E'\n\r', '  '))
      FROM (
          SELECT pc.tbl, CASE pc.cmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE' ELSE 'DELETE' END AS command,
                 u.rolname AS who, count(*) AS n, string_agg(quote_ident(pc.polname), ', ' ORDER BY pc.polname) AS names,
                 row_number() OVER (PARTITION BY pc.tbl, pc.cmd ORDER BY count(*) DESC, u.roleid <> 0, u.rolname) AS rn
            FROM per_cmd pc, tenant_guard._audit_untrusted() u
           WHERE pc.permissive
             AND (pc.for_all OR (u.roleid <> 0 AND EXISTS (
                     SELECT 1 FROM pg_policy p2, unnest(p2.polroles) pr
                      WHERE p2.polrelid = pc.relid AND p2.polname = pc.polname AND pg_has_role(u.roleid, pr, 'MEMBER'))))
           GROUP BY pc.tbl, pc.cmd, u.roleid, u.rolname
          HAVING count(*) > 1
      ) m
     WHERE m.rn = 1
$$;

CREATE FUNCTION tenant_guard._audit_functions()
RETURNS SETOF tenant_guard.audit_finding
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH f AS (
        SELECT p.oid, p.oid::regprocedure::text AS name, n.nspname, p.prosecdef, p.proconfig,
               ext.extname,
               (SELECT string_agg(u.rolname, ', ' ORDER BY u.roleid <> 0, u.rolname) FROM tenant_guard._audit_untrusted() u
                 WHERE has_function_privilege(u.roleid, p.oid, 'EXECUTE')) AS callers
          FROM pg_proc p
          JOIN pg_namespace n ON n.oid = p.pronamespace
          LEFT JOIN LATERAL (SELECT e.extname FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
                              WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e') ext ON true
         WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND (ext.extname IS NULL OR ext.extname = 'tenant_guard')
    )
    SELECT 'security_definer_search_path', CASE WHEN f.callers IS NULL THEN 'warn' ELSE 'error' END, ARRAY['SECURITY'],
           'function ' || f.name,
           format('SECURITY DEFINER function %s has no search_path of its own: a caller can put objects of their own in its way%s.',
                  f.name, coalesce(' (callable by ' || f.callers || ')', '')),
           format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp;', f.name, f.nspname)
      FROM f
     WHERE f.prosecdef AND NOT EXISTS (SELECT 1 FROM unnest(f.proconfig) cfg WHERE cfg LIKE 'search\_path=%')
    UNION ALL
    SELECT 'security_definer_public_execute', 'warn', ARRAY['SECURITY'], 'function ' || f.name,
           format('SECURITY DEFINER function %s runs with its owner''s rights and every role may call it (EXECUTE is granted to PUBLIC).', f.name),
           format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC;', f.name)
      FROM f
     WHERE f.prosecdef AND f.extname IS NULL AND has_function_privilege('public', f.oid, 'EXECUTE')
$$;

-- The extension's own objects, against the privileges they were installed
-- with (pg_init_privs): anything granted since, to PUBLIC or a role outside
-- tenant_guard_service, widens what the threat model lets untrusted roles do.
CREATE FUNCTION tenant_guard._audit_extension_grants()
RETURNS SETOF tenant_guard.audit_finding
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'tenant_guard'),
    obj AS (
        -- (kind for GRANT, catalog, oid, column number, name, column, ACL, owner, acldefault type)
        SELECT 'FUNCTION' AS kind, 'pg_proc'::regclass AS cls, p.oid, 0 AS sub, p.oid::regprocedure::text AS name,
               NULL::name AS col, p.proacl AS acl, p.proowner AS owner, 'f'::"char" AS deftype
          FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
         WHERE d.refobjid = (SELECT oid FROM ext)
        UNION ALL
        SELECT CASE WHEN c.relkind = 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, 'pg_class'::regclass, c.oid, 0, c.oid::regclass::text,
               NULL, c.relacl, c.relowner, CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END::"char"
          FROM pg_class c JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
         WHERE d.refobjid = (SELECT oid FROM ext)
        UNION ALL
        SELECT 'COLUMN', 'pg_class'::regclass, c.oid, a.attnum, c.oid::regclass::text, a.attname, a.attacl, c.relowner, 'c'::"char"
          FROM pg_class c JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attacl IS NOT NULL
         WHERE d.refobjid = (SELECT oid FROM ext)
        UNION ALL
        SELECT 'SCHEMA', 'pg_namespace'::regclass, n.oid, 0, quote_ident(n.nspname), NULL, n.nspacl, n.nspowner, 'n'::"char"
          FROM pg_namespace n WHERE n.nspname = 'tenant_guard'
    ), widened AS (
        SELECT o.*, a.grantee, a.privilege_type,
               CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END AS who
          FROM obj o, aclexplode(coalesce(o.acl, acldefault(CASE WHEN o.deftype = 'c' THEN 'r' ELSE o.deftype END, o.owner))) a
         WHERE a.grantee <> o.owner
           AND NOT EXISTS (
               SELECT 1 FROM pg_init_privs ip, aclexplode(ip.initprivs) i
                WHERE ip.objoid = o.oid AND ip.classoid = o.cls AND ip.objsubid = o.sub
                  AND i.grantee = a.grantee AND i.privilege_type = a.privilege_type)
    )
    SELECT 'extension_grant_widened',
           CASE WHEN w.grantee = 0 OR NOT (pg_has_role(w.grantee, 'tenant_guard_service', 'MEMBER')
                                          OR (SELECT rolsuper FROM pg_roles WHERE oid = w.grantee))
                THEN 'error' ELSE 'warn' END,
           ARRAY['SECURITY'],
           CASE WHEN w.kind = 'COLUMN' THEN format('column %s (%I)', w.name, w.col) ELSE lower(w.kind) || ' ' || w.name END,
           format('%s on %s was granted to %s after the install; tenant_guard installed it without that grant.',
                  w.privilege_type,
                  CASE WHEN w.kind = 'COLUMN' THEN format('column %I of %s', w.col, w.name) ELSE lower(w.kind) || ' ' || w.name END,
                  w.who),
           CASE WHEN w.kind = 'COLUMN' THEN format('REVOKE %s (%I) ON %s FROM %s;', w.privilege_type, w.col, w.name, w.who)
                ELSE format('REVOKE %s ON %s %s FROM %s;', w.privilege_type, w.kind, w.name, w.who)
                     -- A table-wide REVOKE also takes the column grants the
                     -- extension made to the same role: give them back.
                     || coalesce(E'\n' || (
                            SELECT format('GRANT %s (%s) ON %s TO %s;', w.privilege_type,
                                          string_agg(quote_ident(att.attname), ', ' ORDER BY att.attnum), w.name, w.who)
                              FROM pg_init_privs ip JOIN pg_attribute att ON att.attrelid = ip.objoid AND att.attnum = ip.objsubid,
                                   aclexplode(ip.initprivs) i
                             WHERE w.kind = 'TABLE' AND ip.objoid = w.oid AND ip.classoid = 'pg_class'::regclass AND ip.objsubid > 0
                               AND i.grantee = w.grantee AND i.privilege_type = w.privilege_type
                            HAVING count(*) > 0), '')
           END
      FROM widened w
$$;

CREATE FUNCTION tenant_guard._audit_roles()
RETURNS SETOF tenant_guard.audit_finding
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 'superuser_login', CASE WHEN r.oid = 10 THEN 'info' ELSE 'warn' END, ARRAY['SECURITY'],
           'role ' || quote_ident(r.rolname),
           CASE WHEN r.oid = 10
                THEN format('%I is the bootstrap superuser: keep it for administration only (no application connects as it).', r.rolname)
                ELSE format('Login role %I is a superuser: it bypasses row-level security and can read the passphrase.', r.rolname) END,
           CASE WHEN r.oid = 10 THEN NULL ELSE format('ALTER ROLE %I NOSUPERUSER;', r.rolname) END
      FROM pg_roles r WHERE r.rolsuper AND r.rolcanlogin
    UNION ALL
    SELECT 'bypassrls_login', 'warn', ARRAY['SECURITY'], 'role ' || quote_ident(r.rolname),
           format('Login role %I bypasses row-level security and is not a member of tenant_guard_service.', r.rolname),
           format('ALTER ROLE %I NOBYPASSRLS;', r.rolname)
      FROM pg_roles r
     WHERE r.rolbypassrls AND r.rolcanlogin AND NOT r.rolsuper AND NOT pg_has_role(r.oid, 'tenant_guard_service', 'MEMBER')
    UNION ALL
    SELECT 'bypassrls_login', 'warn', ARRAY['SECURITY'], 'role ' || quote_ident(r.rolname),
           format('Login role %I can SET ROLE to %I, which bypasses row-level security.', r.rolname, b.rolname),
           format('REVOKE %I FROM %I;', b.rolname, r.rolname)
      FROM pg_roles r JOIN pg_auth_members m ON m.member = r.oid JOIN pg_roles b ON b.oid = m.roleid
     WHERE r.rolcanlogin AND NOT r.rolsuper AND b.rolbypassrls AND b.rolname <> 'tenant_guard_service'
       AND NOT pg_has_role(r.oid, 'tenant_guard_service', 'MEMBER')
    UNION ALL
    SELECT 'service_member', 'info', ARRAY['SECURITY'], 'role ' || quote_ident(r.rolname),
           format('%I is a member of tenant_guard_service: it may assume() any user and read every org''s secrets. Keep this to trusted backend code.',
                  r.rolname),
           format('REVOKE tenant_guard_service FROM %I;', r.rolname)
      FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member
     WHERE m.roleid = 'tenant_guard_service'::regrole
    UNION ALL
    SELECT 'read_all_settings_member', 'error', ARRAY['SECURITY'], 'role ' || quote_ident(r.rolname),
           format('%I is a member of %I%s, so it can read superuser-only settings: tenant_guard.passphrase and jwt_secret included.',
                  r.rolname, g.rolname, CASE WHEN g.rolname <> 'pg_read_all_settings' THEN ' (which includes pg_read_all_settings)' ELSE '' END),
           format('REVOKE %I FROM %I;', g.rolname, r.rolname)
      FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member JOIN pg_roles g ON g.oid = m.roleid
     WHERE pg_has_role(g.oid, 'pg_read_all_settings', 'MEMBER') AND NOT r.rolsuper AND r.oid >= 16384
    UNION ALL
    SELECT 'app_role_owns_tenant_table', 'error', ARRAY['SECURITY'], 'table ' || t.name,
           format('%s is owned by %I, which an untrusted login role is or can become: the owner can disable its row-level security and drop its policies.',
                  t.name, pg_get_userbyid(t.owner)),
           format('ALTER TABLE %s OWNER TO %I;  -- or to a NOLOGIN role that owns your schema', t.name, current_user)
      FROM tenant_guard._audit_relations() t
     WHERE t.kind IN ('r', 'p') AND t.org AND NOT (SELECT rolsuper FROM pg_roles WHERE oid = t.owner)
       AND EXISTS (SELECT 1 FROM tenant_guard._audit_untrusted() u WHERE u.roleid <> 0 AND pg_has_role(u.roleid, t.owner, 'MEMBER'))
    UNION ALL
    SELECT 'schema_create_public', 'error', ARRAY['SECURITY'], 'schema ' || quote_ident(n.nspname),
           format('Every role may create objects in schema %I: a function or operator there can capture calls of code whose search_path includes it.', n.nspname),
           format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC;', n.nspname)
      FROM pg_namespace n, aclexplode(n.nspacl) a
     WHERE a.grantee = 0 AND a.privilege_type = 'CREATE'
    UNION ALL
    SELECT 'untrusted_language_trusted', 'error', ARRAY['SECURITY'], 'language ' || quote_ident(l.lanname),
           format('Language %I can reach the operating system but is marked trusted, so roles that are not superusers can write functions in it.', l.lanname),
           format('UPDATE pg_catalog.pg_language SET lanpltrusted = false WHERE lanname = %L;', l.lanname)
      FROM pg_language l
     WHERE l.lanpltrusted AND (l.lanname IN ('c', 'internal') OR l.lanname ~ 'u$')
$$;

-- Logging settings that write bound or literal secrets to the server log,
-- for the whole server and in each role's or database's own settings.
CREATE FUNCTION tenant_guard._audit_logging()
RETURNS SETOF tenant_guard.audit_finding
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH libs AS (
        SELECT lower(trim(both ' "' from x)) AS lib
          FROM unnest(string_to_array(current_setting('shared_preload_libraries') || ',' ||
                                      current_setting('session_preload_libraries') || ',' ||
                                      current_setting('local_preload_libraries'), ',')) x
    ), scoped AS (
        -- (where, how to undo it there, setting name, value)
        SELECT 'server' AS scope, 'ALTER SYSTEM SET %s = %s;' AS fix, s.name, current_setting(s.name, true) AS value
          FROM (VALUES ('log_statement'), ('log_min_duration_statement'), ('auto_explain.log_verbose'),
                       ('auto_explain.log_parameter_max_length'), ('pg_stat_statements.track_utility')) s(name)
        UNION ALL
        SELECT CASE WHEN d.setrole <> 0 AND d.setdatabase <> 0
                    THEN format('role %I in database %I', pg_get_userbyid(d.setrole), (SELECT datname FROM pg_database WHERE oid = d.setdatabase))
                    WHEN d.setrole <> 0 THEN format('role %I', pg_get_userbyid(d.setrole))
                    ELSE format('database %I', (SELECT datname FROM pg_database WHERE oid = d.setdatabase)) END,
               CASE WHEN d.setrole <> 0 AND d.setdatabase <> 0
                    THEN format('ALTER ROLE %I IN DATABASE %I RESET %%s;', pg_get_userbyid(d.setrole), (SELECT datname FROM pg_database WHERE oid = d.setdatabase))
                    WHEN d.setrole <> 0 THEN format('ALTER ROLE %I RESET %%s;', pg_get_userbyid(d.setrole))
                    ELSE format('ALTER DATABASE %I RESET %%s;', (SELECT datname FROM pg_database WHERE oid = d.setdatabase)) END,
               lower(split_part(cfg, '=', 1)), substr(cfg, length(split_part(cfg, '=', 1)) + 2)
          FROM pg_db_role_setting d, unnest(d.setconfig) cfg
    ), bad AS (
        SELECT s.*,
               CASE
                   WHEN s.name = 'log_statement' AND lower(s.value) IN ('all', 'mod') THEN 'log_statement'
                   WHEN s.name = 'log_min_duration_statement' AND s.value IN ('0', '0ms') THEN 'log_min_duration_statement'
                   WHEN s.name = 'auto_explain.log_verbose' AND lower(s.value) IN ('on', 'true', '1', 'yes')
                        AND EXISTS (SELECT 1 FROM libs WHERE lib = 'auto_explain') THEN 'auto_explain'
                   WHEN s.name = 'auto_explain.log_parameter_max_length' AND s.value NOT IN ('0', '')
                        AND EXISTS (SELECT 1 FROM libs WHERE lib = 'auto_explain') THEN 'auto_explain'
                   WHEN s.name = 'pg_stat_statements.track_utility' AND lower(s.value) IN ('on', 'true', '1', 'yes')
                        AND EXISTS (SELECT 1 FROM libs WHERE lib = 'pg_stat_statements') THEN 'pg_stat_statements'
               END AS what
          FROM scoped s
    )
    SELECT CASE b.what WHEN 'log_statement' THEN 'log_statement_leaks'
                       WHEN 'log_min_duration_statement' THEN 'log_min_duration_leaks'
                       WHEN 'auto_explain' THEN 'auto_explain_leaks'
                       ELSE 'pg_stat_statements_utility' END,
           'warn', ARRAY['SECURITY'],
           CASE WHEN b.scope = 'server' THEN 'setting ' || b.name ELSE format('setting %s for %s', b.name, b.scope) END,
           format('%s = %s (%s) %s', b.name, b.value, b.scope,
                  CASE b.what
                      WHEN 'pg_stat_statements' THEN 'keeps the text of SET and other utility statements, secrets written in them included, readable through pg_stat_statements.'
                      WHEN 'auto_explain' THEN 'writes plans with their parameters or outputs to the server log.'
                      ELSE 'writes every statement (or every one with its duration) to the server log, with its literals and, for extended-protocol queries, its bound values; tenant_guard masks its own secret-taking calls, but not your functions that wrap them.'
                  END),
           CASE WHEN b.scope = 'server' THEN
                    format(b.fix, b.name, CASE b.what WHEN 'log_statement' THEN '''ddl'''
                                                     WHEN 'log_min_duration_statement' THEN '-1'
                                                     WHEN 'auto_explain' THEN CASE WHEN b.name LIKE '%verbose' THEN 'off' ELSE '0' END
                                                     ELSE 'off' END) || E'\nSELECT pg_reload_conf();'
                ELSE format(b.fix, b.name) END
      FROM bad b WHERE b.what IS NOT NULL
$$;

CREATE FUNCTION tenant_guard._audit_days(setting text)
RETURNS interval
LANGUAGE sql STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT make_interval(days => current_setting('tenant_guard.' || setting)::int) $$;

CREATE FUNCTION tenant_guard._audit_api_keys()
RETURNS SETOF tenant_guard.audit_finding
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH k AS (
        SELECT k.*, format('api_key %s', k.id) AS obj,
               format('API key %s (%s, %L, role %s, org %s)', k.id, k.prefix, k.name, k.role, k.org_id) AS what,
               format('UPDATE tenant_guard.api_keys SET revoked_at = now() WHERE id = %L;', k.id) AS revoke
          FROM tenant_guard.api_keys k
         WHERE k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now())
    )
    SELECT 'api_key_no_expiry', 'warn', ARRAY['SECURITY'], k.obj,
           k.what || ' never expires: a leaked copy works until someone notices.',
           format('UPDATE tenant_guard.api_keys SET expires_at = now() + interval ''90 days'' WHERE id = %L;', k.id)
      FROM k WHERE k.expires_at IS NULL
    UNION ALL
    SELECT 'api_key_unused', 'warn', ARRAY['SECURITY'], k.obj,
           format('%s has not been used since %s (more than %s days): revoke what nobody uses.', k.what,
                  coalesce(k.last_used_at, k.created_at), current_setting('tenant_guard.audit_key_idle_days')),
           k.revoke
      FROM k WHERE coalesce(k.last_used_at, k.created_at) < now() - tenant_guard._audit_days('audit_key_idle_days')
    UNION ALL
    SELECT 'api_key_not_rotated', 'warn', ARRAY['SECURITY'], k.obj,
           format('%s was created on %s, more than %s days ago: rotate it.', k.what, k.created_at::date,
                  current_setting('tenant_guard.audit_key_max_age_days')),
           format(E'-- an admin of the org rotates it: SELECT * FROM tenant_guard.rotate_api_key(%L); or revoke it:\n%s', k.id, k.revoke)
      FROM k WHERE k.created_at < now() - tenant_guard._audit_days('audit_key_max_age_days')
    UNION ALL
    SELECT 'api_key_creator_gone', 'error', ARRAY['SECURITY'], k.obj,
           format('%s was created by %s, who is no longer a member of the org at role %s or above (authenticate() refuses it; it should be revoked).',
                  k.what, k.created_by, k.role),
           k.revoke
      FROM k
     WHERE k.created_by IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM tenant_guard.memberships m
                         JOIN tenant_guard.roles mr ON mr.name = m.role
                         JOIN tenant_guard.roles kr ON kr.name = k.role
                        WHERE m.org_id = k.org_id AND m.user_id = k.created_by AND mr.rank >= kr.rank)
$$;

CREATE FUNCTION tenant_guard._audit_hygiene()
RETURNS SETOF tenant_guard.audit_finding
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 'request_log_not_purged', 'warn', ARRAY['SECURITY', 'PERFORMANCE'], 'table tenant_guard.request_log',
           format('The request log holds entries older than %s days and purge_request_log() has %s.',
                  current_setting('tenant_guard.audit_purge_days'),
                  coalesce('not run since ' || (SELECT last_run_at FROM tenant_guard.maintenance_runs WHERE task = 'purge_request_log'), 'never run')),
           format(E'SELECT tenant_guard.purge_request_log(interval %L);\n-- and schedule it daily (pg_cron: see the README)',
                  current_setting('tenant_guard.audit_purge_days') || ' days')
     WHERE EXISTS (SELECT 1 FROM tenant_guard.request_log WHERE at < now() - tenant_guard._audit_days('audit_purge_days'))
       AND coalesce((SELECT last_run_at FROM tenant_guard.maintenance_runs WHERE task = 'purge_request_log'), '-infinity')
           < now() - tenant_guard._audit_days('audit_purge_days')
    UNION ALL
    SELECT 'webhook_endpoint_failing', 'warn', ARRAY['SECURITY'], format('webhook_endpoint %s', e.id),
           format('Webhook endpoint %s (org %s, %s) has had no successful delivery for %s days while deliveries to it fail.',
                  e.id, e.org_id, left(e.url, 64), current_setting('tenant_guard.audit_webhook_failing_days')),
           format('UPDATE tenant_guard.webhook_endpoints SET active = false WHERE id = %L;', e.id)
      FROM tenant_guard.webhook_endpoints e
     WHERE e.active
       AND EXISTS (SELECT 1 FROM tenant_guard.webhook_outbox o
                    WHERE o.endpoint_id = e.id AND o.delivered_at IS NULL AND o.attempts > 0
                      AND o.created_at < now() - tenant_guard._audit_days('audit_webhook_failing_days'))
       AND NOT EXISTS (SELECT 1 FROM tenant_guard.webhook_outbox o
                        WHERE o.endpoint_id = e.id
                          AND o.delivered_at > now() - tenant_guard._audit_days('audit_webhook_failing_days'))
    UNION ALL
    SELECT 'extension_outdated', 'warn', ARRAY['SECURITY'], 'extension tenant_guard',
           format('tenant_guard %s is installed; this server has %s.', e.extversion, a.default_version),
           'ALTER EXTENSION tenant_guard UPDATE;'
      FROM pg_extension e JOIN pg_available_extensions a ON a.name = e.extname
     WHERE e.extname = 'tenant_guard' AND e.extversion IS DISTINCT FROM a.default_version
$$;

-- Settings and keys; needs the library (so only when it is preloaded).
CREATE FUNCTION tenant_guard._audit_keys()
RETURNS SETOF tenant_guard.audit_finding
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH ks AS (SELECT * FROM tenant_guard._key_status()),
    files AS (
        -- Where each secret setting is set (never the value).
        SELECT f.name, f.sourcefile FROM pg_file_settings f
         WHERE f.applied AND f.name IN ('tenant_guard.passphrase', 'tenant_guard.old_passphrases', 'tenant_guard.jwt_secret')
    ), old_needed AS (
        SELECT count(*) FILTER (WHERE s.key_id <> ks.current_key_id) AS under_old,
               count(*) FILTER (WHERE s.key_id <> ks.current_key_id AND s.key_id <> ALL (ks.old_key_ids)) AS unopenable,
               count(*) FILTER (WHERE s.key_id = ANY (ks.old_key_ids)) AS need_old
          FROM tenant_guard.secrets s, ks
    )
    SELECT 'passphrase_missing', 'error', ARRAY['SECURITY'], 'setting tenant_guard.passphrase',
           'tenant_guard.passphrase is not set: secrets cannot be stored or read, and no context can be signed.',
           E'-- in tenant_guard_secrets.conf (mode 0600, owned by the server''s OS user):\n--   tenant_guard.passphrase = ''<output of: openssl rand -base64 48>''\nSELECT pg_reload_conf();'
      FROM ks WHERE ks.passphrase = 'missing'
    UNION ALL
    SELECT 'passphrase_too_short', 'error', ARRAY['SECURITY'], 'setting tenant_guard.passphrase',
           'tenant_guard.passphrase is shorter than 32 bytes and is refused: secrets cannot be stored or read, and no context can be signed.',
           E'-- in tenant_guard_secrets.conf: tenant_guard.passphrase = ''<output of: openssl rand -base64 48>'', the old one in tenant_guard.old_passphrases\nSELECT pg_reload_conf();'
      FROM ks WHERE ks.passphrase = 'too_short'
    UNION ALL
    SELECT 'jwt_secret_missing', 'warn', ARRAY['SECURITY'], 'setting tenant_guard.jwt_secret',
           'tenant_guard.jwt_secret is not set: authenticate_jwt() refuses every token (acknowledge this if you use API keys and assume() only).',
           E'-- in tenant_guard_secrets.conf: tenant_guard.jwt_secret = ''<output of: openssl rand -base64 48>''\nSELECT pg_reload_conf();'
      FROM ks WHERE ks.jwt_secret = 'missing'
    UNION ALL
    SELECT 'jwt_secret_too_short', 'error', ARRAY['SECURITY'], 'setting tenant_guard.jwt_secret',
           'tenant_guard.jwt_secret is shorter than 32 bytes and is refused: authenticate_jwt() refuses every token.',
           E'-- in tenant_guard_secrets.conf: tenant_guard.jwt_secret = ''<output of: openssl rand -base64 48>''\nSELECT pg_reload_conf();'
      FROM ks WHERE ks.jwt_secret = 'too_short'
    UNION ALL
    SELECT 'secret_setting_outside_file', 'warn', ARRAY['SECURITY'], 'setting ' || f.name,
           format('%s was set with ALTER SYSTEM (it is in %s): the value went through SQL, where pg_stat_statements, a client''s history or a log may have kept it.',
                  f.name, f.sourcefile),
           format(E'-- first put %1$s in tenant_guard_secrets.conf, then:\nALTER SYSTEM RESET %1$s;\nSELECT pg_reload_conf();', f.name)
      FROM files f WHERE f.sourcefile LIKE '%/postgresql.auto.conf'
    UNION ALL
    SELECT 'secret_setting_outside_file', 'warn', ARRAY['SECURITY'], 'setting ' || s.name,
           format('%s is set but by no configuration file: on the server''s command line it is visible to every OS user (ps).', s.name),
           format('-- remove %s from the server''s command line and put it in tenant_guard_secrets.conf', s.name)
      FROM ks, (VALUES ('tenant_guard.passphrase'), ('tenant_guard.jwt_secret')) s(name)
     WHERE CASE s.name WHEN 'tenant_guard.passphrase' THEN ks.passphrase ELSE ks.jwt_secret END <> 'missing'
       AND NOT EXISTS (SELECT 1 FROM files f WHERE f.name = s.name)
    UNION ALL
    SELECT 'old_passphrases_unneeded', 'warn', ARRAY['SECURITY'], 'setting tenant_guard.old_passphrases',
           'tenant_guard.old_passphrases is set but no secret is encrypted under any of them: a leaked old passphrase still opens what it used to.',
           CASE WHEN EXISTS (SELECT 1 FROM files f WHERE f.name = 'tenant_guard.old_passphrases' AND f.sourcefile LIKE '%/postgresql.auto.conf')
                THEN E'ALTER SYSTEM RESET tenant_guard.old_passphrases;\nSELECT pg_reload_conf();'
                ELSE E'-- remove tenant_guard.old_passphrases from the file that sets it, then:\nSELECT pg_reload_conf();' END
      FROM ks, old_needed o WHERE cardinality(ks.old_key_ids) > 0 AND o.need_old = 0
    UNION ALL
    SELECT 'secrets_under_old_key', CASE WHEN o.unopenable > 0 THEN 'error' ELSE 'warn' END, ARRAY['SECURITY'],
           'table tenant_guard.secrets',
           format('%s secret(s) are still encrypted under an old passphrase%s.', o.under_old,
                  CASE WHEN o.unopenable > 0 THEN format(' (%s under none that is configured: they cannot be read until their passphrase is back in old_passphrases)', o.unopenable)
                       ELSE '' END),
           E'SELECT tenant_guard.rotate_secrets(1000);  -- repeat until it returns 0'
      FROM ks, old_needed o WHERE ks.current_key_id IS NOT NULL AND o.under_old > 0
    UNION ALL
    SELECT 'require_protection_off', 'info', ARRAY['SECURITY'], 'setting tenant_guard.require_protection',
           format('tenant_guard.require_protection is %s: a new table with an org_id column can be committed without row-level security.',
                  current_setting('tenant_guard.require_protection')),
           E'ALTER SYSTEM SET tenant_guard.require_protection = ''error'';\nSELECT pg_reload_conf();'
     WHERE current_setting('tenant_guard.require_protection') <> 'error'
$$;

-- The audit trail: switched off anywhere (the configuration, a role or
-- database setting, a function's SET clause), who may switch it off or set
-- the secret settings (PostgreSQL 15 parameter grants), entries lost; needs
-- the library.
CREATE FUNCTION tenant_guard._audit_trail()
RETURNS SETOF tenant_guard.audit_finding
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 'audit_trail_off', 'error', ARRAY['SECURITY'], 'setting tenant_guard.audit',
           'tenant_guard.audit is off (in the server''s configuration, or in this session): secret reads, assume() and changes to members, API keys, secrets and webhook endpoints leave no trace.',
           E'ALTER SYSTEM RESET tenant_guard.audit;  -- and remove it from postgresql.conf if it is set there\nSELECT pg_reload_conf();'
     WHERE NOT current_setting('tenant_guard.audit')::boolean
    UNION ALL
    SELECT 'audit_trail_off', 'error', ARRAY['SECURITY'],
           format('setting tenant_guard.audit for %s', w.who),
           format('tenant_guard.audit is off for %s: what they do leaves no trace in the audit trail.', w.who),
           format('ALTER %s RESET tenant_guard.audit;', w.target)
      FROM (SELECT coalesce(nullif(concat_ws(' in ', 'role ' || r.rolname, 'database ' || d.datname), ''), 'every role (ALTER ROLE ALL)') AS who,
                   CASE WHEN r.rolname IS NOT NULL AND d.datname IS NOT NULL THEN format('ROLE %I IN DATABASE %I', r.rolname, d.datname)
                        WHEN r.rolname IS NOT NULL THEN format('ROLE %I', r.rolname)
                        WHEN d.datname IS NOT NULL THEN format('DATABASE %I', d.datname)
                        ELSE 'ROLE ALL' END AS target, s.setconfig
              FROM pg_db_role_setting s
              LEFT JOIN pg_roles r ON r.oid = s.setrole
              LEFT JOIN pg_database d ON d.oid = s.setdatabase) w,
           unnest(w.setconfig) c
     WHERE split_part(c, '=', 1) = 'tenant_guard.audit' AND NOT substr(c, length('tenant_guard.audit=') + 1)::boolean
    UNION ALL
    SELECT 'audit_trail_off', 'error', ARRAY['SECURITY'], format('function %s', p.oid::regprocedure),
           format('Function %s switches tenant_guard.audit off while it runs (a SET clause): what it does leaves no trace.', p.oid::regprocedure),
           format('ALTER FUNCTION %s RESET tenant_guard.audit;', p.oid::regprocedure)
      FROM pg_proc p, unnest(p.proconfig) c
     WHERE split_part(c, '=', 1) = 'tenant_guard.audit' AND NOT substr(c, length('tenant_guard.audit=') + 1)::boolean
    UNION ALL
    SELECT 'setting_granted', 'error', ARRAY['SECURITY'], format('setting %s', a.parname),
           format('%s may be %s by %s (GRANT ... ON PARAMETER): tenant_guard''s settings are for superusers only (tenant_guard refuses their SET by anyone else, but ALTER SYSTEM is not refused).',
                  a.parname, lower(x.privilege_type),
                  CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(x.grantee)::text END),
           format('REVOKE %s ON PARAMETER %s FROM %s;', x.privilege_type, a.parname,
                  CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(x.grantee)) END)
      FROM pg_parameter_acl a, aclexplode(a.paracl) x
     WHERE a.parname LIKE 'tenant\_guard.%'
       AND (x.grantee = 0 OR NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.oid = x.grantee))
    UNION ALL
    -- Losses of this database: the writer records each as an
    -- audit_entries_lost entry of its trail (since the server started).
    SELECT 'audit_entries_lost', 'error', ARRAY['SECURITY'], 'table tenant_guard.audit_log',
           format('The audit trail of this database records %s loss%s since the server started: %s audit entr%s could not be recorded (the log queue was full, or a log writer failed).',
                  g.n, CASE WHEN g.n = 1 THEN '' ELSE 'es' END, g.k, CASE WHEN g.k = 1 THEN 'y' ELSE 'ies' END),
           E'-- find the gaps: SELECT at, detail FROM tenant_guard.audit_log WHERE action = ''audit_entries_lost'' ORDER BY seq;\n-- then look for what fills the queue (request_log_queue(), audit_log_queue()) or makes the writer fail (the server log)'
      FROM (SELECT count(*) AS n, coalesce(sum((regexp_match(l.detail, '^(\d+)'))[1]::bigint), 0) AS k
              FROM tenant_guard.audit_log l
             WHERE l.action = 'audit_entries_lost' AND l.at >= pg_postmaster_start_time()) g
     WHERE g.n > 0
    UNION ALL
    -- Losses the server counted that no trail holds yet (the counters are
    -- the server's): a warning where this database's trail shows none.
    SELECT 'audit_entries_lost', 'warn', ARRAY['SECURITY'], 'table tenant_guard.audit_log',
           format('%s audit entr%s lost in this server %s not recorded in any database''s trail yet: each is recorded at its database''s next write (one of a database dropped since stays unrecorded).',
                  q.lost_unrecorded, CASE WHEN q.lost_unrecorded = 1 THEN 'y' ELSE 'ies' END,
                  CASE WHEN q.lost_unrecorded = 1 THEN 'is' ELSE 'are' END),
           E'-- in each database: SELECT code, detail FROM tenant_guard.security_audit() WHERE code = ''audit_entries_lost'';'
      FROM tenant_guard.audit_log_queue() q
     WHERE q.lost_unrecorded > 0
       AND NOT EXISTS (SELECT 1 FROM tenant_guard.audit_log l
                        WHERE l.action = 'audit_entries_lost' AND l.at >= pg_postmaster_start_time())
$$;

-- Citus: the policies of every shard placement of a distributed table with
-- row-level security must be the coordinator's (Citus copies them to the
-- shards, without AS RESTRICTIVE: docs/citus.md). Runs only where Citus is
-- installed; asks each placement through Citus.
CREATE FUNCTION tenant_guard._audit_citus()
RETURNS SETOF tenant_guard.audit_finding
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- One line per policy: name, command, mode, roles, USING, WITH CHECK.
    -- (run_command_on_placements formats the query with the shard's name: %% is %.)
    describe constant text := $q$SELECT coalesce(string_agg(format('%%s|%%s|%%s|%%s|%%s|%%s', p.polname, p.polcmd, p.polpermissive,
        (SELECT string_agg(CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END, ',' ORDER BY 1) FROM unnest(p.polroles) r),
        coalesce(pg_get_expr(p.polqual, p.polrelid), '-'), coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '-')), E'
' ORDER BY p.polname), '')
      FROM pg_catalog.pg_policy p WHERE p.polrelid = '%1$s'::regclass$q$;
    -- (Citus's catalog, there only where Citus is: hence dynamic SQL)
    citus_tables constant text := $q$SELECT c.oid::regclass FROM pg_catalog.pg_dist_partition d JOIN pg_catalog.pg_class c ON c.oid = d.logicalrelid
                                      WHERE c.relrowsecurity OR EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid)
                                      ORDER BY 1::text$q$;
    placements constant text := 'SELECT shardid, nodename, nodeport, success, result FROM run_command_on_placements($1, $2)';
    rel regclass;
    shard bigint;
    node text;
    port integer;
    ok boolean;
    result text;
    mine text;
    bad text;
    mode_only boolean;
    twins boolean;
BEGIN
    IF to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN;
    END IF;
    FOR rel IN EXECUTE citus_tables LOOP
        EXECUTE replace(replace(describe, '%%', '%'), '%1$s', rel::oid::text) INTO mine;
        bad := NULL;
        mode_only := true;
        FOR shard, node, port, ok, result IN EXECUTE placements USING rel, describe LOOP
            IF NOT ok OR result IS DISTINCT FROM mine THEN
                bad := concat_ws(', ', bad, format('shard %s on %s:%s', shard, node, port));
                IF NOT ok OR regexp_replace(result, '^([^|]*\|[^|]*\|)[tf]\|', '\1?|', 'gn')
                                     IS DISTINCT FROM regexp_replace(mine, '^([^|]*\|[^|]*\|)[tf]\|', '\1?|', 'gn') THEN
                    mode_only := false;
                END IF;
            END IF;
        END LOOP;
        CONTINUE WHEN bad IS NULL;
        -- Only the mode differs on a table protect() made: its permissive
        -- twins carry the same rule, so every shard still isolates orgs.
        twins := (SELECT count(*) = 4 FROM pg_catalog.pg_policy p WHERE p.polrelid = rel AND p.polpermissive
                    AND p.polname IN ('tenant_guard_allow_select', 'tenant_guard_allow_insert', 'tenant_guard_allow_update', 'tenant_guard_allow_delete'));
        RETURN NEXT ROW('citus_shard_policies_differ', CASE WHEN mode_only AND twins THEN 'warn' ELSE 'error' END, ARRAY['SECURITY'],
                        'table ' || rel::text,
                        format('The row-level security policies of %s differ between the coordinator and %s%s.', rel, left(bad, 500),
                               CASE WHEN mode_only AND twins
                                    THEN ' in mode only (Citus copies policies without AS RESTRICTIVE; protect()''s permissive policies keep every shard isolated)'
                                    ELSE ': a shard may let other orgs'' rows through' END),
                        CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = rel AND p.polname LIKE 'tenant\_guard\_%')
                             THEN format('SELECT tenant_guard.protect(%L);  -- re-creates the policies on the coordinator and, through Citus, on every shard', rel::text)
                             ELSE format('-- re-create the policies of %s (DROP POLICY, then CREATE POLICY: Citus copies them to the shards); prefer SELECT tenant_guard.protect(%L)', rel, rel::text) END
                       )::tenant_guard.audit_finding;
    END LOOP;
END
$$;

CREATE FUNCTION tenant_guard.security_audit(include_acknowledged boolean DEFAULT false)
RETURNS TABLE (code text, level text, categories text[], object text, detail text, remedy text, acknowledged boolean)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    libs text[] := string_to_array(replace(current_setting('shared_preload_libraries'), ' ', ''), ',');
    found tenant_guard.audit_finding[];
BEGIN
    IF NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION 'security_audit() must be run by a superuser'
            USING ERRCODE = '42501',
                  DETAIL = 'It reads settings, configuration files and catalogs only superusers may see.';
    END IF;
    found := ARRAY(SELECT f FROM tenant_guard._audit_tables() f)
          || ARRAY(SELECT f FROM tenant_guard._audit_functions() f)
          || ARRAY(SELECT f FROM tenant_guard._audit_extension_grants() f)
          || ARRAY(SELECT f FROM tenant_guard._audit_roles() f)
          || ARRAY(SELECT f FROM tenant_guard._audit_logging() f);
    -- The rest needs the library, which loads only when preloaded (calling
    -- one of its functions otherwise fails): skip it and say so.
    IF 'tenant_guard' = ANY (libs) THEN
        found := found
              || ARRAY(SELECT f FROM tenant_guard._audit_policies() f)
              || ARRAY(SELECT f FROM tenant_guard._audit_keys() f)
              || ARRAY(SELECT f FROM tenant_guard._audit_api_keys() f)
              || ARRAY(SELECT f FROM tenant_guard._audit_hygiene() f)
              || ARRAY(SELECT f FROM tenant_guard._audit_trail() f)
              || ARRAY(SELECT f FROM tenant_guard._audit_citus() f);
    ELSE
        found := found || ROW(
            'library_not_preloaded', 'error', ARRAY['SECURITY'], 'setting shared_preload_libraries',
            'tenant_guard is not in shared_preload_libraries: its functions refuse to run, its settings (the passphrase included) are placeholders any role can read, and the checks of policies, keys, API keys and hygiene were skipped.',
            format(E'ALTER SYSTEM SET shared_preload_libraries = %s;\n-- then restart the server',
                   (SELECT string_agg(quote_literal(x), ', ') FROM unnest(array_remove(libs, '') || ARRAY['tenant_guard']) x))
        )::tenant_guard.audit_finding;
    END IF;
    RETURN QUERY
    SELECT f.code, f.level, f.categories, f.object, f.detail, f.remedy, a.code IS NOT NULL
      FROM unnest(found) f
      LEFT JOIN LATERAL (SELECT a.code FROM tenant_guard.security_audit_acknowledgements a
                          WHERE a.code = f.code AND a.object IN (f.object, '*') LIMIT 1) a ON true
     WHERE include_acknowledged OR a.code IS NULL
     ORDER BY CASE f.level WHEN 'error' THEN 0 WHEN 'warn' THEN 1 ELSE 2 END, f.code, f.object;
END
$$;

-- Acknowledge a finding (object '*': every object of the code) so it stops
-- showing; DELETE the row from security_audit_acknowledgements to undo.
CREATE FUNCTION tenant_guard.acknowledge_finding(code text, object text, reason text)
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO tenant_guard.security_audit_acknowledgements AS a (code, object, reason)
    VALUES (acknowledge_finding.code, acknowledge_finding.object, acknowledge_finding.reason)
    ON CONFLICT ON CONSTRAINT security_audit_acknowledgements_pkey
    DO UPDATE SET reason = excluded.reason, acknowledged_by = excluded.acknowledged_by, acknowledged_at = excluded.acknowledged_at
$$;

REVOKE ALL ON FUNCTION tenant_guard._audit_untrusted(), tenant_guard._audit_exposed(oid), tenant_guard._audit_revoke_from(oid),
    tenant_guard._audit_relations(), tenant_guard._audit_tables(), tenant_guard._audit_policies(),
    tenant_guard._audit_functions(), tenant_guard._audit_extension_grants(), tenant_guard._audit_roles(),
    tenant_guard._audit_logging(), tenant_guard._audit_days(text), tenant_guard._audit_api_keys(),
    tenant_guard._audit_hygiene(), tenant_guard._audit_keys(), tenant_guard._key_status(), tenant_guard._audit_trail(), tenant_guard._audit_citus(),
    tenant_guard._policy_shape(text, smallint, oid[]),
    tenant_guard.security_audit(boolean), tenant_guard.acknowledge_finding(text, text, text) FROM PUBLIC;
