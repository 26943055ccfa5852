//! Project schedules: a cron expression evaluating a project's branch head at set times, whether or not it has
//! new commits. Pure: the poller's loop asks [`due`] with the clock's time.
//!
//! * Expressions are cron's five fields (minute, hour, day of month, month, day of week), or six with a leading
//!   seconds field (`*/30 * * * * *`), or an alias (`@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`);
//!   parsed by the `croner` crate (`L`, `W` and `#` work too).
//! * Times are **UTC**.
//! * Two runs are at least [`MIN_GAP`] apart: an expression firing more often is refused.
//! * A new (or changed) schedule first runs at its next time after it was set, not at once.
//! * After the server was down across one or more of a schedule's times, it runs **once** when it is back
//!   (one catch-up run, not one per missed time), and then at its next time after that.

use crate::model::Timestamp;
use chrono::TimeDelta;

/// Longest expression accepted.
pub const MAX_EXPRESSION: usize = 256;
/// The shortest time allowed between two runs of a schedule.
pub const MIN_GAP: TimeDelta = TimeDelta::seconds(10);
/// How many successive times of an expression are checked against [`MIN_GAP`].
const GAP_SAMPLES: usize = 64;

/// A checked cron expression.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: croner::Cron,
}

impl Schedule {
    /// Parses `expression`, or answers why it is not one (one sentence).
    pub fn parse(expression: &str) -> Result<Self, String> {
        let expression = expression.trim();
        if expression.is_empty() {
            return Err("the schedule is empty: give a cron expression such as '0 3 * * *'".into());
        }
        if expression.len() > MAX_EXPRESSION || expression.chars().any(char::is_control) {
            return Err(format!(
                "the schedule must be one line of at most {MAX_EXPRESSION} characters"
            ));
        }
        let fields = expression.split_whitespace().count();
        if !expression.starts_with('@') && !(5..=6).contains(&fields) {
            return Err(format!(
                "'{expression}' has {fields} fields: a schedule has five (minute hour day-of-month month \
                 day-of-week) or six with a leading seconds field"
            ));
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(expression)
            .map_err(|e| format!("'{expression}' is not a cron expression: {e}"))?;
        let schedule = Self { cron };
        schedule.check_gap(expression)?;
        Ok(schedule)
    }

    /// The first time of the schedule strictly after `t`, if it has one.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        self.cron.find_next_occurrence(&t, false).ok()
    }

    fn check_gap(&self, expression: &str) -> Result<(), String> {
        // From a fixed point, so the answer does not depend on when it is asked.
        let mut at = chrono::DateTime::UNIX_EPOCH + TimeDelta::days(365 * 56);
        let mut previous: Option<Timestamp> = None;
        for _ in 0..GAP_SAMPLES {
            let Some(next) = self.next_after(at) else {
                return if previous.is_none() {
                    Err(format!("the schedule '{expression}' never runs"))
                } else {
                    Ok(())
                };
            };
            if let Some(p) = previous
                && next - p < MIN_GAP
            {
                return Err(format!(
                    "the schedule '{expression}' runs more often than every {} seconds",
                    MIN_GAP.num_seconds()
                ));
            }
            previous = Some(next);
            at = next;
        }
        Ok(())
    }
}

/// Checks an expression as given by a user: `Ok` with it trimmed.
pub fn check(expression: &str) -> Result<String, String> {
    Schedule::parse(expression).map(|_| expression.trim().to_owned())
}

/// What the poller's loop does with a scheduled project at `now`, given when its schedule was last run (or set,
/// or first seen: `anchor`; `None` when never).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing now.
    Wait,
    /// Remember `now` as the anchor without running: the schedule was never seen (a new or changed schedule
    /// first runs at its next time).
    Start,
    /// Run once now and remember `now` as the anchor (every time missed since the anchor is covered by this
    /// one run).
    Run,
}

/// Whether the schedule runs at `now`: when one of its times lies in `(anchor, now]`.
pub fn due(schedule: &Schedule, anchor: Option<Timestamp>, now: Timestamp) -> Decision {
    let Some(anchor) = anchor else {
        return Decision::Start;
    };
    match schedule.next_after(anchor) {
        Some(next) if next <= now => Decision::Run,
        _ => Decision::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32, s: u32) -> Timestamp {
        chrono::Utc
            .with_ymd_and_hms(2026, 3, 2, h, m, s)
            .single()
            .expect("a time")
    }

    #[test]
    fn expressions_have_five_or_six_fields_or_are_aliases() {
        for ok in [
            "0 3 * * *",
            "*/15 * * * *",
            "*/30 * * * * *",
            "@daily",
            "@hourly",
            "0 0 * * MON",
            " 5 4 * * * ",
        ] {
            assert!(Schedule::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "* * * *",
            "0 0 0 * * * 2030",
            "61 * * * *",
            "a b c d e",
            "* * * * * *",
            "*/5 * * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
        assert!(Schedule::parse("* * * * * *").unwrap_err().contains("more often"));
        assert_eq!(check(" 0 3 * * * ").unwrap(), "0 3 * * *");
    }

    #[test]
    fn times_are_utc() {
        let s = Schedule::parse("0 3 * * *").unwrap();
        assert_eq!(s.next_after(at(2, 0, 0)), Some(at(3, 0, 0)));
        assert_eq!(s.next_after(at(3, 0, 0)), Some(at(3, 0, 0) + TimeDelta::days(1)));
    }
}
