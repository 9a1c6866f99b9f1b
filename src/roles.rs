//! The fixed role ladder: owner > admin > member > viewer.
//! The `tenant_guard.roles` table holds the same names and ranks for SQL
//! users (a test checks that the two agree).

pub const ROLES: [(&str, u8); 4] = [("viewer", 10), ("member", 20), ("admin", 30), ("owner", 40)];

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
