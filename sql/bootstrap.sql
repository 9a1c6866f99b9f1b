-- tenant_guard: tables and roles (runs before the generated function definitions).

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'tenant_guard_service') THEN
        CREATE ROLE tenant_guard_service NOLOGIN BYPASSRLS;
    END IF;
END
$$;

REVOKE ALL ON SCHEMA tenant_guard FROM PUBLIC;
GRANT USAGE ON SCHEMA tenant_guard TO PUBLIC;

-- The role ladder. Read-only reference data; the ranks match src/roles.rs.
CREATE TABLE tenant_guard.roles (
    name text PRIMARY KEY,
    rank int NOT NULL UNIQUE
);
INSERT INTO tenant_guard.roles (name, rank) VALUES
    ('viewer', 10), ('member', 20), ('admin', 30), ('owner', 40);

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
