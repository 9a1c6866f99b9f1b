//! The audit trail's tamper evidence: a hash chain over the entries, each
//! link authenticated with an HMAC under the passphrase-derived audit key.
//!
//! For entry `i` (positions `seq` 1, 2, 3, ... with no gaps):
//!
//! ```text
//! chain_i = SHA-256(chain_{i-1} || canonical(entry_i))      chain_0 = 32 zero bytes
//! mac_i   = HMAC-SHA256(audit key, "tenant_guard/audit-mac/v1" || chain_i)
//! ```
//!
//! `canonical()` encodes every field, the position included, unambiguously
//! (a tag and a length before each). The chain needs no key, so re-keying
//! after a passphrase rotation rewrites `mac_i` alone; the MAC is what a
//! writer without the key cannot produce. A purge keeps the chain
//! verifiable by keeping an anchor: the position and chain value of the last
//! entry it removed, with its own MAC.
//!
//! [`verify`] walks stored entries in order and reports the first one that
//! was altered, removed or inserted out of order. Pure: no pgrx, no SQL.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

const ENTRY_DOMAIN: &[u8] = b"tenant_guard/audit-entry/v1\0";
const MAC_DOMAIN: &[u8] = b"tenant_guard/audit-mac/v1\0";
const ANCHOR_DOMAIN: &[u8] = b"tenant_guard/audit-anchor/v1\0";

/// The chain value before the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

/// One entry's fields, as stored in `tenant_guard.audit_log` (the chain
/// columns aside). Times are PostgreSQL microseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub seq: i64,
    pub at_us: i64,
    pub db_role: String,
    pub session_role: String,
    pub org_id: Option<[u8; 16]>,
    pub ctx_org_id: Option<[u8; 16]>,
    pub ctx_user_id: Option<[u8; 16]>,
    pub ctx_api_key_id: Option<[u8; 16]>,
    pub action: String,
    pub object_type: String,
    pub object_id: Option<[u8; 16]>,
    pub object_kind: Option<String>,
    pub object_name: Option<String>,
    pub detail: Option<String>,
    pub outcome: String,
    pub sqlstate: Option<String>,
}

fn put(out: &mut Vec<u8>, field: Option<&[u8]>) {
    match field {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        }
    }
}

/// The bytes the chain hashes for `e`: every field in a fixed order, each
/// either absent (one 0 byte) or present (1, a 4-byte length, the bytes).
pub fn canonical(e: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(ENTRY_DOMAIN);
    put(&mut out, Some(&e.seq.to_be_bytes()));
    put(&mut out, Some(&e.at_us.to_be_bytes()));
    put(&mut out, Some(e.db_role.as_bytes()));
    put(&mut out, Some(e.session_role.as_bytes()));
    for id in [&e.org_id, &e.ctx_org_id, &e.ctx_user_id, &e.ctx_api_key_id] {
        put(&mut out, id.as_ref().map(|b| &b[..]));
    }
    put(&mut out, Some(e.action.as_bytes()));
    put(&mut out, Some(e.object_type.as_bytes()));
    put(&mut out, e.object_id.as_ref().map(|b| &b[..]));
    put(&mut out, e.object_kind.as_deref().map(str::as_bytes));
    put(&mut out, e.object_name.as_deref().map(str::as_bytes));
    put(&mut out, e.detail.as_deref().map(str::as_bytes));
    put(&mut out, Some(e.outcome.as_bytes()));
    put(&mut out, e.sqlstate.as_deref().map(str::as_bytes));
    out
}

/// The chain value after `e`, given the one before it.
pub fn link(prev: &[u8; 32], e: &Entry) -> [u8; 32] {
    Sha256::new().chain_update(prev).chain_update(canonical(e)).finalize().into()
}

fn hmac(key: &[u8; 32], domain: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(domain);
    for p in parts {
        m.update(p);
    }
    m
}

/// The MAC of a chain value.
pub fn mac(key: &[u8; 32], chain: &[u8; 32]) -> [u8; 32] {
    hmac(key, MAC_DOMAIN, &[chain]).finalize().into_bytes().into()
}

/// Whether `tag` is the MAC of `chain` (constant time).
pub fn mac_ok(key: &[u8; 32], chain: &[u8; 32], tag: &[u8]) -> bool {
    hmac(key, MAC_DOMAIN, &[chain]).verify_slice(tag).is_ok()
}

/// The MAC of a purge anchor: the last removed position and its chain value.
pub fn anchor_mac(key: &[u8; 32], seq: i64, chain: &[u8; 32]) -> [u8; 32] {
    hmac(key, ANCHOR_DOMAIN, &[&seq.to_be_bytes(), chain]).finalize().into_bytes().into()
}

pub fn anchor_mac_ok(key: &[u8; 32], seq: i64, chain: &[u8; 32], tag: &[u8]) -> bool {
    hmac(key, ANCHOR_DOMAIN, &[&seq.to_be_bytes(), chain]).verify_slice(tag).is_ok()
}

/// A key id that marks an entry whose MAC did not verify when it was
/// re-keyed after a passphrase rotation (it keeps its old MAC, as evidence).
pub const KEY_ID_FAILED_REKEY: i64 = -1;

/// An entry as stored: its fields, its chain value, and the key id and MAC
/// it was sealed with (no MAC: written while no passphrase was set).
#[derive(Clone, Debug)]
pub struct Stored {
    pub entry: Entry,
    pub chain: Vec<u8>,
    pub key_id: i64,
    pub mac: Option<Vec<u8>>,
}

/// Where a purge left the chain: entries up to `seq` were removed, the last
/// of them had chain value `chain`.
#[derive(Clone, Debug)]
pub struct Anchor {
    pub seq: i64,
    pub chain: Vec<u8>,
    pub key_id: i64,
    pub mac: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The entry's content, chain value or MAC is not what was written.
    Altered { seq: i64 },
    /// Entries `from..=to` are missing (deleted), before a later one.
    Removed { from: i64, to: i64 },
    /// Entries `from..=to` were written and are missing at the end.
    RemovedAtEnd { from: i64, to: i64 },
    /// An entry that the writer did not write: a second entry at a
    /// position, or one whose position is out of order.
    Inserted { seq: i64 },
    /// The entry is sealed under a key id no configured passphrase has.
    Unverifiable { seq: i64, key_id: i64 },
    /// The entry was written while no passphrase was set.
    Unsealed { seq: i64 },
    /// The purge anchor does not verify (or its key is not configured).
    Anchor,
    /// The log up to this position is not the one seen before: its chain
    /// value differs from the one given as known.
    Diverged { seq: i64 },
}

impl Problem {
    /// The position the problem is first seen at.
    pub fn seq(&self) -> Option<i64> {
        match *self {
            Problem::Altered { seq }
            | Problem::Inserted { seq }
            | Problem::Unverifiable { seq, .. }
            | Problem::Unsealed { seq }
            | Problem::Diverged { seq } => Some(seq),
            Problem::Removed { from, .. } | Problem::RemovedAtEnd { from, .. } => Some(from),
            Problem::Anchor => None,
        }
    }

    /// A short stable name: altered, removed, inserted, unverifiable, unsealed, anchor.
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::Altered { .. } | Problem::Diverged { .. } => "altered",
            Problem::Removed { .. } | Problem::RemovedAtEnd { .. } => "removed",
            Problem::Inserted { .. } => "inserted",
            Problem::Unverifiable { .. } => "unverifiable",
            Problem::Unsealed { .. } => "unsealed",
            Problem::Anchor => "anchor",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Altered { seq } => write!(f, "entry {seq} was altered after it was written"),
            Problem::Removed { from, to } if from == to => write!(f, "entry {from} was removed"),
            Problem::Removed { from, to } => write!(f, "entries {from} to {to} were removed"),
            Problem::RemovedAtEnd { from, to } => {
                write!(f, "entries {from} to {to} were written but are missing at the end of the log")
            }
            Problem::Inserted { seq } => write!(f, "an entry at position {seq} was inserted out of order"),
            Problem::Unverifiable { seq, key_id } if *key_id == KEY_ID_FAILED_REKEY => {
                write!(f, "entry {seq} did not verify when it was re-keyed after a passphrase rotation")
            }
            Problem::Unverifiable { seq, key_id } => write!(
                f,
                "entry {seq} is sealed under key id {:08x}, which no configured passphrase has",
                *key_id as u32
            ),
            Problem::Unsealed { seq } => write!(f, "entry {seq} was written while no passphrase was set"),
            Problem::Anchor => write!(f, "the purge anchor does not verify"),
            Problem::Diverged { seq } => {
                write!(f, "the log up to entry {seq} is not the one seen before (its chain value differs)")
            }
        }
    }
}

/// What [`verify`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Entries whose position, chain value and MAC checked out.
    pub verified: u64,
    /// The first problem, if any.
    pub problem: Option<Problem>,
    /// The position and chain value of the last entry checked (the anchor's without entries).
    pub last_seq: i64,
    pub last_chain: [u8; 32],
}

fn as32(b: &[u8]) -> Option<[u8; 32]> {
    b.try_into().ok()
}

/// Walk `rows` (ordered by position, then by insertion) from `anchor` (or
/// the start) and report the first problem. `key` maps a key id to the
/// audit key of a configured passphrase. `head` is the last position the
/// writer is known to have written, and `known` a position and chain value
/// seen before (kept outside the database): both detect entries removed at
/// the end, and `known` a log replaced up to it.
pub fn verify(
    anchor: Option<&Anchor>,
    rows: impl IntoIterator<Item = Stored>,
    key: impl Fn(i64) -> Option<[u8; 32]>,
    head: Option<i64>,
    known: Option<(i64, [u8; 32])>,
) -> Report {
    let (mut expected, mut chain) = match anchor {
        None => (1, GENESIS),
        Some(a) => {
            let chain = as32(&a.chain);
            let ok = chain.is_some_and(|c| key(a.key_id).is_some_and(|k| anchor_mac_ok(&k, a.seq, &c, &a.mac)));
            if !ok {
                return Report { verified: 0, problem: Some(Problem::Anchor), last_seq: a.seq, last_chain: GENESIS };
            }
            let chain = chain.expect("checked");
            let Some(first) = a.seq.checked_add(1) else {
                return Report { verified: 0, problem: Some(Problem::Anchor), last_seq: a.seq, last_chain: GENESIS };
            };
            if let Some((k, c)) = known {
                if k == a.seq && c != chain {
                    return Report {
                        verified: 0,
                        problem: Some(Problem::Diverged { seq: k }),
                        last_seq: a.seq,
                        last_chain: chain,
                    };
                }
            }
            (first, chain)
        }
    };
    let mut verified = 0u64;
    let mut rows = rows.into_iter().peekable();
    let done = |verified, problem, expected: i64, chain| Report {
        verified,
        problem: Some(problem),
        last_seq: expected - 1,
        last_chain: chain,
    };
    while let Some(r) = rows.next() {
        let seq = r.entry.seq;
        if seq < expected {
            return done(verified, Problem::Inserted { seq }, expected, chain);
        }
        if seq > expected {
            return done(verified, Problem::Removed { from: expected, to: seq - 1 }, expected, chain);
        }
        let next = link(&chain, &r.entry);
        // Failing here: is it a stray entry at this position (another one
        // follows at the same position, or it lies past what the writer
        // wrote), or an altered one?
        let mut stray = || head.is_some_and(|h| seq > h) || rows.peek().is_some_and(|n| n.entry.seq == seq);
        if as32(&r.chain) != Some(next) {
            let p = if stray() { Problem::Inserted { seq } } else { Problem::Altered { seq } };
            return done(verified, p, expected, chain);
        }
        let Some(tag) = &r.mac else { return done(verified, Problem::Unsealed { seq }, expected, chain) };
        let Some(k) = (r.key_id != KEY_ID_FAILED_REKEY).then(|| key(r.key_id)).flatten() else {
            return done(verified, Problem::Unverifiable { seq, key_id: r.key_id }, expected, chain);
        };
        if !mac_ok(&k, &next, tag) {
            let p = if stray() { Problem::Inserted { seq } } else { Problem::Altered { seq } };
            return done(verified, p, expected, chain);
        }
        if known.is_some_and(|(k, c)| k == seq && c != next) {
            return done(verified, Problem::Diverged { seq }, expected, chain);
        }
        chain = next;
        expected = expected.saturating_add(1);
        verified += 1;
    }
    let end = head.into_iter().chain(known.map(|(k, _)| k)).max();
    if let Some(h) = end {
        if h >= expected {
            return done(verified, Problem::RemovedAtEnd { from: expected, to: h }, expected, chain);
        }
    }
    Report { verified, problem: None, last_seq: expected - 1, last_chain: chain }
}

/// An entry's chain value and MAC (none without a key).
pub type Seal = ([u8; 32], Option<[u8; 32]>);

/// Seal `entries` (their `seq` already set, consecutive) onto the chain
/// value `prev`: returns each one's chain value and MAC, and the new head.
pub fn seal(prev: [u8; 32], entries: &[Entry], key: Option<&[u8; 32]>) -> (Vec<Seal>, [u8; 32]) {
    let mut chain = prev;
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        chain = link(&chain, e);
        out.push((chain, key.map(|k| mac(k, &chain))));
    }
    (out, chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const OTHER: [u8; 32] = [8; 32];

    fn entry(seq: i64) -> Entry {
        Entry {
            seq,
            at_us: 1_000_000 * seq,
            db_role: "svc".into(),
            session_role: "svc".into(),
            org_id: Some([1; 16]),
            action: "get_secret".into(),
            object_type: "secret".into(),
            object_kind: Some("stripe".into()),
            object_name: Some("live".into()),
            outcome: "allowed".into(),
            ..Entry::default()
        }
    }

    /// A chain of `n` entries sealed with KEY from the start.
    fn chain(n: i64) -> Vec<Stored> {
        let entries: Vec<Entry> = (1..=n).map(entry).collect();
        let (sealed, _) = seal(GENESIS, &entries, Some(&KEY));
        entries
            .into_iter()
            .zip(sealed)
            .map(|(entry, (c, m))| Stored { entry, chain: c.to_vec(), key_id: 1, mac: m.map(|m| m.to_vec()) })
            .collect()
    }

    fn keys(id: i64) -> Option<[u8; 32]> {
        (id == 1).then_some(KEY)
    }

    #[test]
    fn an_intact_chain_verifies() {
        let r = verify(None, chain(5), keys, Some(5), None);
        assert_eq!(r.problem, None);
        assert_eq!((r.verified, r.last_seq), (5, 5));
        assert_eq!(verify(None, Vec::new(), keys, None, None).problem, None);
    }

    #[test]
    fn every_field_is_covered() {
        let base = entry(1);
        let mut variants = vec![];
        let mut v = base.clone();
        v.at_us += 1;
        variants.push(v);
        let mut v = base.clone();
        v.db_role = "dba".into();
        variants.push(v);
        let mut v = base.clone();
        v.session_role = "dba".into();
        variants.push(v);
        let mut v = base.clone();
        v.org_id = None;
        variants.push(v);
        let mut v = base.clone();
        v.ctx_user_id = Some([2; 16]);
        variants.push(v);
        let mut v = base.clone();
        v.object_kind = Some("stripe/live".into());
        v.object_name = None;
        variants.push(v);
        let mut v = base.clone();
        v.object_kind = Some("strip".into());
        v.object_name = Some("elive".into());
        variants.push(v);
        let mut v = base.clone();
        v.outcome = "refused".into();
        v.sqlstate = Some("42501".into());
        variants.push(v);
        let mut v = base.clone();
        v.detail = Some(String::new());
        variants.push(v);
        for v in variants {
            assert_ne!(canonical(&v), canonical(&base), "{v:?}");
        }
    }

    #[test]
    fn an_update_is_reported_at_its_entry() {
        let mut rows = chain(5);
        rows[2].entry.object_name = Some("test".into());
        assert_eq!(verify(None, rows, keys, Some(5), None).problem, Some(Problem::Altered { seq: 3 }));
        // Content and chain value recomputed (no key needed): the MAC fails.
        let mut rows = chain(5);
        rows[2].entry.outcome = "refused".into();
        rows[2].chain = link(rows[1].chain.as_slice().try_into().unwrap(), &rows[2].entry).to_vec();
        assert_eq!(verify(None, rows, keys, Some(5), None).problem, Some(Problem::Altered { seq: 3 }));
        // A MAC from another key.
        let mut rows = chain(5);
        rows[4].mac = Some(mac(&OTHER, rows[4].chain.as_slice().try_into().unwrap()).to_vec());
        assert_eq!(verify(None, rows, keys, Some(5), None).problem, Some(Problem::Altered { seq: 5 }));
    }

    #[test]
    fn a_delete_is_reported_where_the_gap_is() {
        let mut rows = chain(6);
        rows.remove(2);
        assert_eq!(verify(None, rows, keys, Some(6), None).problem, Some(Problem::Removed { from: 3, to: 3 }));
        let mut rows = chain(6);
        rows.drain(0..2);
        assert_eq!(verify(None, rows, keys, Some(6), None).problem, Some(Problem::Removed { from: 1, to: 2 }));
        // Renumbered to close the gap: the chain breaks.
        let mut rows = chain(6);
        rows.remove(2);
        for r in rows.iter_mut().skip(2) {
            r.entry.seq -= 1;
        }
        assert_eq!(verify(None, rows, keys, None, None).problem, Some(Problem::Altered { seq: 3 }));
        // The tail, against the writer's head.
        let mut rows = chain(6);
        rows.truncate(4);
        assert_eq!(
            verify(None, rows.clone(), keys, Some(6), None).problem,
            Some(Problem::RemovedAtEnd { from: 5, to: 6 })
        );
        assert_eq!(verify(None, rows, keys, None, None).problem, None, "without a head the tail cannot be known");
    }

    #[test]
    fn an_insert_is_reported_as_such() {
        // A forged entry at a position that exists (after it, or before it).
        let rows = chain(5);
        let mut forged = rows[2].clone();
        forged.entry.detail = Some("forged".into());
        let mut after = rows.clone();
        after.insert(3, forged.clone());
        assert_eq!(verify(None, after, keys, Some(5), None).problem, Some(Problem::Inserted { seq: 3 }));
        let mut before = rows.clone();
        before.insert(2, forged.clone());
        assert_eq!(verify(None, before, keys, Some(5), None).problem, Some(Problem::Inserted { seq: 3 }));
        // At the end, with a made-up MAC: the writer's next entry takes that position.
        let mut end = rows.clone();
        let mut f = entry(6);
        f.detail = Some("forged".into());
        end.push(Stored {
            chain: link(rows[4].chain.as_slice().try_into().unwrap(), &f).to_vec(),
            entry: f,
            key_id: 1,
            mac: Some(vec![0; 32]),
        });
        let mut more = chain(6);
        end.push(more.remove(5));
        assert_eq!(verify(None, end, keys, Some(6), None).problem, Some(Problem::Inserted { seq: 6 }));
    }

    #[test]
    fn keys_and_anchors() {
        let rows = chain(3);
        assert_eq!(
            verify(None, rows.clone(), |_| None, None, None).problem,
            Some(Problem::Unverifiable { seq: 1, key_id: 1 })
        );
        let mut failed = rows.clone();
        failed[1].key_id = KEY_ID_FAILED_REKEY;
        assert_eq!(
            verify(None, failed, keys, None, None).problem,
            Some(Problem::Unverifiable { seq: 2, key_id: KEY_ID_FAILED_REKEY })
        );
        let mut unsealed = rows.clone();
        unsealed[0].mac = None;
        assert_eq!(verify(None, unsealed, keys, None, None).problem, Some(Problem::Unsealed { seq: 1 }));
        // Purged through 2: the anchor carries entry 2's chain value.
        let c2: [u8; 32] = rows[1].chain.as_slice().try_into().unwrap();
        let anchor = Anchor { seq: 2, chain: c2.to_vec(), key_id: 1, mac: anchor_mac(&KEY, 2, &c2).to_vec() };
        // The largest position, sealed: no room after it (and no overflow).
        let last =
            Anchor { seq: i64::MAX, chain: c2.to_vec(), key_id: 1, mac: anchor_mac(&KEY, i64::MAX, &c2).to_vec() };
        assert_eq!(verify(Some(&last), rows.clone(), keys, None, None).problem, Some(Problem::Anchor));
        let rest = rows[2..].to_vec();
        assert_eq!(verify(Some(&anchor), rest.clone(), keys, Some(3), None).problem, None);
        // An anchor moved forward (more entries deleted) does not verify.
        let moved = Anchor { seq: 3, mac: anchor_mac(&OTHER, 3, &c2).to_vec(), ..anchor.clone() };
        assert_eq!(verify(Some(&moved), Vec::new(), keys, None, None).problem, Some(Problem::Anchor));
        // An older, genuine anchor left in place while more entries are deleted: a gap.
        let c1: [u8; 32] = rows[0].chain.as_slice().try_into().unwrap();
        let old = Anchor { seq: 1, chain: c1.to_vec(), key_id: 1, mac: anchor_mac(&KEY, 1, &c1).to_vec() };
        assert_eq!(verify(Some(&old), rest, keys, None, None).problem, Some(Problem::Removed { from: 2, to: 2 }));
    }

    #[test]
    fn a_known_position_catches_a_replaced_or_shortened_log() {
        let rows = chain(5);
        let c3: [u8; 32] = rows[2].chain.as_slice().try_into().unwrap();
        assert_eq!(verify(None, rows.clone(), keys, None, Some((3, c3))).problem, None);
        assert_eq!(
            verify(None, rows.clone(), keys, None, Some((3, [9; 32]))).problem,
            Some(Problem::Diverged { seq: 3 })
        );
        // Shortened below what was seen, after a restart (no head).
        let short = rows[..2].to_vec();
        assert_eq!(
            verify(None, short, keys, None, Some((3, c3))).problem,
            Some(Problem::RemovedAtEnd { from: 3, to: 3 })
        );
    }

    #[test]
    fn rekeying_rewrites_macs_only() {
        let mut rows = chain(4);
        for r in &mut rows {
            let c: [u8; 32] = r.chain.as_slice().try_into().unwrap();
            assert!(mac_ok(&KEY, &c, r.mac.as_ref().unwrap()));
            r.mac = Some(mac(&OTHER, &c).to_vec());
            r.key_id = 2;
        }
        let k2 = |id| (id == 2).then_some(OTHER);
        assert_eq!(verify(None, rows, k2, Some(4), None).problem, None);
    }
}
