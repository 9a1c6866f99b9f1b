-- tenant_guard quickstart: run by scripts/quickstart.sh as the superuser `dba`
-- against a throwaway cluster (roles app and svc are created below).
\set ON_ERROR_STOP 1

CREATE EXTENSION tenant_guard;
SELECT extname, extversion FROM pg_extension WHERE extname = 'tenant_guard';

-- The passphrase is set in a config file; superusers can see it, nobody else.
CREATE ROLE app LOGIN;
CREATE ROLE svc LOGIN IN ROLE tenant_guard_service;
SELECT length(current_setting('tenant_guard.passphrase')) AS passphrase_length_seen_by_superuser;

SET ROLE app;
\set ON_ERROR_STOP 0
SELECT current_setting('tenant_guard.passphrase');   -- ERROR: permission denied
SET tenant_guard.passphrase = 'guess';                 -- ERROR: permission denied
\set ON_ERROR_STOP 1
RESET ROLE;
\set ON_ERROR_STOP 0
ALTER ROLE app SET tenant_guard.passphrase = 'would-be-world-readable';  -- ERROR: refused by the check hook
\set ON_ERROR_STOP 1
