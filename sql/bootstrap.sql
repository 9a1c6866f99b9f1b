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

-- API keys: only the SHA-256 of a key is stored; `prefix` is the public
-- display part (first 12 characters).
CREATE TABLE tenant_guard.api_keys (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL REFERENCES tenant_guard.organizations (id) ON DELETE CASCADE,
    name text NOT NULL,
    prefix text NOT NULL,
    key_hash bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    role text NOT NULL REFERENCES tenant_guard.roles (name),
    scopes text[] NOT NULL DEFAULT '{}',
    rate_limit_per_minute int NOT NULL DEFAULT 600 CHECK (rate_limit_per_minute > 0),
    expires_at timestamptz,
    revoked_at timestamptz,
    last_used_at timestamptz,
    created_by uuid,
    created_at timestamptz NOT NULL DEFAULT now(),
    rotated_to uuid REFERENCES tenant_guard.api_keys (id) ON DELETE SET NULL
);
CREATE INDEX api_keys_org_idx ON tenant_guard.api_keys (org_id);
CREATE INDEX api_keys_created_by_idx ON tenant_guard.api_keys (org_id, created_by);

-- Every authenticate() outcome; written by the request-log worker, never the key.
CREATE TABLE tenant_guard.request_log (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL,
    org_id uuid,
    api_key_id uuid,
    outcome text NOT NULL CHECK (outcome IN ('ok', 'invalid', 'revoked', 'expired', 'rate_limited')),
    action text,
    client_addr inet
);
CREATE INDEX request_log_org_at_idx ON tenant_guard.request_log (org_id, at);
-- BRIN: the log is append-only in time order, and purge_request_log() is its only user.
CREATE INDEX request_log_at_idx ON tenant_guard.request_log USING brin (at);

-- Secrets at rest: only the envelope (see README "Secrets at rest") is stored.
CREATE TABLE tenant_guard.secrets (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL REFERENCES tenant_guard.organizations (id) ON DELETE CASCADE,
    kind text NOT NULL CHECK (length(kind) BETWEEN 1 AND 100),
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 500),
    ciphertext bytea NOT NULL CHECK (length(ciphertext) >= 33 AND get_byte(ciphertext, 0) = 1),
    key_id bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, kind, name)
);
CREATE INDEX secrets_key_id_idx ON tenant_guard.secrets (key_id);

-- Webhooks: endpoints (signing secrets live in `secrets`, kind 'webhook') and the signed outbox.
CREATE TABLE tenant_guard.webhook_endpoints (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL REFERENCES tenant_guard.organizations (id) ON DELETE CASCADE,
    url text NOT NULL CHECK (url ~ '^https://[^/@\s]+(/\S*)?$'),
    events text[] NOT NULL DEFAULT '{*}',
    active boolean NOT NULL DEFAULT true,
    previous_secret_until timestamptz,
    -- Who made it: an endpoint stops when its creator is no longer an admin
    -- of the org (see _membership_changed in finalize.sql).
    created_by uuid,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_org_idx ON tenant_guard.webhook_endpoints (org_id);

CREATE TABLE tenant_guard.webhook_outbox (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL REFERENCES tenant_guard.organizations (id) ON DELETE CASCADE,
    endpoint_id uuid NOT NULL REFERENCES tenant_guard.webhook_endpoints (id) ON DELETE CASCADE,
    event text NOT NULL,
    msg_id text NOT NULL,
    ts bigint NOT NULL,
    payload text NOT NULL,
    headers jsonb NOT NULL,
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'in_flight', 'delivered', 'failed')),
    attempts int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    locked_until timestamptz,
    last_status_code int,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz
);
CREATE INDEX webhook_outbox_due_idx ON tenant_guard.webhook_outbox (next_attempt_at) WHERE status IN ('pending', 'in_flight');
-- Fair claims walk the orgs with queued work, then each org's oldest.
CREATE INDEX webhook_outbox_org_due_idx ON tenant_guard.webhook_outbox (org_id, next_attempt_at) WHERE status IN ('pending', 'in_flight');
CREATE INDEX webhook_outbox_org_idx ON tenant_guard.webhook_outbox (org_id, created_at);

-- Replay protection for inbound webhooks (opt-in through webhook_verify_once()).
CREATE TABLE tenant_guard.webhook_seen (
    source text NOT NULL,
    msg_id text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (source, msg_id)
);
