//! Organizations and memberships: the member rules, serialized changes, the
//! role ladder as the code has it.

mod common;
use common::*;
use tenant_guard_harness::{cluster, sqlstate};

#[test]
fn membership_rules() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut app = db.app();
    let newbie = "00000000-0000-4000-8000-0000000000c1";
    let attempt = |app: &mut postgres::Client, user: &str, sql: &str| {
        begin_as(app, &w.org_a, user);
        let r = app.simple_query(sql);
        let s = sqlstate(&r);
        exec(app, if s.is_none() { "COMMIT" } else { "ROLLBACK" });
        s
    };
    // member cannot manage members
    assert_eq!(
        attempt(&mut app, MEMBER_A, &format!("SELECT tenant_guard.add_member('{newbie}', 'viewer')")).as_deref(),
        Some("42501")
    );
    // admin: self-promotion, promotion above own rank, demoting an owner
    assert_eq!(
        attempt(&mut app, ADMIN_A, &format!("SELECT tenant_guard.set_member_role('{ADMIN_A}', 'owner')")).as_deref(),
        Some("42501")
    );
    assert_eq!(
        attempt(&mut app, ADMIN_A, &format!("SELECT tenant_guard.set_member_role('{MEMBER_A}', 'owner')")).as_deref(),
        Some("42501")
    );
    assert_eq!(
        attempt(&mut app, ADMIN_A, &format!("SELECT tenant_guard.add_member('{newbie}', 'owner')")).as_deref(),
        Some("42501")
    );
    assert_eq!(
        attempt(&mut app, ADMIN_A, &format!("SELECT tenant_guard.set_member_role('{OWNER_A}', 'viewer')")).as_deref(),
        Some("42501")
    );
    assert_eq!(
        attempt(&mut app, ADMIN_A, &format!("SELECT tenant_guard.remove_member('{OWNER_A}')")).as_deref(),
        Some("42501")
    );
    assert_eq!(
        attempt(&mut app, ADMIN_A, &format!("SELECT tenant_guard.add_member('{newbie}', 'root')")).as_deref(),
        Some("22023")
    );
    // allowed: admin adds and promotes up to admin, removes
    assert_eq!(attempt(&mut app, ADMIN_A, &format!("SELECT tenant_guard.add_member('{newbie}', 'viewer')")), None);
    assert_eq!(
        attempt(&mut app, ADMIN_A, &format!("SELECT tenant_guard.add_member('{newbie}', 'viewer')")).as_deref(),
        Some("23505")
    );
    assert_eq!(attempt(&mut app, ADMIN_A, &format!("SELECT tenant_guard.set_member_role('{newbie}', 'admin')")), None);
    assert_eq!(attempt(&mut app, ADMIN_A, &format!("SELECT tenant_guard.remove_member('{newbie}')")), None);
    // the owner cannot demote or remove themselves (so an org never loses its last owner)
    assert_eq!(
        attempt(&mut app, OWNER_A, &format!("SELECT tenant_guard.set_member_role('{OWNER_A}', 'admin')")).as_deref(),
        Some("42501")
    );
    assert_eq!(
        attempt(&mut app, OWNER_A, &format!("SELECT tenant_guard.remove_member('{OWNER_A}')")).as_deref(),
        Some("42501")
    );
    // an owner can promote another owner, who can then not remove the first... but each keeps one owner
    assert_eq!(attempt(&mut app, OWNER_A, &format!("SELECT tenant_guard.set_member_role('{ADMIN_A}', 'owner')")), None);
    assert_eq!(attempt(&mut app, ADMIN_A, &format!("SELECT tenant_guard.remove_member('{OWNER_A}')")), None);
    // org B is out of reach from A's context
    assert_eq!(
        attempt(&mut app, ADMIN_A, &format!("SELECT tenant_guard.remove_member('{OWNER_B}')")).as_deref(),
        Some("02000")
    );
    // no direct writes to the membership table
    begin_as(&mut app, &w.org_a, ADMIN_A);
    let r =
        app.simple_query(&format!("UPDATE tenant_guard.memberships SET role = 'owner' WHERE user_id = '{MEMBER_A}'"));
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
    exec(&mut app, "ROLLBACK");
    let mut dba = db.dba();
    assert_eq!(
        val(
            &mut dba,
            &format!("SELECT count(*) FROM tenant_guard.memberships WHERE org_id = '{}' AND role = 'owner'", w.org_a)
        )
        .unwrap(),
        "1"
    );
}

#[test]
fn concurrent_owner_removals_cannot_leave_an_org_ownerless() {
    let db = cluster().fresh_db();
    let w = world(&db);
    let mut setup = db.app();
    begin_as(&mut setup, &w.org_a, OWNER_A);
    exec(&mut setup, &format!("SELECT tenant_guard.set_member_role('{ADMIN_A}', 'owner')"));
    exec(&mut setup, "COMMIT");
    // Two owners, each removing the other, in REPEATABLE READ with snapshots
    // taken before either change: without row locks both would pass the
    // last-owner check on their stale snapshots.
    let mut c1 = db.app();
    let mut c2 = db.app();
    for (c, user) in [(&mut c1, OWNER_A), (&mut c2, ADMIN_A)] {
        exec(c, "BEGIN ISOLATION LEVEL REPEATABLE READ");
        val(c, &format!("SELECT tenant_guard.authenticate_jwt('{}')", token_for(&w.org_a, user)));
        val(c, "SELECT count(*) FROM tenant_guard.memberships"); // the snapshot is now fixed
    }
    exec(&mut c1, &format!("SELECT tenant_guard.remove_member('{ADMIN_A}')"));
    let second = std::thread::spawn(move || {
        let r = c2.simple_query(&format!("SELECT tenant_guard.remove_member('{OWNER_A}')"));
        let state = sqlstate(&r);
        let _ = c2.batch_execute("ROLLBACK");
        state
    });
    std::thread::sleep(std::time::Duration::from_millis(300)); // c2 is now waiting on c1's locks
    exec(&mut c1, "COMMIT");
    let state = second.join().unwrap();
    assert_eq!(state.as_deref(), Some("40001"), "the second removal must fail to serialize");
    let mut dba = db.dba();
    assert_eq!(
        val(&mut dba, &format!("SELECT string_agg(user_id::text, ',') FROM tenant_guard.memberships WHERE org_id = '{}' AND role = 'owner'", w.org_a)).unwrap(),
        OWNER_A
    );
}

#[test]
fn roles_table_matches_the_code() {
    let db = cluster().fresh_db();
    let mut app = db.app();
    assert_eq!(
        val(&mut app, "SELECT string_agg(name || ':' || rank, ',' ORDER BY rank) FROM tenant_guard.roles").unwrap(),
        "viewer:10,member:20,admin:30,owner:40"
    );
    let r = app.simple_query("INSERT INTO tenant_guard.roles VALUES ('god', 99)");
    assert_eq!(sqlstate(&r).as_deref(), Some("42501"));
}
