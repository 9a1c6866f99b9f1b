-- Webhooks: endpoints (signing secrets live in `secrets`, kind 'webhook'),
-- the signed outbox, replay protection, their policies, functions and grants.

-- Webhooks: endpoints (signing secrets live in `secrets`, kind 'webhook') and the signed outbox.
CREATE TABLE tenant_guard.webhook_endpoints (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL REFERENCES tenant_guard.organizations (id) ON DELETE CASCADE,
    url text NOT NULL CHECK (url ~ '^https://[^/@\s]+(/\S*)?$'),
    events text[] NOT NULL DEFAULT '{*}',
    active boolean NOT NULL DEFAULT true,
    previous_secret_until timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Who made it: an endpoint stops when its creator is no longer an admin
    -- of the org (see _membership_changed in finalize.sql). Last, as the
    -- 0.1.0 -> 0.2.0 update adds it.
    created_by uuid
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

ALTER TABLE tenant_guard.webhook_endpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_guard.webhook_endpoints FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_guard_select ON tenant_guard.webhook_endpoints
    FOR SELECT USING (org_id = tenant_guard.current_org_id_if('admin'));
ALTER TABLE tenant_guard.webhook_outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_guard.webhook_outbox FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_guard_select ON tenant_guard.webhook_outbox
    FOR SELECT USING (org_id = tenant_guard.current_org_id_if('admin'));
ALTER TABLE tenant_guard.webhook_seen ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_guard.webhook_seen FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_guard_service_read ON tenant_guard.webhook_endpoints FOR SELECT TO tenant_guard_service USING (true);
CREATE POLICY tenant_guard_service_read ON tenant_guard.webhook_outbox FOR SELECT TO tenant_guard_service USING (true);

CREATE FUNCTION tenant_guard.create_webhook_endpoint(url text, events text[] DEFAULT '{*}')
RETURNS TABLE (endpoint_id uuid, secret text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    org uuid := tenant_guard.current_org_id();
    canonical text;
BEGIN
    PERFORM tenant_guard._require_user_role('admin');
    -- Parsed as HTTP clients parse it, judged and stored in canonical form
    -- (url_policy.rs); the delivery worker must still check the addresses
    -- a name resolves to: a public name can point inside.
    canonical := tenant_guard._webhook_url(url);
    IF events IS NULL OR cardinality(events) = 0 OR cardinality(events) > 100 OR array_position(events, NULL) IS NOT NULL
       OR EXISTS (SELECT 1 FROM unnest(events) e WHERE length(e) NOT BETWEEN 1 AND 200) THEN
        RAISE EXCEPTION 'events must be a list of 1 to 100 names of 1 to 200 characters (''*'' for all)' USING ERRCODE = '22023';
    END IF;
    INSERT INTO tenant_guard.webhook_endpoints (org_id, url, events, created_by)
    VALUES (org, canonical, create_webhook_endpoint.events, tenant_guard.current_user_id())
    RETURNING id INTO endpoint_id;
    secret := tenant_guard._webhook_new_secret(org, endpoint_id, 'current');
    RETURN NEXT;
EXCEPTION WHEN OTHERS THEN
    -- A refusal is recorded in the audit trail at once (the URL only if it
    -- was accepted: a refused one is not echoed anywhere).
    PERFORM tenant_guard._trail_note('create_webhook_endpoint', tenant_guard.current_org_id(), 'webhook_endpoint', NULL,
                                     NULL, canonical, NULL, SQLSTATE);
    RAISE;
END
$$;

-- New signing secret, returned once; during `grace` deliveries carry both signatures.
CREATE FUNCTION tenant_guard.rotate_webhook_secret(endpoint_id uuid, grace interval DEFAULT '24 hours')
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    org uuid := tenant_guard.current_org_id();
BEGIN
    PERFORM tenant_guard._require_user_role('admin');
    IF grace IS NULL OR grace < interval '0' THEN
        RAISE EXCEPTION 'grace must be a non-negative interval' USING ERRCODE = '22023';
    END IF;
    UPDATE tenant_guard.webhook_endpoints e SET previous_secret_until = now() + grace
     WHERE e.id = rotate_webhook_secret.endpoint_id AND e.org_id = org;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no webhook endpoint with that id in this organization' USING ERRCODE = '02000';
    END IF;
    PERFORM tenant_guard._webhook_retire_secret(org, rotate_webhook_secret.endpoint_id);
    RETURN tenant_guard._webhook_new_secret(org, rotate_webhook_secret.endpoint_id, 'current');
EXCEPTION WHEN OTHERS THEN
    PERFORM tenant_guard._trail_note('rotate_webhook_secret', tenant_guard.current_org_id(), 'webhook_endpoint',
                                     rotate_webhook_secret.endpoint_id, NULL, NULL, NULL, SQLSTATE);
    RAISE;
END
$$;

-- Stop deliveries to an endpoint (admin of its org); pending deliveries
-- are no longer handed out.
CREATE FUNCTION tenant_guard.disable_webhook_endpoint(endpoint_id uuid)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM tenant_guard._require_user_role('admin');
    UPDATE tenant_guard.webhook_endpoints e SET active = false
     WHERE e.id = disable_webhook_endpoint.endpoint_id AND e.org_id = tenant_guard.current_org_id();
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no webhook endpoint with that id in this organization' USING ERRCODE = '02000';
    END IF;
EXCEPTION WHEN OTHERS THEN
    PERFORM tenant_guard._trail_note('disable_webhook_endpoint', tenant_guard.current_org_id(), 'webhook_endpoint',
                                     disable_webhook_endpoint.endpoint_id, NULL, NULL, NULL, SQLSTATE);
    RAISE;
END
$$;

-- One signed outbox row per active endpoint of the current org that wants `event`.
CREATE FUNCTION tenant_guard.enqueue_webhook(event text, payload jsonb)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    org uuid := tenant_guard.current_org_id();
    e record;
    body text;
    ts bigint := extract(epoch FROM clock_timestamp())::bigint;
    mid text;
    n integer := 0;
BEGIN
    PERFORM tenant_guard.require_role('member');
    IF event IS NULL OR event = '' OR payload IS NULL THEN
        RAISE EXCEPTION 'event and payload are required' USING ERRCODE = '22004';
    END IF;
    IF length(event) > 200 THEN
        RAISE EXCEPTION 'event must be at most 200 characters' USING ERRCODE = '22023';
    END IF;
    body := payload::text;
    IF octet_length(body) > tenant_guard._outbox_max_payload() THEN
        RAISE EXCEPTION 'a webhook payload may be at most % bytes', tenant_guard._outbox_max_payload() USING ERRCODE = '54000';
    END IF;
    FOR e IN SELECT * FROM tenant_guard.webhook_endpoints w
              WHERE w.org_id = org AND w.active AND (enqueue_webhook.event = ANY (w.events) OR '*' = ANY (w.events))
    LOOP
        -- Each org's deliveries are rate-limited (raises 53400), so no org can
        -- bury the shared outbox.
        PERFORM tenant_guard._outbox_admit(org, 1);
        mid := tenant_guard._webhook_msg_id();
        INSERT INTO tenant_guard.webhook_outbox (org_id, endpoint_id, event, msg_id, ts, payload, headers)
        VALUES (org, e.id, enqueue_webhook.event, mid, ts, body,
                jsonb_build_object('webhook-id', mid, 'webhook-timestamp', ts::text,
                                   'webhook-signature', tenant_guard._webhook_signature(org, e.id, mid, ts, body,
                                                           coalesce(e.previous_secret_until > now(), false)),
                                   'content-type', 'application/json'));
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- For the application's delivery worker (service role): up to n due deliveries,
-- each handed to exactly one caller (SKIP LOCKED), leased for 5 minutes.
-- Fair across orgs: each org's oldest due delivery comes before any org's
-- second, and so on, so one org's flood cannot push the others back.
-- Deliveries of endpoints that are no longer active are not handed out.
CREATE FUNCTION tenant_guard.claim_webhook_deliveries(n integer DEFAULT 10)
RETURNS TABLE (delivery_id uuid, org_id uuid, url text, headers jsonb, payload text, attempts integer)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF n IS NULL OR n < 1 OR n > 1000 THEN
        RAISE EXCEPTION 'n must be between 1 and 1000' USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    WITH RECURSIVE orgs AS (
        -- The orgs with work queued, one index probe each (a loose index scan).
        (SELECT o.org_id AS org FROM tenant_guard.webhook_outbox o
          WHERE o.status IN ('pending', 'in_flight') ORDER BY o.org_id LIMIT 1)
        UNION ALL
        SELECT (SELECT o.org_id FROM tenant_guard.webhook_outbox o
                 WHERE o.status IN ('pending', 'in_flight') AND o.org_id > orgs.org ORDER BY o.org_id LIMIT 1)
          FROM orgs WHERE orgs.org IS NOT NULL
    ), candidates AS (
        SELECT c.id, c.rank, c.next_attempt_at
          FROM orgs, LATERAL (
              SELECT o.id, o.next_attempt_at, row_number() OVER (ORDER BY o.next_attempt_at) AS rank
                FROM tenant_guard.webhook_outbox o
               WHERE o.org_id = orgs.org
                 AND ((o.status = 'pending' AND o.next_attempt_at <= now())
                      OR (o.status = 'in_flight' AND o.locked_until < now()))
               ORDER BY o.next_attempt_at
               LIMIT n) c
         WHERE orgs.org IS NOT NULL
    ), due AS (
        SELECT o.id, c.rank, c.next_attempt_at
          FROM tenant_guard.webhook_outbox o
          JOIN candidates c ON c.id = o.id
          JOIN tenant_guard.webhook_endpoints e ON e.id = o.endpoint_id AND e.active
         -- Repeated here, on the locked row: a row another worker claimed
         -- since this statement's snapshot is re-checked against it.
         WHERE ((o.status = 'pending' AND o.next_attempt_at <= now())
                OR (o.status = 'in_flight' AND o.locked_until < now()))
         ORDER BY c.rank, c.next_attempt_at
         LIMIT n
         FOR UPDATE OF o SKIP LOCKED
    ), claimed AS (
        UPDATE tenant_guard.webhook_outbox o
           SET status = 'in_flight', attempts = o.attempts + 1, locked_until = now() + interval '5 minutes'
          FROM due WHERE o.id = due.id
        RETURNING o.id, o.org_id, o.endpoint_id, o.headers, o.payload, o.attempts, due.rank, due.next_attempt_at
    )
    SELECT c.id, c.org_id, e.url, c.headers, c.payload, c.attempts
      FROM claimed c JOIN tenant_guard.webhook_endpoints e ON e.id = c.endpoint_id
     ORDER BY c.rank, c.next_attempt_at;
END
$$;

-- Record a delivery attempt. Failures retry with exponential back-off
-- (30 s, 1 min, 2 min, ... capped at 6 h); after max_attempts it is 'failed'.
CREATE FUNCTION tenant_guard.complete_webhook_delivery(delivery_id uuid, ok boolean, status_code integer DEFAULT NULL,
                                                        error text DEFAULT NULL, max_attempts integer DEFAULT 12)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    st text;
BEGIN
    UPDATE tenant_guard.webhook_outbox o
       SET status = CASE WHEN ok THEN 'delivered' WHEN o.attempts >= max_attempts THEN 'failed' ELSE 'pending' END,
           delivered_at = CASE WHEN ok THEN now() END,
           next_attempt_at = CASE WHEN ok THEN o.next_attempt_at
                                  ELSE now() + least(interval '30 seconds' * power(2, greatest(o.attempts - 1, 0)), interval '6 hours') END,
           locked_until = NULL,
           last_status_code = status_code,
           last_error = left(error, 1000)
     WHERE o.id = delivery_id AND o.status = 'in_flight'
    RETURNING o.status INTO st;
    IF st IS NULL THEN
        RAISE EXCEPTION 'no in-flight delivery with that id' USING ERRCODE = '02000';
    END IF;
    RETURN st;
END
$$;

-- Inbound replay protection: verify, then remember msg_id under `source` for
-- the tolerance window; a second delivery of the same id is refused.
CREATE FUNCTION tenant_guard.webhook_verify_once(source text, secret text, msg_id text, ts bigint, payload text,
                                                  signature_header text, tolerance interval DEFAULT '5 minutes')
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    fresh boolean;
BEGIN
    IF tolerance IS NULL OR tolerance <= interval '0' OR tolerance > interval '1 hour' THEN
        RAISE EXCEPTION 'replay protection needs a tolerance window of at most 1 hour' USING ERRCODE = '22023';
    END IF;
    IF NOT tenant_guard.webhook_verify(secret, msg_id, ts, payload, signature_header, tolerance) THEN
        RETURN false;
    END IF;
    DELETE FROM tenant_guard.webhook_seen s WHERE s.source = webhook_verify_once.source AND s.expires_at < now();
    INSERT INTO tenant_guard.webhook_seen (source, msg_id, expires_at)
    VALUES (webhook_verify_once.source, webhook_verify_once.msg_id, now() + 2 * tolerance)
    ON CONFLICT DO NOTHING
    RETURNING true INTO fresh;
    RETURN coalesce(fresh, false);
END
$$;

SELECT pg_catalog.pg_extension_config_dump('tenant_guard.webhook_endpoints', '');
SELECT pg_catalog.pg_extension_config_dump('tenant_guard.webhook_outbox', '');

REVOKE ALL ON tenant_guard.webhook_endpoints, tenant_guard.webhook_outbox, tenant_guard.webhook_seen FROM PUBLIC;
REVOKE ALL ON FUNCTION
    tenant_guard.hmac_sha256(bytea, bytea), tenant_guard.webhook_sign(text, text, bigint, text),
    tenant_guard.webhook_verify(text, text, bigint, text, text, interval),
    tenant_guard.verify_stripe_signature(text, text, text, interval),
    tenant_guard.verify_github_signature(text, bytea, text),
    tenant_guard.verify_slack_signature(text, bigint, text, text, interval),
    tenant_guard.create_webhook_endpoint(text, text[]), tenant_guard.rotate_webhook_secret(uuid, interval),
    tenant_guard.disable_webhook_endpoint(uuid), tenant_guard.enqueue_webhook(text, jsonb),
    tenant_guard.claim_webhook_deliveries(integer), tenant_guard.complete_webhook_delivery(uuid, boolean, integer, text, integer),
    tenant_guard.webhook_verify_once(text, text, text, bigint, text, text, interval),
    tenant_guard._webhook_url(text), tenant_guard._webhook_new_secret(uuid, uuid, text),
    tenant_guard._webhook_retire_secret(uuid, uuid), tenant_guard._webhook_signature(uuid, uuid, text, bigint, text, boolean),
    tenant_guard._webhook_msg_id(), tenant_guard._outbox_max_payload(), tenant_guard._outbox_admit(uuid, integer)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    tenant_guard.hmac_sha256(bytea, bytea), tenant_guard.webhook_sign(text, text, bigint, text),
    tenant_guard.webhook_verify(text, text, bigint, text, text, interval),
    tenant_guard.verify_stripe_signature(text, text, text, interval),
    tenant_guard.verify_github_signature(text, bytea, text),
    tenant_guard.verify_slack_signature(text, bigint, text, text, interval),
    tenant_guard.create_webhook_endpoint(text, text[]), tenant_guard.rotate_webhook_secret(uuid, interval),
    tenant_guard.disable_webhook_endpoint(uuid), tenant_guard.enqueue_webhook(text, jsonb)
TO PUBLIC;
GRANT EXECUTE ON FUNCTION
    tenant_guard.claim_webhook_deliveries(integer), tenant_guard.complete_webhook_delivery(uuid, boolean, integer, text, integer),
    tenant_guard.webhook_verify_once(text, text, text, bigint, text, text, interval)
TO tenant_guard_service;
GRANT SELECT (id, org_id, url, events, active, previous_secret_until, created_by, created_at)
    ON tenant_guard.webhook_endpoints TO PUBLIC;
GRANT SELECT ON tenant_guard.webhook_outbox TO PUBLIC;      -- rows filtered by RLS (admins, own org)
GRANT SELECT ON tenant_guard.webhook_endpoints, tenant_guard.webhook_outbox TO tenant_guard_service;
-- They receive a secret as an argument (see secrets.sql).
ALTER FUNCTION tenant_guard.webhook_sign(text, text, bigint, text) SET log_min_error_statement = panic;
ALTER FUNCTION tenant_guard.webhook_verify_once(text, text, text, bigint, text, text, interval) SET log_min_error_statement = panic;
