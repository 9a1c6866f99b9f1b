-- Runs last: the rule that every function of the schema was revoked from
-- PUBLIC by its capability's file before anything was granted. A function
-- nobody revoked still has the default ACL (NULL), which lets PUBLIC execute
-- it: the install fails instead.
DO $$
DECLARE
    missed text;
BEGIN
    SELECT string_agg(p.oid::pg_catalog.regprocedure::text, ', ') INTO missed
      FROM pg_catalog.pg_proc p
     WHERE p.pronamespace = 'tenant_guard'::pg_catalog.regnamespace AND p.proacl IS NULL;
    IF missed IS NOT NULL THEN
        RAISE EXCEPTION 'tenant_guard functions left with default privileges (PUBLIC may execute them): %', missed
            USING HINT = 'Revoke them from PUBLIC in their capability''s SQL file, then grant what each role needs.';
    END IF;
END
$$;
