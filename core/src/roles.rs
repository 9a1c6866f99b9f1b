//! The fixed role ladder: owner > admin > member > viewer.
//! The `tenant_guard.roles` table holds the same names and ranks for SQL
//! users (a test checks that the two agree).

pub const VIEWER: u8 = 10;
pub const MEMBER: u8 = 20;
pub const ADMIN: u8 = 30;
pub const OWNER: u8 = 40;

pub const ROLES: [(&str, u8); 4] = [("viewer", VIEWER), ("member", MEMBER), ("admin", ADMIN), ("owner", OWNER)];

/// Rank of a role name, `None` when the name is not a role.
pub fn rank(name: &str) -> Option<u8> {
    ROLES.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn ladder() {
        assert!(rank("owner") > rank("admin"));
        assert!(rank("admin") > rank("member"));
        assert!(rank("member") > rank("viewer"));
        assert_eq!(rank("root"), None);
        assert_eq!(rank("Owner"), None);
    }
}
