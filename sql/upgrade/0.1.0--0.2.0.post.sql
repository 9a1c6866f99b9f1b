-- tenant_guard 0.1.0 -> 0.2.0: what comes after the 0.2.0 definitions
-- (written by hand; see .pre.sql).

-- The 0.1.0 request log becomes the partition of everything before
-- tomorrow (UTC); the writer makes the days after that.
DO $$
DECLARE
    upper timestamptz := ((now() AT TIME ZONE 'UTC')::date + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    PERFORM pg_catalog.setval('tenant_guard.request_log_id_seq',
                              (SELECT greatest(s.last_value, 1) FROM tenant_guard.request_log_before_0_2_0_id_seq s));
    ALTER TABLE tenant_guard.request_log_before_0_2_0
        ALTER COLUMN id SET DEFAULT pg_catalog.nextval('tenant_guard.request_log_id_seq'::pg_catalog.regclass);
    DROP SEQUENCE tenant_guard.request_log_before_0_2_0_id_seq;
    ALTER TABLE tenant_guard.request_log_before_0_2_0
        RENAME CONSTRAINT request_log_before_0_2_0_outcome_check TO request_log_outcome_check;
    -- (one scan of the old log, to check that every row lies before the bound)
    EXECUTE pg_catalog.format('ALTER TABLE tenant_guard.request_log ATTACH PARTITION tenant_guard.request_log_before_0_2_0 FOR VALUES FROM (MINVALUE) TO (%L)', upper);
END
$$;

-- Tables protect()ed under 0.1.0 carry its policies: four restrictive ones
-- and a permissive `tenant_guard_allow` (true). Their rule stays in force
-- as it is; protect() now writes each rule as a restrictive and a
-- permissive policy (docs/citus.md says why), and the require_protection
-- guard and security_audit() expect that shape: protect() each again, with
-- the column and roles read from its policies. A table protect() refuses
-- now keeps its 0.1.0 policies, and a warning names it.
DO $$
DECLARE
    t regclass;
    col name;
    rd text;
    wr text;
    dl text;
BEGIN
    FOR t IN SELECT c.oid::regclass FROM pg_catalog.pg_class c
              WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_policy p
                             WHERE p.polrelid = c.oid AND p.polname = 'tenant_guard_allow')
              ORDER BY c.relispartition, c.oid LOOP
        -- (a partitioned table's protect() has re-done its partitions)
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policy p
                                   WHERE p.polrelid = t AND p.polname = 'tenant_guard_allow');
        SELECT a.attname INTO col
          FROM pg_catalog.pg_policy p
          JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_policy'::regclass AND d.objid = p.oid
          JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
         WHERE p.polrelid = t AND p.polname = 'tenant_guard_select' AND d.refobjsubid > 0
         LIMIT 1;
        SELECT (pg_catalog.regexp_match(pg_catalog.pg_get_expr(p.polqual, p.polrelid), 'current_org_id_if\(''(\w+)'''))[1]
          INTO rd FROM pg_catalog.pg_policy p WHERE p.polrelid = t AND p.polname = 'tenant_guard_select';
        SELECT (pg_catalog.regexp_match(pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), 'current_org_id_if\(''(\w+)'''))[1]
          INTO wr FROM pg_catalog.pg_policy p WHERE p.polrelid = t AND p.polname = 'tenant_guard_insert';
        SELECT (pg_catalog.regexp_match(pg_catalog.pg_get_expr(p.polqual, p.polrelid), 'current_org_id_if\(''(\w+)'''))[1]
          INTO dl FROM pg_catalog.pg_policy p WHERE p.polrelid = t AND p.polname = 'tenant_guard_delete';
        IF col IS NULL OR rd IS NULL OR wr IS NULL OR dl IS NULL THEN
            RAISE WARNING 'tenant_guard 0.2.0: % keeps its 0.1.0 policies: they are not the ones 0.1.0''s protect() made (one is missing or was changed)', t
                USING HINT = 'Check its policies, then run SELECT tenant_guard.protect(...) on it; security_audit() lists it meanwhile.';
            CONTINUE;
        END IF;
        BEGIN
            PERFORM tenant_guard.protect(t, col, rd, wr, dl);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'tenant_guard 0.2.0: % keeps its 0.1.0 policies: protect() refused it (%)', t, SQLERRM
                USING HINT = 'Fix what the message names, then run SELECT tenant_guard.protect(...) on it; security_audit() lists it meanwhile.';
        END;
    END LOOP;
END
$$;
