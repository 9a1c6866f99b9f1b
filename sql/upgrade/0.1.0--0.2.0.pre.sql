-- tenant_guard 0.1.0 -> 0.2.0: what comes before the 0.2.0 definitions
-- (written by hand; scripts/make_upgrade.py puts this, the 0.2.0 install
-- script made idempotent, and the .post.sql together into
-- sql/tenant_guard--0.1.0--0.2.0.sql).

-- Every privilege is granted afresh by the 0.2.0 definitions: start from none.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA tenant_guard FROM PUBLIC, tenant_guard_service;
REVOKE ALL ON ALL TABLES IN SCHEMA tenant_guard FROM PUBLIC, tenant_guard_service;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA tenant_guard FROM PUBLIC, tenant_guard_service;

-- The request log becomes partitioned by day. The 0.1.0 table is set
-- aside here and attached, in .post.sql, as the partition of everything
-- before tomorrow: its rows stay where they are (no copy), and
-- purge_request_log() drops it once all of it is older than the cut.
DROP POLICY tenant_guard_select ON tenant_guard.request_log;
DROP POLICY tenant_guard_service_read ON tenant_guard.request_log;
ALTER TABLE tenant_guard.request_log RENAME TO request_log_before_0_2_0;
ALTER INDEX tenant_guard.request_log_pkey RENAME TO request_log_before_0_2_0_pkey;
ALTER INDEX tenant_guard.request_log_org_at_idx RENAME TO request_log_before_0_2_0_org_id_at_idx;
ALTER INDEX tenant_guard.request_log_at_idx RENAME TO request_log_before_0_2_0_at_idx;
ALTER SEQUENCE tenant_guard.request_log_id_seq RENAME TO request_log_before_0_2_0_id_seq;
-- (renamed back in .post.sql, so that the new log's CHECK gets its name and
-- the old table's matches it when attached)
ALTER TABLE tenant_guard.request_log_before_0_2_0
    RENAME CONSTRAINT request_log_outcome_check TO request_log_before_0_2_0_outcome_check;
-- A partition is an ordinary table (pg_dump keeps it, rows included).
ALTER EXTENSION tenant_guard DROP TABLE tenant_guard.request_log_before_0_2_0;
-- (its sequence is dropped in .post.sql, once its value is carried over)
ALTER EXTENSION tenant_guard DROP SEQUENCE tenant_guard.request_log_before_0_2_0_id_seq;

-- Webhook endpoints record who made them (0.2.0 stops an endpoint when its
-- maker is no longer an admin; endpoints made before have no maker on record).
ALTER TABLE tenant_guard.webhook_endpoints ADD COLUMN created_by uuid;
