//! The documentation stands alone and covers the whole SQL surface: every
//! function of the schema (found in the catalog) is in docs/reference.md,
//! and nothing points outside the repository.

mod common;
use common::*;
use tenant_guard_harness::cluster;

fn read(rel: &str) -> String {
    std::fs::read_to_string(format!("{}/../{rel}", env!("CARGO_MANIFEST_DIR"))).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn every_function_of_the_schema_is_in_the_reference() {
    let db = cluster().fresh_db();
    let reference = read("docs/reference.md");
    let names = rows(
        &mut db.dba(),
        "SELECT DISTINCT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'tenant_guard' ORDER BY 1",
    );
    assert!(names.len() > 40);
    let missing: Vec<String> =
        names.into_iter().filter_map(|r| r[0].clone()).filter(|n| !reference.contains(&format!("{n}("))).collect();
    assert!(missing.is_empty(), "not in docs/reference.md: {missing:?}");
}

#[test]
fn the_docs_point_at_nothing_outside_the_repository() {
    for f in [
        "README.md",
        "docs/reference.md",
        "docs/security-model.md",
        "docs/design.md",
        "docs/envelope.md",
        "docs/benchmarks.md",
        "docs/development.md",
    ] {
        let text = read(f);
        for bad in ["../shared", "shared/vectors", "DESIGN.md"] {
            assert!(!text.contains(bad), "{f} mentions {bad}");
        }
    }
}
