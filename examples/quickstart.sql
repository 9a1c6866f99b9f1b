-- tenant_guard quickstart: run by scripts/quickstart.sh as the superuser `dba`
-- on a throwaway cluster whose config file holds freshly generated secrets.
\set ON_ERROR_STOP 1
\set VERBOSITY terse

-- 1. Install. The library is preloaded; the passphrase is superuser-only.
CREATE EXTENSION tenant_guard;
CREATE EXTENSION pgcrypto;
CREATE ROLE app LOGIN;                                 -- the web app (assume it can run any SQL)
CREATE ROLE svc LOGIN IN ROLE tenant_guard_service;    -- trusted backend code
SELECT length(current_setting('tenant_guard.passphrase')) AS passphrase_bytes_seen_by_superuser;

SET ROLE app;
\set ON_ERROR_STOP 0
SELECT current_setting('tenant_guard.passphrase');     -- ERROR: permission denied
SET tenant_guard.context = 'forged';                   -- ERROR: permission denied
\set ON_ERROR_STOP 1
RESET ROLE;
\set ON_ERROR_STOP 0
ALTER ROLE app SET tenant_guard.passphrase = 'would-be-world-readable';  -- ERROR: refused by the check hook
\set ON_ERROR_STOP 1

-- 2. Organizations, members and a protected table.
SET ROLE svc;
SELECT tenant_guard.create_organization('Acme',  '11111111-1111-4111-8111-111111111111') AS acme \gset
SELECT tenant_guard.create_organization('Bravo', '22222222-2222-4222-8222-222222222222') AS bravo \gset
RESET ROLE;
CREATE TABLE invoices (id bigserial PRIMARY KEY, org_id uuid NOT NULL, amount numeric NOT NULL);
SELECT tenant_guard.protect('invoices');
GRANT SELECT, INSERT, UPDATE, DELETE ON invoices TO app;
GRANT USAGE ON SEQUENCE invoices_id_seq TO app;
INSERT INTO invoices (org_id, amount) VALUES (:'acme', 100), (:'acme', 250), (:'bravo', 999);

-- 3. A request as Acme's owner (the service role assumes the user here; a
--    web request would call authenticate_jwt($1) with the user's token).
GRANT app TO svc;
SET ROLE svc;
BEGIN;
SELECT tenant_guard.assume(:'acme', '11111111-1111-4111-8111-111111111111') AS role;
SET LOCAL ROLE app;
SELECT tenant_guard.current_org_id() = :'acme' AS in_acme, tenant_guard.current_user_role();
SELECT count(*) AS acme_invoices_visible, sum(amount) FROM invoices;   -- 2 rows, never Bravo's
\set ON_ERROR_STOP 0
INSERT INTO invoices (org_id, amount) VALUES (:'bravo', 1);           -- ERROR: row-level security
\set ON_ERROR_STOP 1
COMMIT;
RESET ROLE;
SET ROLE app;
SELECT tenant_guard.current_org_id() AS after_commit, count(*) AS rows_without_context FROM invoices;
RESET ROLE;

-- 4. An API key: shown once, stored as SHA-256, one call per API request.
SET ROLE svc;
BEGIN;
SELECT tenant_guard.assume(:'acme', '11111111-1111-4111-8111-111111111111');
SET LOCAL ROLE app;
SELECT key_id, api_key FROM tenant_guard.create_api_key('ci', 'member', ARRAY['invoices:read']) \gset
COMMIT;
RESET ROLE;
SET ROLE app;
BEGIN;
SELECT tenant_guard.authenticate(:'api_key', 'GET /invoices', '203.0.113.7') = :'acme' AS key_is_acme;
SELECT tenant_guard.has_scope('invoices:read') AS can_read, count(*) AS invoices FROM invoices;
COMMIT;
\set ON_ERROR_STOP 0
SELECT tenant_guard.authenticate('tgk_not-a-real-key');                -- ERROR: invalid API key (28000)
\set ON_ERROR_STOP 1
RESET ROLE;
SELECT prefix, length(key_hash) AS hash_bytes FROM tenant_guard.api_keys;
SELECT pg_sleep(0.5);
SELECT outcome, action, client_addr FROM tenant_guard.request_log ORDER BY id;

-- 5. A secret, encrypted at rest under the passphrase.
SET ROLE svc;
BEGIN;
SELECT tenant_guard.assume(:'acme', '11111111-1111-4111-8111-111111111111');
SELECT tenant_guard.put_secret('stripe', 'live', 'sk_live_example') IS NOT NULL AS stored;
COMMIT;
SELECT tenant_guard.get_secret(:'acme', 'stripe', 'live') AS decrypted_by_service_role;
RESET ROLE;
SELECT kind, name, get_byte(ciphertext, 0) AS envelope_version, length(ciphertext) AS envelope_bytes FROM tenant_guard.secrets;

-- 6. Webhooks: Standard Webhooks signatures and verification.
SELECT tenant_guard.webhook_sign('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'msg_p5jXN8AQM9LWM0D4loKWxJek',
                                 1614265330, '{"test": 2432232314}') AS signature;
SELECT tenant_guard.webhook_verify('whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 'msg_p5jXN8AQM9LWM0D4loKWxJek',
                                   1614265330, '{"test": 2432232314}',
                                   'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=', NULL) AS verified;
