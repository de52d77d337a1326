//! Tests of the cleaner's scheduling rules: which log next, which logs sit out.

use super::*;

fn cleanable(cleanable_bytes: u64, dirty_bytes: u64, overdue: bool) -> Cleanable {
    Cleanable {
        cleanable_bytes,
        dirty_bytes,
        overdue,
    }
}

#[test]
fn a_log_is_worth_a_pass_at_its_minimum_ratio_or_when_overdue() {
    assert!(worth_cleaning(&cleanable(100, 50, false), 0.5));
    assert!(!worth_cleaning(&cleanable(100, 49, false), 0.5));
    // Overdue: whatever the ratio.
    assert!(worth_cleaning(&cleanable(100, 1, true), 0.5));
    // Nothing dirty: never, not even at ratio 0 or overdue (it would clean an unchanged log
    // over and over).
    assert!(!worth_cleaning(&cleanable(100, 0, false), 0.0));
    assert!(!worth_cleaning(&cleanable(100, 0, true), 0.0));
    assert!(!worth_cleaning(&cleanable(0, 0, false), 0.0));
    // A ratio of 1 (never cleaned) reaches a minimum of 1.
    assert!(worth_cleaning(&cleanable(100, 100, false), 1.0));
}

#[test]
fn the_filthiest_log_worth_a_pass_goes_first() {
    let candidates = [
        (1, cleanable(100, 60, false), 0.5),
        (2, cleanable(100, 90, false), 0.5),
        // Filthier, but below its own minimum.
        (3, cleanable(100, 95, false), 0.99),
        (4, cleanable(100, 70, false), 0.5),
    ];
    assert_eq!(choose(&candidates), Some(2));
    // Each log's own minimum counts.
    let candidates = [
        (1, cleanable(100, 10, false), 0.05),
        (2, cleanable(100, 40, false), 0.5),
    ];
    assert_eq!(choose(&candidates), Some(1));
}

#[test]
fn an_overdue_log_is_chosen_below_its_minimum_ratio() {
    let candidates = [
        (1, cleanable(100, 10, true), 0.5),
        (2, cleanable(100, 40, false), 0.5),
    ];
    assert_eq!(choose(&candidates), Some(1));
    // Among several worth a pass, still the filthiest.
    let candidates = [
        (1, cleanable(100, 10, true), 0.5),
        (2, cleanable(100, 60, false), 0.5),
    ];
    assert_eq!(choose(&candidates), Some(2));
}

#[test]
fn nothing_is_chosen_when_no_log_is_worth_a_pass() {
    assert_eq!(choose::<i32>(&[]), None);
    let candidates = [
        (1, cleanable(100, 10, false), 0.5),
        (2, cleanable(0, 0, false), 0.0),
    ];
    assert_eq!(choose(&candidates), None);
}

#[test]
fn equal_ratios_go_to_the_lowest_key_whatever_the_order() {
    let a = (7, cleanable(100, 80, false), 0.5);
    let b = (3, cleanable(200, 160, false), 0.5);
    let c = (5, cleanable(100, 80, false), 0.5);
    for order in [[a, b, c], [c, b, a], [b, a, c], [b, c, a]] {
        assert_eq!(choose(&order), Some(3));
    }
}

#[test]
fn a_held_log_waits_out_its_hold() {
    let mut backoffs = Backoffs::default();
    let start = Instant::now();
    assert!(backoffs.ready(&1, start));
    backoffs.hold(1, start, Duration::from_secs(10));
    assert!(!backoffs.ready(&1, start + Duration::from_secs(9)));
    assert!(backoffs.ready(&2, start));
    assert!(backoffs.ready(&1, start + Duration::from_secs(10)));
    // A new hold replaces the old one.
    backoffs.hold(1, start, Duration::from_secs(1));
    assert!(backoffs.ready(&1, start + Duration::from_secs(1)));
}

#[test]
fn ended_holds_are_forgotten() {
    let mut backoffs = Backoffs::default();
    let start = Instant::now();
    backoffs.hold(1, start, Duration::from_secs(1));
    backoffs.hold(2, start, Duration::from_secs(5));
    backoffs.expire(start + Duration::from_secs(2));
    assert_eq!(backoffs.until.len(), 1);
    assert!(!backoffs.ready(&2, start + Duration::from_secs(2)));
}

#[test]
fn defaults_match_the_documented_values() {
    let settings = CleanerSettings::default();
    assert!(settings.enabled);
    assert_eq!(settings.io_max_bytes_per_second, 64 << 20);
    assert_eq!(settings.dedupe_buffer_bytes, 32 << 20);
    assert_eq!(settings.backoff, Duration::from_secs(15));
}
