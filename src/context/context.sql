-- The request context: grants. The helpers are called by policies evaluated
-- for any role, so PUBLIC executes them; assume() is the service role's.

REVOKE ALL ON FUNCTION
    tenant_guard.current_org_id(), tenant_guard.current_org_id_if(text), tenant_guard.current_user_id(),
    tenant_guard.current_user_role(), tenant_guard.current_api_key_id(), tenant_guard.current_scopes(),
    tenant_guard.has_role(text), tenant_guard.require_role(text),
    tenant_guard.has_scope(text), tenant_guard.require_scope(text),
    tenant_guard.clear_context(), tenant_guard.authenticate_jwt(text), tenant_guard.assume(uuid, uuid),
    tenant_guard._require_user_role(text), tenant_guard._note_rights_changed()
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    tenant_guard.current_org_id(), tenant_guard.current_org_id_if(text), tenant_guard.current_user_id(),
    tenant_guard.current_user_role(), tenant_guard.current_api_key_id(), tenant_guard.current_scopes(),
    tenant_guard.has_role(text), tenant_guard.require_role(text),
    tenant_guard.has_scope(text), tenant_guard.require_scope(text),
    tenant_guard.clear_context(), tenant_guard.authenticate_jwt(text)
TO PUBLIC;
GRANT EXECUTE ON FUNCTION tenant_guard.assume(uuid, uuid) TO tenant_guard_service;
