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

/// README.md and every page of docs/.
fn pages() -> Vec<String> {
    let dir = format!("{}/../docs", env!("CARGO_MANIFEST_DIR"));
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    v.sort();
    v.insert(0, "README.md".into());
    v
}

#[test]
fn the_docs_point_at_nothing_outside_the_repository() {
    for f in pages() {
        let text = read(&f);
        for bad in ["../shared", "shared/vectors", "DESIGN.md"] {
            assert!(!text.contains(bad), "{f} mentions {bad}");
        }
        // Every relative link names a file of the repository.
        let base = std::path::Path::new(&f).parent().unwrap().to_path_buf();
        for link in text.split("](").skip(1).filter_map(|t| t.split(')').next()) {
            if link.starts_with("http") || link.starts_with('#') {
                continue;
            }
            let path = link.split('#').next().unwrap();
            let full = format!("{}/../{}", env!("CARGO_MANIFEST_DIR"), base.join(path).display());
            assert!(std::path::Path::new(&full).exists(), "{f} links to {link}, which does not exist");
        }
    }
}
