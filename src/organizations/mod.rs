//! Organizations and memberships: the tables, their policies and the
//! member-management functions are SQL (organizations.sql); the membership a
//! context's role comes from is read by context::membership_role().

// After the context helpers its policies call.
pgrx::extension_sql_file!("organizations.sql", name = "organizations", requires = ["schema", context::current_org_id]);
