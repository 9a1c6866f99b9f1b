//! The request context as it is carried to the other nodes of a Citus
//! cluster, and the rule each node applies to it.
//!
//! The node where a request authenticated (the coordinator) signs its
//! context into a *carried* token: the claims, the Citus distributed
//! transaction it is for, a random nonce, an expiry a few seconds ahead, and
//! the node's own identity. Citus replays a transaction's `SET LOCAL`
//! statements on every worker connection of that distributed transaction;
//! the token travels that way. A worker accepts it only in a session of
//! that distributed transaction, and once: the first such session on that
//! node to use it claims it; any later presentation of the same nonce there
//! is refused, and so is the token on the node that made it, and after its
//! expiry.
//!
//! Format: `tgc1.<base64url(JSON)>.<base64url(HMAC-SHA256(carried key, "tgc1." || payload))>`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::context_token::TokenError;

type HmacSha256 = Hmac<Sha256>;

pub const PREFIX: &str = "tgc1.";
/// Longest token accepted.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// How long a carried token may be claimed after it was made. The node that
/// made it sends a fresh one when a statement starts after half of this.
pub const LIFETIME_US: i64 = 10_000_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carried {
    #[serde(rename = "o")]
    pub org_id: [u8; 16],
    #[serde(rename = "u")]
    pub user_id: Option<[u8; 16]>,
    #[serde(rename = "r")]
    pub role: String,
    #[serde(rename = "k", default)]
    pub api_key_id: Option<[u8; 16]>,
    #[serde(rename = "s", default)]
    pub scopes: Vec<String>,
    /// Random, so every token is claimed once per node.
    #[serde(rename = "n")]
    pub nonce: [u8; 16],
    /// After this (PostgreSQL microseconds) it can no longer be claimed.
    #[serde(rename = "e")]
    pub expires_us: i64,
    /// The system identifier of the cluster that made it.
    #[serde(rename = "f")]
    pub origin: u64,
    /// The Citus distributed transaction it was made for: (initiator node
    /// group, transaction number, timestamp).
    #[serde(rename = "x")]
    pub transaction: Transaction,
}

/// A Citus distributed transaction id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    pub initiator: i32,
    pub number: u64,
    pub stamp: i64,
}

fn mac(key: &[u8; 32], payload: &str) -> HmacSha256 {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(PREFIX.as_bytes());
    m.update(payload.as_bytes());
    m
}

pub fn encode(c: &Carried, key: &[u8; 32]) -> String {
    let payload = B64.encode(serde_json::to_vec(c).expect("carried context serializes"));
    let tag = mac(key, &payload).finalize().into_bytes();
    format!("{PREFIX}{payload}.{}", B64.encode(tag))
}

/// Verify the MAC (in constant time) and parse. Does not judge expiry or claims.
pub fn decode(token: &str, key: &[u8; 32]) -> Result<Carried, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let rest = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
    let (payload, tag) = rest.split_once('.').ok_or(TokenError::Malformed)?;
    let tag = B64.decode(tag).map_err(|_| TokenError::Malformed)?;
    mac(key, payload).verify_slice(&tag).map_err(|_| TokenError::BadSignature)?;
    let json = B64.decode(payload).map_err(|_| TokenError::Malformed)?;
    let c: Carried = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
    if crate::roles::rank(&c.role).is_none() {
        return Err(TokenError::Malformed);
    }
    Ok(c)
}

/// Who claimed a token on this node: a backend's pid and local transaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Claimant {
    pub pid: i32,
    pub lxid: u32,
}

/// One slot of a node's claims table (all zero: empty).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Slot {
    pub nonce: [u8; 16],
    pub expires_us: i64,
    pub by: Claimant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Claimed now, or already by this same claimant (a SET replayed after
    /// a savepoint rollback).
    Accepted,
    /// Another session on this node claimed it first.
    ClaimedElsewhere,
    /// Past its expiry.
    Expired,
    /// Made by this node: it never accepts its own.
    OwnToken,
    /// Presented by a session that is not in the distributed transaction it
    /// was made for.
    OtherTransaction,
    /// Every slot holds an unexpired claim: refused (fail closed).
    Full,
    /// Presented in a transaction whose distributed id was not given by
    /// Citus's own first command of the transaction on this node.
    NotBegunByCitus,
    /// In a parallel worker: its leader holds no claim of it.
    NotClaimedByLeader,
}

/// Slots a nonce may use: a window of the table starting at a position the
/// nonce (random, and covered by the MAC) picks.
pub const PROBE: usize = 64;

/// Judge `c` on the node `me` (its system identifier) for `by`, a session
/// in distributed transaction `tx`, recording the claim in `slots`. A claim
/// is kept until the token expires, so a copy presented later on this node
/// is refused.
pub fn claim(slots: &mut [Slot], c: &Carried, me: u64, by: Claimant, tx: Transaction, now_us: i64) -> Verdict {
    if c.origin == me {
        return Verdict::OwnToken;
    }
    if tx != c.transaction || tx.number == 0 {
        return Verdict::OtherTransaction;
    }
    if now_us >= c.expires_us {
        return Verdict::Expired;
    }
    take(slots, c.nonce, c.expires_us, by, now_us)
}

/// Whether `c` is claimed on this node by `by` and unexpired. A parallel
/// worker asks this for its leader: it never claims a token itself.
pub fn claimed_by(slots: &[Slot], c: &Carried, by: Claimant, now_us: i64) -> bool {
    let n = slots.len();
    if n == 0 || now_us >= c.expires_us {
        return false;
    }
    let start = (u64::from_le_bytes(c.nonce[..8].try_into().expect("8 bytes")) % n as u64) as usize;
    (0..PROBE.min(n))
        .map(|i| &slots[(start + i) % n])
        .any(|s| s.expires_us > now_us && s.nonce == c.nonce && s.by == by)
}

/// Record `key` for `by` until `until` in its window of `slots`: Accepted
/// when it is new or already `by`'s, ClaimedElsewhere when another holds it.
fn take(slots: &mut [Slot], key: [u8; 16], until: i64, by: Claimant, now_us: i64) -> Verdict {
    let n = slots.len();
    if n == 0 {
        return Verdict::Full;
    }
    let start = (u64::from_le_bytes(key[..8].try_into().expect("8 bytes")) % n as u64) as usize;
    let mut free = None;
    for i in 0..PROBE.min(n) {
        let s = &mut slots[(start + i) % n];
        if s.expires_us > now_us && s.nonce == key {
            if s.by == by {
                s.expires_us = s.expires_us.max(until);
                return Verdict::Accepted;
            }
            return Verdict::ClaimedElsewhere;
        }
        if free.is_none() && s.expires_us <= now_us {
            free = Some((start + i) % n);
        }
    }
    match free {
        Some(i) => {
            slots[i] = Slot { nonce: key, expires_us: until, by };
            Verdict::Accepted
        }
        None => Verdict::Full,
    }
}

/// The key under which a node records which of its sessions a
/// distributed transaction belongs to: the one that began it with a
/// request context (on the node that made the context), or the one that
/// claimed its carried context (on a worker). Domain-separated from nonces.
/// The timestamp is left out: Citus names a transaction's intermediate
/// results by initiator and number alone, so a session that names those
/// with any timestamp reads them.
pub fn owner_key(tx: Transaction) -> [u8; 16] {
    use sha2::Digest;
    let mut h = Sha256::new();
    h.update(b"tenant_guard carried owner\0");
    h.update(tx.initiator.to_le_bytes());
    h.update(tx.number.to_le_bytes());
    h.finalize()[..16].try_into().expect("16 bytes")
}

/// Record that distributed transaction `tx` belongs, on this node, to the
/// session `by`, until `until` (or until [`release_owner`]).
pub fn record_owner(slots: &mut [Slot], tx: Transaction, by: Claimant, until: i64, now_us: i64) -> Verdict {
    if tx.number == 0 {
        return Verdict::OtherTransaction;
    }
    take(slots, owner_key(tx), until, by, now_us)
}

/// Whether `tx` belongs on this node to a session other than `pid` (which
/// has then joined it by naming its id: Citus lets any session of a role
/// do that, and read what the transaction left behind).
pub fn owned_elsewhere(slots: &[Slot], tx: Transaction, pid: i32, now_us: i64) -> bool {
    if tx.number == 0 || slots.is_empty() {
        return false;
    }
    let key = owner_key(tx);
    let n = slots.len();
    let start = (u64::from_le_bytes(key[..8].try_into().expect("8 bytes")) % n as u64) as usize;
    (0..PROBE.min(n))
        .map(|i| &slots[(start + i) % n])
        .any(|s| s.expires_us > now_us && s.nonce == key && s.by.pid != pid)
}

/// Its transaction ended: `by`'s records of `tx` last until `until` at
/// most (when a token carried for it expires; now, when none was), so
/// that no session can name the ended transaction's id while a copy of
/// its token could still be claimed.
pub fn release_owner(slots: &mut [Slot], tx: Transaction, by: Claimant, until: i64) {
    if tx.number == 0 || slots.is_empty() {
        return;
    }
    let key = owner_key(tx);
    let n = slots.len();
    let start = (u64::from_le_bytes(key[..8].try_into().expect("8 bytes")) % n as u64) as usize;
    for i in 0..PROBE.min(n) {
        let s = &mut slots[(start + i) % n];
        if s.nonce == key && s.by == by {
            s.expires_us = s.expires_us.min(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: [u8; 32] = [4; 32];

    fn carried(nonce: u8) -> Carried {
        Carried {
            org_id: [1; 16],
            user_id: Some([2; 16]),
            role: "member".into(),
            api_key_id: None,
            scopes: vec![],
            nonce: [nonce; 16],
            expires_us: 1_000,
            origin: 7,
            transaction: TX,
        }
    }

    const TX: Transaction = Transaction { initiator: 0, number: 42, stamp: 99 };

    #[test]
    fn round_trip_and_tampering() {
        let t = encode(&carried(1), &K);
        assert!(t.starts_with(PREFIX));
        assert_eq!(decode(&t, &K).unwrap(), carried(1));
        assert_eq!(decode(&t, &[5; 32]), Err(TokenError::BadSignature));
        // A request-context token is not a carried one, and the other way round.
        let local = crate::context_token::Claims {
            org_id: [1; 16],
            user_id: None,
            role: "member".into(),
            api_key_id: None,
            scopes: vec![],
            binding: crate::context_token::Binding { pid: 1, backend_id: 1, lxid: 1 },
        };
        assert!(decode(&crate::context_token::encode(&local, &K), &K).is_err());
        assert!(crate::context_token::decode(&t, &K).is_err());
        for bad in ["", "tgc1.", "tgc1.a.b", "tgc2.x.y"] {
            assert!(decode(bad, &K).is_err(), "{bad}");
        }
        let mut other = carried(1);
        other.role = "root".into();
        assert_eq!(decode(&encode(&other, &K), &K), Err(TokenError::Malformed));
    }

    #[test]
    fn a_token_is_claimed_once_per_node() {
        let mut slots = vec![Slot::default(); 128];
        let a = Claimant { pid: 10, lxid: 5 };
        let b = Claimant { pid: 11, lxid: 9 };
        assert_eq!(claim(&mut slots, &carried(3), 1, a, TX, 0), Verdict::Accepted);
        assert_eq!(claim(&mut slots, &carried(3), 1, a, TX, 10), Verdict::Accepted, "the same session again");
        assert_eq!(claim(&mut slots, &carried(3), 1, b, TX, 10), Verdict::ClaimedElsewhere);
        // Another node has its own table: there it is claimed afresh.
        let mut other_node = vec![Slot::default(); 128];
        assert_eq!(claim(&mut other_node, &carried(3), 2, b, TX, 10), Verdict::Accepted);
        // The node that made it, and after expiry: never.
        assert_eq!(claim(&mut slots, &carried(4), 7, a, TX, 0), Verdict::OwnToken);
        assert_eq!(claim(&mut slots, &carried(4), 1, a, TX, 1_000), Verdict::Expired);
        // An expired claim frees its slot; its token is expired too.
        assert_eq!(claim(&mut slots, &carried(3), 1, b, TX, 2_000), Verdict::Expired);
        // Only in the distributed transaction it was made for (and in one).
        let other = Transaction { number: 43, ..TX };
        assert_eq!(claim(&mut slots, &carried(5), 1, a, other, 0), Verdict::OtherTransaction);
        assert_eq!(claim(&mut slots, &carried(5), 1, a, Transaction::default(), 0), Verdict::OtherTransaction);
    }

    #[test]
    fn a_transaction_belongs_to_one_session_per_node() {
        let mut slots = vec![Slot::default(); 128];
        let a = Claimant { pid: 10, lxid: 5 };
        let b = Claimant { pid: 11, lxid: 9 };
        assert_eq!(record_owner(&mut slots, TX, a, 1_000, 0), Verdict::Accepted);
        assert_eq!(record_owner(&mut slots, TX, a, 2_000, 10), Verdict::Accepted, "renewed by its owner");
        assert_eq!(record_owner(&mut slots, TX, b, 2_000, 10), Verdict::ClaimedElsewhere);
        assert!(owned_elsewhere(&slots, TX, b.pid, 10), "b joined a's transaction");
        assert!(!owned_elsewhere(&slots, TX, a.pid, 10));
        assert!(!owned_elsewhere(&slots, Transaction { number: 43, ..TX }, b.pid, 10));
        assert!(owned_elsewhere(&slots, Transaction { stamp: 1, ..TX }, b.pid, 10), "any timestamp: the same results");
        assert!(!owned_elsewhere(&slots, TX, b.pid, 2_000), "expired");
        release_owner(&mut slots, TX, a, 500);
        assert!(owned_elsewhere(&slots, TX, b.pid, 10), "kept while a token of it may be claimed");
        assert!(!owned_elsewhere(&slots, TX, b.pid, 500), "released once it expired");
        release_owner(&mut slots, TX, a, 5_000);
        assert!(!owned_elsewhere(&slots, TX, b.pid, 600), "a release never extends a record");
        assert_eq!(record_owner(&mut slots, TX, a, 1_000, 0), Verdict::Accepted);
        release_owner(&mut slots, TX, a, 0);
        assert!(!owned_elsewhere(&slots, TX, b.pid, 1), "released at once when no token was carried");
        // No transaction, nothing recorded; a nonce never reads as an owner.
        assert_eq!(record_owner(&mut slots, Transaction::default(), a, 1_000, 0), Verdict::OtherTransaction);
        assert_eq!(claim(&mut slots, &carried(3), 1, a, TX, 0), Verdict::Accepted);
        assert!(!owned_elsewhere(&slots, TX, b.pid, 10));
    }

    #[test]
    fn a_parallel_worker_sees_only_its_leaders_claim() {
        let mut slots = vec![Slot::default(); 128];
        let leader = Claimant { pid: 10, lxid: 5 };
        let other = Claimant { pid: 11, lxid: 5 };
        let c = carried(7);
        assert!(!claimed_by(&slots, &c, leader, 0), "nothing claimed yet");
        assert_eq!(claim(&mut slots, &c, 1, leader, TX, 0), Verdict::Accepted);
        assert!(claimed_by(&slots, &c, leader, 10));
        assert!(!claimed_by(&slots, &c, other, 10), "another session's claim is not the leader's");
        assert!(!claimed_by(&slots, &c, leader, c.expires_us), "expired");
        assert!(!claimed_by(&slots, &carried(8), leader, 10), "another token");
    }

    #[test]
    fn a_full_window_fails_closed() {
        let mut slots = vec![Slot::default(); PROBE];
        for i in 0..PROBE as u8 {
            let mut c = carried(0);
            c.nonce = [i.wrapping_add(100); 16];
            assert_eq!(claim(&mut slots, &c, 1, Claimant { pid: i as i32, lxid: 1 }, TX, 0), Verdict::Accepted);
        }
        assert_eq!(claim(&mut slots, &carried(1), 1, Claimant { pid: 1, lxid: 1 }, TX, 0), Verdict::Full);
        // Once they expire, there is room again.
        let mut late = carried(1);
        late.expires_us = 5_000;
        assert_eq!(claim(&mut slots, &late, 1, Claimant { pid: 1, lxid: 1 }, TX, 1_000), Verdict::Accepted);
    }
}
