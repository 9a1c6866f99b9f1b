//! Organizations and memberships: the tables, their policies and the
//! member-management functions are SQL (organizations.sql); the membership a
//! context's role comes from is read by context::membership_role().

use pgrx::prelude::*;

// After the context helpers its policies call, and the ladder it installs.
pgrx::extension_sql_file!(
    "organizations.sql",
    name = "organizations",
    requires = ["schema", context::current_org_id, context::_note_rights_changed, _role_ladder]
);

/// Install time only (organizations.sql drops it once the `roles` table
/// is filled): the role ladder as core/src/roles.rs defines it.
#[pg_extern(immutable, parallel_safe)]
fn _role_ladder() -> TableIterator<'static, (name!(name, String), name!(rank, i32))> {
    TableIterator::new(crate::roles::ROLES.iter().map(|(n, r)| (n.to_string(), i32::from(*r))))
}
