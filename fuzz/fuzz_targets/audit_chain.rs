//! The audit trail's verifier reads rows a superuser may have changed at
//! will: arbitrary rows never make it panic, a chain built from the input
//! verifies, and changing any byte of one of its entries is reported.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tenant_guard_core::audit_chain::{self, Anchor, Entry, Stored};

const KEY: [u8; 32] = [5; 32];

fn entry(seq: i64, b: &[u8]) -> Entry {
    let s = |r: &[u8]| String::from_utf8_lossy(r).into_owned();
    let third = b.len() / 3;
    Entry {
        seq,
        at_us: b.first().copied().unwrap_or(0) as i64,
        db_role: s(&b[..third]),
        action: s(&b[third..2 * third]),
        object_name: (b.len() % 2 == 0).then(|| s(&b[2 * third..])),
        outcome: "allowed".into(),
        ..Entry::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let keys = |id: i64| (id == 1).then_some(KEY);
    // 1. Arbitrary stored rows (positions, chains, key ids, MACs from the input).
    let rows: Vec<Stored> = data
        .chunks(24)
        .map(|c| Stored {
            entry: entry(c.first().copied().unwrap_or(0) as i64 % 8, c),
            chain: c.iter().rev().copied().collect(),
            key_id: c.get(1).copied().unwrap_or(0) as i64 % 3 - 1,
            mac: (c.len() > 4).then(|| c[..c.len().min(32)].to_vec()),
        })
        .collect();
    let anchor =
        data.get(..40).map(|a| Anchor { seq: a[0] as i64, chain: a[..32].to_vec(), key_id: 1, mac: a[8..40].to_vec() });
    let r = audit_chain::verify(anchor.as_ref(), rows, keys, data.first().map(|&h| h as i64), None);
    let _ = r.problem.map(|p| p.to_string());

    // 2. A genuine chain of the input's pieces verifies; one changed byte is caught.
    let entries: Vec<Entry> = data.chunks(16).enumerate().map(|(i, c)| entry(i as i64 + 1, c)).collect();
    if entries.is_empty() {
        return;
    }
    let (sealed, _) = audit_chain::seal(audit_chain::GENESIS, &entries, Some(&KEY));
    let stored: Vec<Stored> = entries
        .into_iter()
        .zip(sealed)
        .map(|(entry, (c, m))| Stored { entry, chain: c.to_vec(), key_id: 1, mac: m.map(|m| m.to_vec()) })
        .collect();
    let n = stored.len() as i64;
    assert_eq!(audit_chain::verify(None, stored.clone(), keys, Some(n), None).problem, None);
    let mut bad = stored;
    let i = data.len() % bad.len();
    bad[i].entry.at_us ^= 1;
    assert!(audit_chain::verify(None, bad, keys, Some(n), None).problem.is_some());
});
