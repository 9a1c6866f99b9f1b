-- Citus: the internal helper the SQL of protect(), the guard and
-- security_audit() ask whether a table is a Citus table.
REVOKE ALL ON FUNCTION tenant_guard._is_citus_table(oid) FROM PUBLIC;
-- protect() runs with its caller's rights.
GRANT EXECUTE ON FUNCTION tenant_guard._is_citus_table(oid) TO PUBLIC;
