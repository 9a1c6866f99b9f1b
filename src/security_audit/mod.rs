//! `security_audit()`: where a database falls short of the platform's
//! advice, with a fix for each finding. The checks are catalog queries
//! (security_audit.sql); two need the server's internals and live here: the
//! shape of a policy expression, and the state of the keys.
//!
//! `security_audit()` itself is plain SQL, so it also runs (and reports
//! it) when the library is not preloaded and these functions cannot load.

use crate::kdf::{KeyError, KeySet, MIN_JWT_SECRET_LEN};
use crate::pg::settings;
use crate::policy_shape::{classify, Expr};
use pgrx::prelude::*;
use std::ffi::{c_void, CString};

pgrx::extension_sql_file!(
    "security_audit.sql",
    name = "security_audit",
    requires = ["protection", "request_log", "secrets", "webhooks", "audit_trail", "citus", _policy_shape, _key_status]
);

/// The shape of one policy expression (`pg_policy.polqual` or
/// `polwithcheck` as text) for a table whose org column is `org_attnum`;
/// `helpers` are the org helpers' function oids. See core/src/policy_shape.rs.
#[pg_extern(stable, parallel_safe)]
fn _policy_shape(expr: Option<&str>, org_attnum: i16, helpers: Vec<pg_sys::Oid>) -> &'static str {
    let Some(text) = expr else { return classify(None).as_str() };
    let Ok(text) = CString::new(text) else { return classify(None).as_str() };
    // SAFETY: stringToNode reads a NUL-terminated node string (raising an
    // ERROR on a malformed one); its result is a palloc'd tree we only read.
    let tree = unsafe { pg_sys::stringToNode(text.as_ptr()) } as *mut pg_sys::Node;
    let facts = Facts { org_attnum, helpers };
    // SAFETY: `tree` is a valid expression tree just read back from its text.
    let e = unsafe { facts.reduce(tree) };
    classify(Some(&e)).as_str()
}

struct Facts {
    org_attnum: i16,
    helpers: Vec<pg_sys::Oid>,
}

/// What a walk over one leaf found.
struct Walk<'a> {
    facts: &'a Facts,
    /// Query levels entered (a Var of the policy's table has this varlevelsup).
    depth: u32,
    org_column: bool,
    helper: bool,
}

impl Facts {
    /// Reduce a node to its AND/OR skeleton and the facts of its leaves.
    ///
    /// # Safety
    /// `node` is NULL or a valid expression tree.
    unsafe fn reduce(&self, node: *mut pg_sys::Node) -> Expr {
        if node.is_null() {
            return Expr::Const(None);
        }
        match (*node).type_ {
            pg_sys::NodeTag::T_BoolExpr => {
                let b = node as *mut pg_sys::BoolExpr;
                let args =
                    || pgrx::PgList::<pg_sys::Node>::from_pg((*b).args).iter_ptr().map(|a| self.reduce(a)).collect();
                match (*b).boolop {
                    pg_sys::BoolExprType::AND_EXPR => Expr::And(args()),
                    pg_sys::BoolExprType::OR_EXPR => Expr::Or(args()),
                    _ => self.leaf(node),
                }
            }
            pg_sys::NodeTag::T_Const if (*(node as *mut pg_sys::Const)).consttype == pg_sys::BOOLOID => {
                let c = node as *mut pg_sys::Const;
                Expr::Const(if (*c).constisnull { None } else { Some((*c).constvalue.value() != 0) })
            }
            _ => self.leaf(node),
        }
    }

    /// # Safety
    /// `node` is a valid expression tree.
    unsafe fn leaf(&self, node: *mut pg_sys::Node) -> Expr {
        let mut w = Walk { facts: self, depth: 0, org_column: false, helper: false };
        walker(node, &mut w as *mut Walk as *mut c_void);
        Expr::Leaf { org_column: w.org_column, helper: w.helper }
    }
}

/// The tree walker: notes the org column (at the policy's own query level)
/// and calls of the org helpers, descending into sub-queries.
#[pg_guard]
unsafe extern "C-unwind" fn walker(node: *mut pg_sys::Node, ctx: *mut c_void) -> bool {
    if node.is_null() {
        return false;
    }
    // SAFETY: `ctx` is the Walk that leaf() passed, alive for the whole walk.
    let w = unsafe { &mut *(ctx as *mut Walk) };
    // SAFETY: PostgreSQL hands the walker valid nodes of the tree; each cast
    // below follows the node's own tag.
    unsafe {
        match (*node).type_ {
            pg_sys::NodeTag::T_Var => {
                let v = node as *mut pg_sys::Var;
                if (*v).varlevelsup == w.depth && (*v).varno == 1 && (*v).varattno == w.facts.org_attnum {
                    w.org_column = true;
                }
                false
            }
            pg_sys::NodeTag::T_FuncExpr => {
                if w.facts.helpers.contains(&(*(node as *mut pg_sys::FuncExpr)).funcid) {
                    w.helper = true;
                }
                pg_sys::expression_tree_walker(node, Some(walker), ctx)
            }
            pg_sys::NodeTag::T_Query => {
                w.depth += 1;
                let r = pg_sys::query_tree_walker(node as *mut pg_sys::Query, Some(walker), ctx, 0);
                w.depth -= 1;
                r
            }
            _ => pg_sys::expression_tree_walker(node, Some(walker), ctx),
        }
    }
}

/// The state of the passphrases and the JWT secret, and the key ids in use:
/// never a value, a length or anything derived from a secret but the key id
/// every envelope already carries in clear.
#[pg_extern(stable, parallel_safe)]
fn _key_status() -> TableIterator<
    'static,
    (
        name!(passphrase, &'static str),
        name!(jwt_secret, &'static str),
        name!(current_key_id, Option<i64>),
        name!(old_key_ids, Vec<i64>),
    ),
> {
    let (passphrase, current) =
        settings::with_value(&settings::PASSPHRASE, |p| match KeySet::derive(p.unwrap_or(b"")) {
            Ok(k) => ("ok", Some(i64::from(k.key_id()))),
            Err(KeyError::Missing) => ("missing", None),
            Err(KeyError::TooShort) => ("too_short", None),
        });
    let jwt = settings::with_value(&settings::JWT_SECRET, |s| match s.unwrap_or(b"").len() {
        0 => "missing",
        n if n < MIN_JWT_SECRET_LEN => "too_short",
        _ => "ok",
    });
    let old = crate::keyring::old().iter().map(|k| i64::from(k.key_id())).collect();
    TableIterator::once((passphrase, jwt, current, old))
}
