//! GCRA (generic cell rate algorithm), the same semantics as redis-cell's
//! `CL.THROTTLE`, so its published test table applies (see the unit tests).
//! Pure logic: the caller stores the theoretical arrival time (TAT).

/// Limit parameters, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Time between two admitted requests at the sustained rate.
    pub emission_interval: i64,
    /// `emission_interval * (max_burst + 1)`.
    pub tolerance: i64,
}

impl Rate {
    /// `count` requests per `period_us`, with `max_burst` extra requests allowed at once.
    pub fn new(count: i64, period_us: i64, max_burst: i64) -> Option<Rate> {
        if count <= 0 || period_us <= 0 || max_burst < 0 {
            return None;
        }
        let emission_interval = (period_us / count).max(1);
        let tolerance = emission_interval.checked_mul(max_burst.checked_add(1)?)?;
        Some(Rate { emission_interval, tolerance })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub limited: bool,
    pub remaining: i64,
    /// Until the bucket is full again.
    pub reset_after: i64,
    /// Until the request would be admitted; -1 s when not applicable (as redis-cell).
    pub retry_after: i64,
}

const NOT_APPLICABLE: i64 = -1_000_000;

/// Decide on `quantity` requests at time `now`, given the stored TAT (None when
/// the key is new). Returns the decision and the TAT to store.
pub fn check(rate: Rate, stored_tat: Option<i64>, now: i64, quantity: i64) -> (Decision, i64) {
    let t = rate.emission_interval;
    let tat = stored_tat.unwrap_or(now).max(now);
    let increment = t.saturating_mul(quantity.max(0));
    let new_tat = tat.saturating_add(increment);
    let allow_at = new_tat - rate.tolerance;
    let diff = now - allow_at;
    if diff < 0 {
        let retry_after = if increment <= rate.tolerance { -diff } else { NOT_APPLICABLE };
        let remaining = ((now - (tat - rate.tolerance)) / t).max(0);
        (Decision { limited: true, remaining, reset_after: tat - now, retry_after }, tat)
    } else {
        (
            Decision { limited: false, remaining: diff / t, reset_after: new_tat - now, retry_after: NOT_APPLICABLE },
            new_tat,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn redis_cell_table() {
        let v: Value = serde_json::from_str(include_str!("../../tests/vectors/known_answers.json")).unwrap();
        let g = &v["gcra_redis_cell"];
        let burst = g["params"]["max_burst"].as_i64().unwrap();
        let rate = Rate::new(1, 1_000_000, burst).unwrap();
        assert_eq!(rate.tolerance, g["params"]["delay_variation_tolerance_ms"].as_i64().unwrap() * 1000);
        let start = 1_700_000_000_000_000i64;
        let mut tat = None;
        let cases = g["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 15);
        for c in cases {
            let now = start + c["now_ms_since_start"].as_i64().unwrap() * 1000;
            let (d, new_tat) = check(rate, tat, now, c["quantity"].as_i64().unwrap());
            tat = Some(new_tat);
            let e = &c["expected"];
            let case = c["case"].as_i64().unwrap();
            assert_eq!(d.limited, e["limited"].as_bool().unwrap(), "case {case}");
            assert_eq!(d.remaining, e["remaining"].as_i64().unwrap(), "case {case}");
            assert_eq!(d.reset_after, e["reset_after_ms"].as_i64().unwrap() * 1000, "case {case}");
            assert_eq!(d.retry_after, e["retry_after_ms"].as_i64().unwrap() * 1000, "case {case}");
        }
    }

    #[test]
    fn never_admits_more_than_burst_plus_elapsed() {
        let rate = Rate::new(10, 60_000_000, 9).unwrap(); // 10/minute, all 10 at once
        let mut tat = None;
        let mut admitted = 0;
        for i in 0..1000 {
            let (d, t) = check(rate, tat, 1_000 + i, 1);
            tat = Some(t);
            admitted += (!d.limited) as i32;
        }
        assert_eq!(admitted, 10);
        let (d, _) = check(rate, tat, 1_000 + 6_000_000, 1);
        assert!(!d.limited, "one more after one emission interval");
    }

    #[test]
    fn bad_parameters() {
        assert!(Rate::new(0, 1, 0).is_none());
        assert!(Rate::new(1, 0, 0).is_none());
        assert!(Rate::new(1, 1, -1).is_none());
        assert!(Rate::new(1, i64::MAX, i64::MAX).is_none());
    }
}
