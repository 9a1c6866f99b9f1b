//! The installed extension's catalog, compared with the committed snapshot
//! in tests/catalog/tenant_guard.txt: functions (signature, result,
//! volatility, strictness, parallel safety, security, settings), tables and
//! columns, constraints, indexes, policies, triggers, event triggers and
//! every grant. A change to any of them fails here until the snapshot is
//! regenerated (`TG_UPDATE_CATALOG=1 cargo test -p tenant_guard_harness
//! --test catalog`), so it is deliberate and shows in review.

mod common;
use common::*;
use tenant_guard_harness::cluster;

/// One line per catalog fact, sorted; no OIDs, nothing that varies by install.
pub const CATALOG_SQL: &str = include_str!("catalog.sql");

#[test]
fn a_fresh_install_matches_the_committed_catalog_snapshot() {
    let db = cluster().fresh_db();
    let mut dba = db.dba();
    // The owner's name (the installing superuser) appears in ACLs; the harness installs as dba.
    let got = val(&mut dba, CATALOG_SQL).unwrap() + "\n";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/catalog/tenant_guard.txt");
    if std::env::var_os("TG_UPDATE_CATALOG").is_some() {
        std::fs::write(path, &got).unwrap();
        return;
    }
    let want =
        std::fs::read_to_string(path).expect("tests/catalog/tenant_guard.txt (regenerate with TG_UPDATE_CATALOG=1)");
    if got != want {
        let (g, w): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
        let added: Vec<&&str> = g.iter().filter(|l| !w.contains(l)).collect();
        let removed: Vec<&&str> = w.iter().filter(|l| !g.contains(l)).collect();
        panic!(
            "the installed catalog differs from tests/catalog/tenant_guard.txt\n+ new:\n{}\n- gone:\n{}\n(if deliberate: TG_UPDATE_CATALOG=1 cargo test -p tenant_guard_harness --test catalog)",
            added.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n"),
            removed.iter().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
        );
    }
}
