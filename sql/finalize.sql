-- tenant_guard: policies, PL/pgSQL functions and grants (runs after the
-- generated function definitions, which it references).

---------------------------------------------------------------- own tables
ALTER TABLE tenant_guard.organizations ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_guard.organizations FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_guard_select ON tenant_guard.organizations
    FOR SELECT USING (id = tenant_guard.current_org_id());

ALTER TABLE tenant_guard.memberships ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_guard.memberships FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_guard_select ON tenant_guard.memberships
    FOR SELECT USING (org_id = tenant_guard.current_org_id());

ALTER TABLE tenant_guard.api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_guard.api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_guard_select ON tenant_guard.api_keys
    FOR SELECT USING (org_id = tenant_guard.current_org_id_if('admin'));

ALTER TABLE tenant_guard.request_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_guard.request_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_guard_select ON tenant_guard.request_log
    FOR SELECT USING (org_id = tenant_guard.current_org_id_if('admin'));

ALTER TABLE tenant_guard.secrets ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_guard.secrets FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_guard_select ON tenant_guard.secrets
    FOR SELECT USING (org_id = tenant_guard.current_org_id_if('admin'));

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

-- BYPASSRLS is a role attribute and is not inherited by the members of
-- tenant_guard_service; these policies give its members read access to
-- tenant_guard's own tables without SET ROLE.
CREATE POLICY tenant_guard_service_read ON tenant_guard.organizations FOR SELECT TO tenant_guard_service USING (true);
CREATE POLICY tenant_guard_service_read ON tenant_guard.memberships FOR SELECT TO tenant_guard_service USING (true);
CREATE POLICY tenant_guard_service_read ON tenant_guard.api_keys FOR SELECT TO tenant_guard_service USING (true);
CREATE POLICY tenant_guard_service_read ON tenant_guard.request_log FOR SELECT TO tenant_guard_service USING (true);
CREATE POLICY tenant_guard_service_read ON tenant_guard.secrets FOR SELECT TO tenant_guard_service USING (true);
CREATE POLICY tenant_guard_service_read ON tenant_guard.webhook_endpoints FOR SELECT TO tenant_guard_service USING (true);
CREATE POLICY tenant_guard_service_read ON tenant_guard.webhook_outbox FOR SELECT TO tenant_guard_service USING (true);

---------------------------------------------------------------- API keys
CREATE FUNCTION tenant_guard.revoke_api_key(key_id uuid)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM tenant_guard.require_role('admin');
    IF tenant_guard.current_api_key_id() IS NOT NULL THEN
        RAISE EXCEPTION 'API keys cannot be managed from an API key context' USING ERRCODE = '42501';
    END IF;
    UPDATE tenant_guard.api_keys k SET revoked_at = coalesce(k.revoked_at, now())
     WHERE k.id = revoke_api_key.key_id AND k.org_id = tenant_guard.current_org_id();
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no API key with that id in this organization' USING ERRCODE = '02000';
    END IF;
END
$$;

CREATE FUNCTION tenant_guard.purge_request_log(older_than interval)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'older_than must be a non-negative interval' USING ERRCODE = '22023';
    END IF;
    DELETE FROM tenant_guard.request_log WHERE at < now() - older_than;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

CREATE FUNCTION tenant_guard.rate_limit(bucket text, per_period int, period interval, burst int DEFAULT 0)
RETURNS boolean
LANGUAGE sql VOLATILE PARALLEL UNSAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT tenant_guard._rate_limit(bucket, per_period, (extract(epoch FROM period) * 1000000)::bigint, burst) $$;
COMMENT ON FUNCTION tenant_guard.rate_limit(text, int, interval, int) IS
    'GCRA: true when this call is admitted; buckets are per database and org; NULL arguments raise 22004';

---------------------------------------------------------------- secrets
-- Migration from pgcrypto: decrypt rows of `source` (columns org_id uuid,
-- kind text, name text, ciphertext bytea made by pgp_sym_encrypt) with the
-- old key and store each under tenant_guard's envelope. Runs with the
-- caller's rights (it must be able to read `source`); service role only.
CREATE FUNCTION tenant_guard.import_pgcrypto_secrets(source regclass, pgp_key text)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    pgcrypto_schema name;
    n bigint;
BEGIN
    SELECT e.extnamespace::regnamespace::name INTO pgcrypto_schema FROM pg_extension e WHERE e.extname = 'pgcrypto';
    IF pgcrypto_schema IS NULL THEN
        RAISE EXCEPTION 'pgcrypto is not installed in this database' USING ERRCODE = '55000';
    END IF;
    EXECUTE format(
        'SELECT count(tenant_guard.put_secret_for(s.org_id, s.kind, s.name, %I.pgp_sym_decrypt(s.ciphertext, $1))) FROM %s s',
        pgcrypto_schema, source)
    INTO n USING pgp_key;
    RETURN n;
END
$$;

---------------------------------------------------------------- webhooks
CREATE FUNCTION tenant_guard.create_webhook_endpoint(url text, events text[] DEFAULT '{*}')
RETURNS TABLE (endpoint_id uuid, secret text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    org uuid := tenant_guard.current_org_id();
    canonical text;
BEGIN
    PERFORM tenant_guard.require_role('admin');
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
    PERFORM tenant_guard.require_role('admin');
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

---------------------------------------------------------------- organizations
CREATE FUNCTION tenant_guard.create_organization(name text, owner_user_id uuid)
RETURNS uuid
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_id uuid;
BEGIN
    IF owner_user_id IS NULL THEN
        RAISE EXCEPTION 'owner_user_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    INSERT INTO tenant_guard.organizations (name) VALUES (create_organization.name) RETURNING id INTO new_id;
    INSERT INTO tenant_guard.memberships (org_id, user_id, role) VALUES (new_id, owner_user_id, 'owner');
    RETURN new_id;
END
$$;

-- Shared checks for membership changes in the current org. Returns the org id.
CREATE FUNCTION tenant_guard._check_member_change(target uuid, new_role text)
RETURNS uuid
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    org uuid := tenant_guard.current_org_id();
    me uuid := tenant_guard.current_user_id();
    my_rank int;
    target_rank int;
    wanted_rank int;
BEGIN
    PERFORM tenant_guard.require_role('admin');
    IF me IS NULL THEN
        RAISE EXCEPTION 'membership changes need a user context, not an API key' USING ERRCODE = '42501';
    END IF;
    IF target IS NULL THEN
        RAISE EXCEPTION 'user_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF target = me THEN
        RAISE EXCEPTION 'nobody can change their own membership' USING ERRCODE = '42501';
    END IF;
    -- Serialize membership changes per organization, and read the rows the
    -- checks depend on with row locks: a locking read sees the latest version
    -- (READ COMMITTED) or fails with a serialization error (REPEATABLE READ),
    -- so a stale snapshot cannot pass the rank and last-owner checks.
    PERFORM 1 FROM tenant_guard.organizations WHERE id = org FOR UPDATE;
    PERFORM 1 FROM tenant_guard.memberships m WHERE m.org_id = org AND (m.role = 'owner' OR m.user_id IN (me, target)) FOR UPDATE;
    SELECT r.rank INTO my_rank FROM tenant_guard.memberships m JOIN tenant_guard.roles r ON r.name = m.role
     WHERE m.org_id = org AND m.user_id = me;
    IF my_rank IS NULL OR my_rank < (SELECT r.rank FROM tenant_guard.roles r WHERE r.name = 'admin') THEN
        RAISE EXCEPTION 'managing members needs role admin or higher (per the membership table)' USING ERRCODE = '42501';
    END IF;
    SELECT r.rank INTO target_rank FROM tenant_guard.memberships m JOIN tenant_guard.roles r ON r.name = m.role
     WHERE m.org_id = org AND m.user_id = target;
    IF target_rank > my_rank THEN
        RAISE EXCEPTION 'you cannot change a member who ranks above you' USING ERRCODE = '42501';
    END IF;
    IF new_role IS NOT NULL THEN
        SELECT r.rank INTO wanted_rank FROM tenant_guard.roles r WHERE r.name = new_role;
        IF wanted_rank IS NULL THEN
            RAISE EXCEPTION 'unknown role' USING ERRCODE = '22023',
                HINT = 'Roles are owner, admin, member and viewer.';
        END IF;
        IF wanted_rank > my_rank THEN
            RAISE EXCEPTION 'you cannot grant a role above your own' USING ERRCODE = '42501';
        END IF;
    END IF;
    RETURN org;
END
$$;

CREATE FUNCTION tenant_guard._assert_owner_remains(org uuid)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM tenant_guard.memberships WHERE org_id = org AND role = 'owner') THEN
        RAISE EXCEPTION 'the last owner of an organization cannot be removed or demoted' USING ERRCODE = '42501';
    END IF;
END
$$;

CREATE FUNCTION tenant_guard.add_member(user_id uuid, role text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    org uuid := tenant_guard._check_member_change(add_member.user_id, coalesce(add_member.role, ''));
BEGIN
    INSERT INTO tenant_guard.memberships (org_id, user_id, role) VALUES (org, add_member.user_id, add_member.role);
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'that user is already a member; use set_member_role()' USING ERRCODE = '23505';
END
$$;

CREATE FUNCTION tenant_guard.set_member_role(user_id uuid, role text)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    org uuid := tenant_guard._check_member_change(set_member_role.user_id, coalesce(set_member_role.role, ''));
BEGIN
    UPDATE tenant_guard.memberships m SET role = set_member_role.role
     WHERE m.org_id = org AND m.user_id = set_member_role.user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'that user is not a member of this organization' USING ERRCODE = '02000';
    END IF;
    PERFORM tenant_guard._assert_owner_remains(org);
END
$$;

CREATE FUNCTION tenant_guard.remove_member(user_id uuid)
RETURNS void
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    org uuid := tenant_guard._check_member_change(remove_member.user_id, NULL);
BEGIN
    DELETE FROM tenant_guard.memberships m WHERE m.org_id = org AND m.user_id = remove_member.user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'that user is not a member of this organization' USING ERRCODE = '02000';
    END IF;
    PERFORM tenant_guard._assert_owner_remains(org);
END
$$;

-- Rights that hang on a member: when a member is removed or demoted,
-- API keys they made with a role above what they now hold are revoked, and
-- webhook endpoints they made stop once they are no longer an admin.
-- (authenticate() also checks a key's creator as committed now, which
-- covers a key created concurrently with the change.) A trigger, so direct
-- writes to memberships by a superuser count too.
CREATE FUNCTION tenant_guard._membership_changed()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_rank int;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.org_id = OLD.org_id AND NEW.user_id = OLD.user_id THEN
        SELECT r.rank INTO new_rank FROM tenant_guard.roles r WHERE r.name = NEW.role;
    END IF;
    UPDATE tenant_guard.api_keys k SET revoked_at = now()
     WHERE k.org_id = OLD.org_id AND k.created_by = OLD.user_id AND k.revoked_at IS NULL
       AND (new_rank IS NULL OR (SELECT r.rank FROM tenant_guard.roles r WHERE r.name = k.role) > new_rank);
    UPDATE tenant_guard.webhook_endpoints w SET active = false
     WHERE w.org_id = OLD.org_id AND w.created_by = OLD.user_id AND w.active
       AND (new_rank IS NULL OR new_rank < (SELECT r.rank FROM tenant_guard.roles r WHERE r.name = 'admin'));
    RETURN NULL;
END
$$;

CREATE TRIGGER tenant_guard_membership_changed AFTER UPDATE OR DELETE ON tenant_guard.memberships
    FOR EACH ROW EXECUTE FUNCTION tenant_guard._membership_changed();

---------------------------------------------------------------- policy templates
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
        -- other policy can widen access beyond the org and role; the single
        -- PERMISSIVE policy is just `true` (RLS needs one to grant anything).
        -- `org = current_org_id_if(role)` is one stable expression: an index
        -- condition evaluated once per scan, not a per-row filter.
        EXECUTE format('CREATE POLICY tenant_guard_select ON %s AS RESTRICTIVE FOR SELECT USING (%I = tenant_guard.current_org_id_if(%L))',
                       r.relid::regclass, org_column, read_role);
        EXECUTE format('CREATE POLICY tenant_guard_insert ON %s AS RESTRICTIVE FOR INSERT WITH CHECK (%I = tenant_guard.current_org_id_if(%L))',
                       r.relid::regclass, org_column, write_role);
        EXECUTE format('CREATE POLICY tenant_guard_update ON %s AS RESTRICTIVE FOR UPDATE USING (%I = tenant_guard.current_org_id_if(%L)) WITH CHECK (%I = tenant_guard.current_org_id_if(%L))',
                       r.relid::regclass, org_column, write_role, org_column, write_role);
        EXECUTE format('CREATE POLICY tenant_guard_delete ON %s AS RESTRICTIVE FOR DELETE USING (%I = tenant_guard.current_org_id_if(%L))',
                       r.relid::regclass, org_column, delete_role);
        EXECUTE format('CREATE POLICY tenant_guard_allow ON %s AS PERMISSIVE FOR ALL USING (true) WITH CHECK (true)',
                       r.relid::regclass);
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

---------------------------------------------------------------- backups
-- Tables of an extension are left out of pg_dump unless registered: without
-- this a dump would hold no organization, member, key or log row.
SELECT pg_catalog.pg_extension_config_dump('tenant_guard.organizations', '');
SELECT pg_catalog.pg_extension_config_dump('tenant_guard.memberships', '');
SELECT pg_catalog.pg_extension_config_dump('tenant_guard.api_keys', '');
SELECT pg_catalog.pg_extension_config_dump('tenant_guard.request_log', '');
SELECT pg_catalog.pg_extension_config_dump('tenant_guard.request_log_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('tenant_guard.secrets', '');
SELECT pg_catalog.pg_extension_config_dump('tenant_guard.webhook_endpoints', '');
SELECT pg_catalog.pg_extension_config_dump('tenant_guard.webhook_outbox', '');

---------------------------------------------------------------- grants
-- Everything starts closed; each role gets what it needs.
REVOKE ALL ON ALL TABLES IN SCHEMA tenant_guard FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA tenant_guard FROM PUBLIC;

GRANT SELECT ON tenant_guard.roles TO PUBLIC;
GRANT SELECT ON tenant_guard.organizations, tenant_guard.memberships TO PUBLIC;   -- rows filtered by RLS
GRANT SELECT ON tenant_guard.organizations, tenant_guard.memberships TO tenant_guard_service;

-- Helpers: a policy evaluated for any role calls them.
GRANT EXECUTE ON FUNCTION
    tenant_guard.current_org_id(), tenant_guard.current_org_id_if(text), tenant_guard.current_user_id(),
    tenant_guard.current_user_role(), tenant_guard.current_api_key_id(), tenant_guard.current_scopes(),
    tenant_guard.has_role(text), tenant_guard.require_role(text),
    tenant_guard.has_scope(text), tenant_guard.require_scope(text),
    tenant_guard.clear_context(), tenant_guard.authenticate_jwt(text),
    tenant_guard.add_member(uuid, text), tenant_guard.set_member_role(uuid, text), tenant_guard.remove_member(uuid),
    tenant_guard.protect(regclass, name, text, text, text), tenant_guard.unprotect(regclass),
    tenant_guard.forbid_self_approval(regclass, name, name), tenant_guard._forbid_self_approval(),
    tenant_guard._org_column_check(regclass, name), tenant_guard._is_uuid_column(oid, name),
    tenant_guard.authenticate(text, text, inet), tenant_guard.create_api_key(text, text, text[], interval, int),
    tenant_guard.rotate_api_key(uuid, interval), tenant_guard.revoke_api_key(uuid),
    tenant_guard.rate_limit(text, int, interval, int), tenant_guard._rate_limit(text, int, bigint, int),
    tenant_guard.put_secret(text, text, text), tenant_guard.delete_secret(text, text),
    tenant_guard.put_wordpress_credentials(text, text, text),
    tenant_guard.hmac_sha256(bytea, bytea), tenant_guard.webhook_sign(text, text, bigint, text),
    tenant_guard.webhook_verify(text, text, bigint, text, text, interval),
    tenant_guard.verify_stripe_signature(text, text, text, interval),
    tenant_guard.verify_github_signature(text, bytea, text),
    tenant_guard.verify_slack_signature(text, bigint, text, text, interval),
    tenant_guard.create_webhook_endpoint(text, text[]), tenant_guard.rotate_webhook_secret(uuid, interval),
    tenant_guard.enqueue_webhook(text, jsonb)
TO PUBLIC;
GRANT SELECT (id, org_id, url, events, active, previous_secret_until, created_by, created_at)
    ON tenant_guard.webhook_endpoints TO PUBLIC;
GRANT SELECT ON tenant_guard.webhook_outbox TO PUBLIC;      -- rows filtered by RLS (admins, own org)

-- Secrets: org admins list metadata (RLS); the ciphertext column is not granted to PUBLIC.
GRANT SELECT (id, org_id, kind, name, key_id, created_at, updated_at) ON tenant_guard.secrets TO PUBLIC;

-- API keys: org admins list their own (RLS); the hash column is never granted to PUBLIC.
GRANT SELECT (id, org_id, name, prefix, role, scopes, rate_limit_per_minute, expires_at, revoked_at,
              last_used_at, created_by, created_at, rotated_to)
    ON tenant_guard.api_keys TO PUBLIC;
GRANT SELECT ON tenant_guard.request_log TO PUBLIC;    -- rows filtered by RLS (admins, own org)

-- Service role (trusted server code only).
GRANT EXECUTE ON FUNCTION
    tenant_guard.assume(uuid, uuid), tenant_guard.create_organization(text, uuid),
    tenant_guard.import_api_key_hash(uuid, text, bytea, text, text[], timestamptz, int, text),
    tenant_guard.purge_request_log(interval), tenant_guard.request_log_queue(),
    tenant_guard.encrypt(bytea, bytea), tenant_guard.decrypt(bytea, bytea),
    tenant_guard.get_secret(uuid, text, text), tenant_guard.put_secret_for(uuid, text, text, text),
    tenant_guard.get_wordpress_credentials(uuid, text), tenant_guard.wordpress_authorization(uuid, text),
    tenant_guard.rotate_secrets(int), tenant_guard.import_pgcrypto_secrets(regclass, text),
    tenant_guard.claim_webhook_deliveries(integer), tenant_guard.complete_webhook_delivery(uuid, boolean, integer, text, integer),
    tenant_guard.webhook_verify_once(text, text, text, bigint, text, text, interval)
TO tenant_guard_service;

-- Functions that receive keys or secrets as arguments (all SECURITY DEFINER,
-- as only a superuser may set this parameter): an ERROR raised inside
-- them must not log the calling statement (log_min_error_statement would put
-- a literal key or secret into the server log). The setting is applied while
-- the function runs, which is when its errors are logged.
-- (authenticate() and authenticate_jwt(), on every request's path, set it
-- transaction-locally just before raising instead: no cost when they succeed.)
ALTER FUNCTION tenant_guard.put_secret(text, text, text) SET log_min_error_statement = panic;
ALTER FUNCTION tenant_guard.put_secret_for(uuid, text, text, text) SET log_min_error_statement = panic;
ALTER FUNCTION tenant_guard.put_wordpress_credentials(text, text, text) SET log_min_error_statement = panic;
ALTER FUNCTION tenant_guard.webhook_sign(text, text, bigint, text) SET log_min_error_statement = panic;
ALTER FUNCTION tenant_guard.encrypt(bytea, bytea) SET log_min_error_statement = panic;
ALTER FUNCTION tenant_guard.decrypt(bytea, bytea) SET log_min_error_statement = panic;
ALTER FUNCTION tenant_guard.webhook_verify_once(text, text, text, bigint, text, text, interval) SET log_min_error_statement = panic;
-- (import_pgcrypto_secrets runs with its caller's rights, so it cannot carry
-- this setting: pass the pgcrypto key to it as a bind parameter.)
GRANT SELECT ON tenant_guard.api_keys, tenant_guard.request_log, tenant_guard.secrets,
    tenant_guard.webhook_endpoints, tenant_guard.webhook_outbox TO tenant_guard_service;
