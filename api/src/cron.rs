//! Five-field cron schedules in UTC, read as Kubernetes CronJobs read them
//! (robfig/cron v3's standard parser): day of week 0-6 (Sunday is 0), `N/step`
//! runs to the field's end, and the day fields are ORed only when both are
//! restricted.
//!
//! Written here rather than taken from a crate so that each mistake names the
//! field and value at fault, and so the engine can compute run times from a
//! time it is given (no clock inside).

use std::{borrow::Cow, fmt, str::FromStr};

use jiff::{Timestamp, civil, tz::TimeZone};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::{units::UnitError, yaml::quote};

const FIELDS: [(&str, u8, u8); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 6),
];
/// The longest schedule accepted (the CRD's `maxLength`).
pub const MAX_LEN: usize = 128;
const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// A parsed schedule; keeps the text it was written as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSchedule {
    text: String,
    /// Bit sets of allowed values per field.
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Neither day field is a star: a day matches if either matches (as in cron).
    day_or: bool,
}

impl CronSchedule {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first run time strictly after `after`, or None if the schedule
    /// never fires (like `0 0 30 2 *`) within the next five years.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let start = after.to_zoned(TimeZone::UTC).datetime();
        // Start at the next whole minute.
        let mut t = start
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(jiff::Span::new().minutes(1))
            .ok()?;
        let limit = start.date().checked_add(jiff::Span::new().years(5)).ok()?;
        while t.date() <= limit {
            let date = t.date();
            if !bit(self.months, date.month()) {
                t = first_of_next_month(date)?.to_datetime(civil::Time::midnight());
                continue;
            }
            if !self.day_matches(date) {
                t = date.tomorrow().ok()?.to_datetime(civil::Time::midnight());
                continue;
            }
            if !bit(self.hours, t.hour()) {
                t = t
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(jiff::Span::new().hours(1))
                    .ok()?;
                continue;
            }
            if !bit(self.minutes, t.minute()) {
                t = t.checked_add(jiff::Span::new().minutes(1)).ok()?;
                continue;
            }
            return t.to_zoned(TimeZone::UTC).ok().map(|z| z.timestamp());
        }
        None
    }

    fn day_matches(&self, date: civil::Date) -> bool {
        let dom = bit(self.days, date.day());
        let dow = bit(self.weekdays, date.weekday().to_sunday_zero_offset());
        if self.day_or { dom || dow } else { dom && dow }
    }
}

fn bit(set: u64, v: i8) -> bool {
    v >= 0 && set & (1 << v) != 0
}

fn first_of_next_month(d: civil::Date) -> Option<civil::Date> {
    d.first_of_month()
        .checked_add(jiff::Span::new().months(1))
        .ok()
}

fn parse_value(s: &str, field: usize) -> Option<u8> {
    let names: &[&str] = match field {
        3 => &MONTHS,
        4 => &DAYS,
        _ => &[],
    };
    let upper = s.to_ascii_uppercase();
    if let Some(i) = names.iter().position(|n| *n == upper) {
        return Some(i as u8 + if field == 3 { 1 } else { 0 });
    }
    if s.is_empty() || s.len() > 2 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The field's set of values, and whether it is restricted: as in robfig/cron,
/// a field with any part `*` or `?` at step 1 (`*/1` too) counts as a star.
fn parse_field(text: &str, field: usize) -> Result<(u64, bool), String> {
    let (name, min, max) = FIELDS[field];
    let mut set = 0u64;
    let mut restricted = true;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u8 = s.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                    format!("{name} field: step {} is not a positive number", quote(s))
                })?;
                (r, step)
            }
            None => (part, 1),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            if step == 1 {
                restricted = false;
            }
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let a = parse_value(a, field).ok_or_else(|| bad(name, a))?;
            let b = parse_value(b, field).ok_or_else(|| bad(name, b))?;
            (a, b)
        } else {
            let v = parse_value(range, field).ok_or_else(|| bad(name, range))?;
            // `5/15` means from 5 to the end in steps of 15.
            (v, if part.contains('/') { max } else { v })
        };
        for v in [lo, hi] {
            if v < min || v > max {
                return Err(format!("{name} field: {v} is out of range {min}-{max}"));
            }
        }
        if lo > hi {
            return Err(format!("{name} field: range {lo}-{hi} runs backwards"));
        }
        let mut v = lo;
        while v <= hi {
            set |= 1 << v;
            v = match v.checked_add(step) {
                Some(n) => n,
                None => break,
            };
        }
    }
    Ok((set, restricted))
}

fn bad(name: &str, v: &str) -> String {
    format!("{name} field: {} is not a number or name", quote(v))
}

impl FromStr for CronSchedule {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The limits of the CRD's schema, so both refuse the same schedules.
        if s.chars().count() > MAX_LEN {
            return Err(UnitError(format!(
                "{} is longer than {MAX_LEN} characters",
                quote(s)
            )));
        }
        if s.starts_with(char::is_whitespace) || s.ends_with(char::is_whitespace) {
            return Err(UnitError(format!(
                "{} is not a cron schedule: remove the spaces around it",
                quote(s)
            )));
        }
        let expanded = match s {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        // ASCII spaces and tabs only: `split_whitespace` would also split on
        // Unicode spaces, which the CRD's pattern takes as field text.
        let parts: Vec<&str> = expanded
            .split([' ', '\t'])
            .filter(|p| !p.is_empty())
            .collect();
        if parts.len() != 5 {
            return Err(UnitError(format!(
                "{} is not a cron schedule: it needs 5 fields (minute hour day-of-month month day-of-week), found {}",
                quote(s),
                parts.len()
            )));
        }
        let mut sets = [0u64; 5];
        let mut restricted = [false; 5];
        for (i, part) in parts.iter().enumerate() {
            let (set, r) = parse_field(part, i).map_err(|e| {
                UnitError(format!("{} is not a valid cron schedule: {e}", quote(s)))
            })?;
            sets[i] = set;
            restricted[i] = r;
        }
        let schedule = CronSchedule {
            text: s.to_owned(),
            minutes: sets[0],
            hours: sets[1],
            days: sets[2],
            months: sets[3],
            weekdays: sets[4],
            day_or: restricted[2] && restricted[4],
        };
        let probe = Timestamp::from_second(1_767_225_600).unwrap_or(Timestamp::UNIX_EPOCH); // 2026-01-01
        if schedule.next_after(probe).is_none() {
            return Err(UnitError(format!(
                "{} never fires (no such date)",
                quote(s)
            )));
        }
        Ok(schedule)
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for CronSchedule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for CronSchedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Cow::<str>::deserialize(d)?
            .parse()
            .map_err(de::Error::custom)
    }
}

impl JsonSchema for CronSchedule {
    fn schema_name() -> Cow<'static, str> {
        "CronSchedule".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "maxLength": MAX_LEN,
            "pattern": r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|\S+\s+\S+\s+\S+\s+\S+\s+\S+)$",
            "description": "A 5-field cron schedule in UTC (minute hour day-of-month month day-of-week), or @daily, @hourly, @weekly, @monthly, @yearly.",
        })
    }
}

crate::decode_via_from_str!(CronSchedule);

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn next(expr: &str, after: &str) -> String {
        let c: CronSchedule = expr.parse().expect(expr);
        c.next_after(ts(after)).expect("fires").to_string()
    }

    #[test]
    fn weekday_mornings() {
        // 2026-11-20 is a Friday.
        assert_eq!(
            next("0 10 * * 1-5", "2026-11-20T10:00:00Z"),
            "2026-11-23T10:00:00Z"
        );
        assert_eq!(
            next("0 10 * * 1-5", "2026-11-20T09:59:30Z"),
            "2026-11-20T10:00:00Z"
        );
        assert_eq!(
            next("0 10 * * MON-FRI", "2026-11-21T00:00:00Z"),
            "2026-11-23T10:00:00Z"
        );
    }

    #[test]
    fn steps_lists_and_macros() {
        assert_eq!(
            next("*/15 * * * *", "2026-01-01T00:07:00Z"),
            "2026-01-01T00:15:00Z"
        );
        assert_eq!(
            next("5,35 2 * * *", "2026-01-01T02:06:00Z"),
            "2026-01-01T02:35:00Z"
        );
        assert_eq!(
            next("@daily", "2026-01-01T00:00:00Z"),
            "2026-01-02T00:00:00Z"
        );
        assert_eq!(
            next("0 0 29 2 *", "2026-01-01T00:00:00Z"),
            "2028-02-29T00:00:00Z"
        );
        assert_eq!(
            next("0 0 * * 0", "2026-11-20T00:00:00Z"),
            "2026-11-22T00:00:00Z"
        );
        assert_eq!(
            next("0 0 * * SUN", "2026-11-20T00:00:00Z"),
            "2026-11-22T00:00:00Z"
        );
        // Both day fields restricted: either matches (the 1st, or any Monday).
        assert_eq!(
            next("0 0 1 * 1", "2026-11-20T00:00:00Z"),
            "2026-11-23T00:00:00Z"
        );
        assert_eq!(
            next("0 0 31 12 *", "2026-12-31T23:59:00Z"),
            "2027-12-31T00:00:00Z"
        );
    }

    #[test]
    fn robfig_semantics() {
        // `N/step` runs from N to the field's end.
        assert_eq!(
            next("50/5 * * * *", "2026-01-01T00:56:00Z"),
            "2026-01-01T01:50:00Z"
        );
        // `*/1` is a star: with a restricted day of week, both must match,
        // so only Mondays run (2026-11-23 is the next Monday).
        assert_eq!(
            next("0 0 */1 * 1", "2026-11-20T00:00:00Z"),
            "2026-11-23T00:00:00Z"
        );
        assert_eq!(
            next("0 0 ?,1 * 1", "2026-11-20T00:00:00Z"),
            "2026-11-23T00:00:00Z"
        );
        // `*/2` is restricted: odd days or Mondays (the 21st comes first).
        assert_eq!(
            next("0 0 */2 * 1", "2026-11-20T00:00:00Z"),
            "2026-11-21T00:00:00Z"
        );
        // A star day of week with a restricted day of month: the 1st only.
        assert_eq!(
            next("0 0 1 * */1", "2026-11-20T00:00:00Z"),
            "2026-12-01T00:00:00Z"
        );
    }

    #[test]
    fn spaces_and_length_match_the_schema() {
        let e = |s: &str| s.parse::<CronSchedule>().expect_err(s).0;
        assert!(e(" @daily").contains("remove the spaces"));
        assert!(e("@daily ").contains("remove the spaces"));
        assert!(e("0 0 * * *\n").contains("remove the spaces"));
        // A Unicode space is not a field separator.
        assert!(e("0 0 * *\u{2003}*").contains("needs 5 fields"));
        assert!(e("0\u{2003}0 * * * *").contains("is not a number or name"));
        assert!(e(&format!("0 0 * * {}", "0,".repeat(70) + "0")).contains("longer than 128"));
        assert!("0  0\t* * *".parse::<CronSchedule>().is_ok());
    }

    #[test]
    fn errors_name_the_field() {
        let e = |s: &str| s.parse::<CronSchedule>().expect_err(s).0;
        assert!(e("61 * * * *").contains("minute field: 61 is out of range 0-59"));
        assert!(e("* * * *").contains("needs 5 fields"));
        assert!(e("* 25 * * *").contains("hour field"));
        assert!(e("* * * FOO *").contains("month field"));
        assert!(e("*/0 * * * *").contains("step"));
        assert!(e("0 0 30 2 *").contains("never fires"));
        assert!(e("5-1 * * * *").contains("backwards"));
        assert!(e("0 0 * * 7").contains("day of week field: 7 is out of range 0-6"));
    }
}
