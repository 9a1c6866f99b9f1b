WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'tenant_guard'),
nsp AS (SELECT oid FROM pg_namespace WHERE nspname = 'tenant_guard'),
-- The request log's partitions (made by day, at run time) are its data, not the catalog.
parts AS (SELECT i.inhrelid AS oid FROM pg_inherits i WHERE i.inhparent = to_regclass('tenant_guard.request_log')
          UNION ALL
          SELECT x.indexrelid FROM pg_inherits i JOIN pg_index x ON x.indrelid = i.inhrelid
           WHERE i.inhparent = to_regclass('tenant_guard.request_log')),
members AS (SELECT d.classid, d.objid FROM pg_depend d, ext WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'),
facts(line) AS (
    SELECT format('function %s returns %s %s%s%s parallel=%s config=%s', p.oid::regprocedure, pg_get_function_result(p.oid),
                  CASE p.provolatile WHEN 'i' THEN 'immutable' WHEN 's' THEN 'stable' ELSE 'volatile' END,
                  CASE WHEN p.proisstrict THEN ' strict' ELSE '' END,
                  CASE WHEN p.prosecdef THEN ' security_definer' ELSE '' END,
                  p.proparallel, coalesce(array_to_string(p.proconfig, ';'), '-'))
      FROM pg_proc p, nsp WHERE p.pronamespace = nsp.oid
    UNION ALL
    SELECT format('function %s defaults %s', p.oid::regprocedure, pg_get_expr(p.proargdefaults, 0))
      FROM pg_proc p, nsp WHERE p.pronamespace = nsp.oid AND p.proargdefaults IS NOT NULL
    UNION ALL
    SELECT format('function %s acl %s', p.oid::regprocedure, coalesce((SELECT string_agg(x, ',' ORDER BY x) FROM unnest(p.proacl::text[]) x), 'default'))
      FROM pg_proc p, nsp WHERE p.pronamespace = nsp.oid
    UNION ALL
    SELECT format('relation %s kind=%s rls=%s force=%s', c.oid::regclass, c.relkind, c.relrowsecurity, c.relforcerowsecurity)
      FROM pg_class c, nsp WHERE c.relnamespace = nsp.oid AND c.oid NOT IN (SELECT oid FROM parts)
    UNION ALL
    SELECT format('relation %s acl %s', c.oid::regclass, coalesce((SELECT string_agg(x, ',' ORDER BY x) FROM unnest(c.relacl::text[]) x), 'default'))
      FROM pg_class c, nsp WHERE c.relnamespace = nsp.oid AND c.oid NOT IN (SELECT oid FROM parts)
    UNION ALL
    SELECT format('column %s.%s #%s %s%s default=%s acl=%s', c.oid::regclass, a.attname,
                  row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum), format_type(a.atttypid, a.atttypmod),
                  CASE WHEN a.attnotnull THEN ' not null' ELSE '' END, coalesce(pg_get_expr(ad.adbin, ad.adrelid), '-'),
                  coalesce(array_to_string(a.attacl, ','), '-'))
      FROM pg_class c JOIN nsp ON c.relnamespace = nsp.oid
      JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
     WHERE c.relkind IN ('r', 'p', 'v') AND c.oid NOT IN (SELECT oid FROM parts)
    UNION ALL
    SELECT format('constraint %s %s %s', co.conrelid::regclass, co.conname, pg_get_constraintdef(co.oid))
      FROM pg_constraint co JOIN pg_class c ON c.oid = co.conrelid JOIN nsp ON c.relnamespace = nsp.oid
     WHERE c.oid NOT IN (SELECT oid FROM parts)
    UNION ALL
    SELECT format('index %s', pg_get_indexdef(i.indexrelid))
      FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN nsp ON c.relnamespace = nsp.oid
     WHERE c.oid NOT IN (SELECT oid FROM parts)
    UNION ALL
    SELECT format('policy %s %s %s %s to=%s using=%s check=%s', po.polrelid::regclass, po.polname,
                  CASE WHEN po.polpermissive THEN 'permissive' ELSE 'restrictive' END, po.polcmd,
                  (SELECT string_agg(CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END, ',' ORDER BY 1) FROM unnest(po.polroles) r),
                  coalesce(pg_get_expr(po.polqual, po.polrelid), '-'), coalesce(pg_get_expr(po.polwithcheck, po.polrelid), '-'))
      FROM pg_policy po JOIN pg_class c ON c.oid = po.polrelid JOIN nsp ON c.relnamespace = nsp.oid
    UNION ALL
    SELECT format('trigger %s %s', t.tgrelid::regclass, pg_get_triggerdef(t.oid))
      FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN nsp ON c.relnamespace = nsp.oid WHERE NOT t.tgisinternal
    UNION ALL
    SELECT format('event trigger %s on %s tags=%s function=%s enabled=%s', e.evtname, e.evtevent,
                  coalesce(array_to_string(e.evttags, ','), '-'), e.evtfoid::regproc, e.evtenabled)
      FROM pg_event_trigger e JOIN members m ON m.classid = 'pg_event_trigger'::regclass AND m.objid = e.oid
    UNION ALL
    SELECT format('schema tenant_guard acl %s', (SELECT string_agg(x, ',' ORDER BY x) FROM unnest(n.nspacl::text[]) x))
      FROM pg_namespace n WHERE n.nspname = 'tenant_guard'
    UNION ALL
    SELECT format('extension member %s', pg_describe_object(m.classid, m.objid, 0)) FROM members m
    UNION ALL
    SELECT format('config dump %s', cfg::regclass) FROM pg_extension e, unnest(e.extconfig) cfg WHERE e.extname = 'tenant_guard'
    UNION ALL
    SELECT format('role tenant_guard_service login=%s bypassrls=%s', r.rolcanlogin, r.rolbypassrls) FROM pg_roles r WHERE r.rolname = 'tenant_guard_service'
)
SELECT string_agg(line, E'\n' ORDER BY line) FROM facts
