-- tenant_guard: the schema's privileges and the service role (runs first).
-- Every capability's SQL lives beside its Rust code in src/<capability>/;
-- each one revokes its functions from PUBLIC, then grants what each role needs.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'tenant_guard_service') THEN
        CREATE ROLE tenant_guard_service NOLOGIN BYPASSRLS;
    END IF;
END
$$;

REVOKE ALL ON SCHEMA tenant_guard FROM PUBLIC;
GRANT USAGE ON SCHEMA tenant_guard TO PUBLIC;
