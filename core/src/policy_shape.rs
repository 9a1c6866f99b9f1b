//! How much an RLS policy expression limits rows to the current org.
//!
//! The server layer turns a policy's expression tree into an [`Expr`]: its
//! AND/OR skeleton, boolean constants, and for every other node (a leaf)
//! whether it mentions the table's org column and whether it calls one of
//! the org helpers (`current_org_id()`, `current_org_id_if()`). A leaf that
//! does both is taken as the org check (`org_id = current_org_id()`).

/// A policy expression, reduced to what decides its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// A boolean constant; `None` is SQL NULL.
    Const(Option<bool>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
    /// Any other expression.
    Leaf {
        org_column: bool,
        helper: bool,
    },
}

/// What a policy expression lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// No expression (the policy adds nothing for this command).
    None,
    /// Every row it lets through passed the org check (or it lets none through).
    OrgChecked,
    /// Always true: every row of every org.
    AlwaysTrue,
    /// The org check is there, but some OR branch lets rows through without it.
    OrBranchSkipsOrg,
    /// It never compares the org column with an org helper.
    NoOrgCheck,
}

impl Shape {
    /// The stable name SQL sees.
    pub fn as_str(self) -> &'static str {
        match self {
            Shape::None => "none",
            Shape::OrgChecked => "org_checked",
            Shape::AlwaysTrue => "always_true",
            Shape::OrBranchSkipsOrg => "or_branch_skips_org",
            Shape::NoOrgCheck => "no_org_check",
        }
    }
}

/// Every row the expression is true for satisfies the org check.
fn limited(e: &Expr) -> bool {
    match e {
        Expr::Const(v) => *v != Some(true),
        Expr::Leaf { org_column, helper } => *org_column && *helper,
        Expr::And(args) => args.iter().any(limited),
        Expr::Or(args) => args.iter().all(limited),
    }
}

fn always_true(e: &Expr) -> bool {
    match e {
        Expr::Const(v) => *v == Some(true),
        Expr::Leaf { .. } => false,
        Expr::And(args) => args.iter().all(always_true),
        Expr::Or(args) => args.iter().any(always_true),
    }
}

fn mentions_check(e: &Expr) -> bool {
    match e {
        Expr::Const(_) => false,
        Expr::Leaf { org_column, helper } => *org_column && *helper,
        Expr::And(args) | Expr::Or(args) => args.iter().any(mentions_check),
    }
}

/// The shape of an expression (`None` for a policy without one).
pub fn classify(e: Option<&Expr>) -> Shape {
    let Some(e) = e else { return Shape::None };
    if limited(e) {
        Shape::OrgChecked
    } else if always_true(e) {
        Shape::AlwaysTrue
    } else if mentions_check(e) {
        Shape::OrBranchSkipsOrg
    } else {
        Shape::NoOrgCheck
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECK: Expr = Expr::Leaf { org_column: true, helper: true };
    const OTHER: Expr = Expr::Leaf { org_column: false, helper: false };
    const ORG_ONLY: Expr = Expr::Leaf { org_column: true, helper: false };
    const HELPER_ONLY: Expr = Expr::Leaf { org_column: false, helper: true };
    const TRUE: Expr = Expr::Const(Some(true));

    #[test]
    fn the_org_check_and_what_narrows_it() {
        assert_eq!(classify(Some(&CHECK)), Shape::OrgChecked);
        assert_eq!(classify(Some(&Expr::And(vec![OTHER, CHECK]))), Shape::OrgChecked);
        assert_eq!(classify(Some(&Expr::Or(vec![CHECK, Expr::And(vec![CHECK, OTHER])]))), Shape::OrgChecked);
        assert_eq!(classify(Some(&Expr::Const(Some(false)))), Shape::OrgChecked);
        assert_eq!(classify(Some(&Expr::Const(None))), Shape::OrgChecked);
        assert_eq!(classify(None), Shape::None);
    }

    #[test]
    fn always_true_in_any_spelling() {
        assert_eq!(classify(Some(&TRUE)), Shape::AlwaysTrue);
        assert_eq!(classify(Some(&Expr::And(vec![TRUE, TRUE]))), Shape::AlwaysTrue);
        assert_eq!(classify(Some(&Expr::Or(vec![OTHER, TRUE]))), Shape::AlwaysTrue);
    }

    #[test]
    fn an_or_branch_that_skips_the_check() {
        assert_eq!(classify(Some(&Expr::Or(vec![CHECK, OTHER]))), Shape::OrBranchSkipsOrg);
        assert_eq!(classify(Some(&Expr::Or(vec![CHECK, HELPER_ONLY]))), Shape::OrBranchSkipsOrg);
        assert_eq!(classify(Some(&Expr::And(vec![OTHER, Expr::Or(vec![CHECK, ORG_ONLY])]))), Shape::OrBranchSkipsOrg);
    }

    #[test]
    fn no_check_at_all() {
        assert_eq!(classify(Some(&ORG_ONLY)), Shape::NoOrgCheck);
        assert_eq!(classify(Some(&HELPER_ONLY)), Shape::NoOrgCheck);
        assert_eq!(classify(Some(&Expr::And(vec![ORG_ONLY, HELPER_ONLY]))), Shape::NoOrgCheck);
        assert_eq!(classify(Some(&Expr::Or(vec![]))), Shape::OrgChecked);
    }
}
