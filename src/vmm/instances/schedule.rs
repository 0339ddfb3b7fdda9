//! When the daemon snapshots an instance by itself, what it names the
//! snapshot and when it deletes it: `snapshots.schedule` (cron's five
//! fields, or a comma-separated list of `@daily`-style names),
//! `snapshots.pattern` (`%d` counts on from the highest number given) and
//! `snapshots.expiry` (lengths such as `1d 12H`), spelt as LXD spells them.
//! Every time is UTC: an appliance's clock has no zone to agree on.

use time::{Duration, Month, OffsetDateTime};

use super::Error;

/// The numbers one cron line names in each of its five fields, as bit sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cron {
    minute: u64,
    hour: u64,
    day: u64,
    month: u64,
    weekday: u64,
    /// Whether the day-of-month and day-of-week fields start with `*`:
    /// when both are restricted, a day that either names fires (cron's
    /// rule), otherwise only the restricted one counts.
    any_day: bool,
    any_weekday: bool,
}

/// A parsed `snapshots.schedule`: it fires in each minute any of its lines
/// names; an empty one never fires.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Schedule(Vec<Cron>);

/// `@name` and the cron line it stands for.
const NAMED: [(&str, &str); 7] = [
    ("@hourly", "0 * * * *"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@weekly", "0 0 * * 0"),
    ("@monthly", "0 0 1 * *"),
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
];

fn invalid(what: &str, v: &str, why: &str) -> Error {
    Error::Invalid(format!("invalid {what} {v:?}: {why}"))
}

/// One field: numbers, ranges `a-b`, `*`, each with an optional `/step`,
/// separated by commas; every number within `lo..=hi`.
fn field(text: &str, lo: u32, hi: u32) -> Result<u64, Error> {
    let bad = |why: &str| invalid("schedule field", text, why);
    let num = |s: &str| match s.parse::<u32>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(bad(&format!("expected a number from {lo} to {hi}"))),
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => match s.parse::<u32>() {
                Ok(n) if n > 0 => (r, Some(n)),
                _ => return Err(bad("a step is a number above 0")),
            },
            None => (part, None),
        };
        let (first, last) = match range.split_once('-') {
            _ if range == "*" => (lo, hi),
            Some((a, b)) => (num(a)?, num(b)?),
            // `5/15` runs from 5 to the end, as in cron.
            None if step.is_some() => (num(range)?, hi),
            None => {
                let n = num(range)?;
                (n, n)
            }
        };
        if first > last {
            return Err(bad("a range runs from low to high"));
        }
        let step = step.unwrap_or(1);
        let mut n = Some(first);
        while let Some(i) = n.filter(|i| *i <= last) {
            bits |= 1 << i;
            n = i.checked_add(step);
        }
    }
    Ok(bits)
}

impl Cron {
    fn parse(line: &str) -> Result<Cron, Error> {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = f[..] else {
            return Err(invalid(
                "snapshots.schedule",
                line,
                "expected five fields (minute hour day-of-month month day-of-week) or @hourly, @daily, @weekly, @monthly, @yearly",
            ));
        };
        // Sunday is 0 or 7.
        let mut weekdays = field(weekday, 0, 7)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & !(1 << 7);
        }
        Ok(Cron {
            minute: field(minute, 0, 59)?,
            hour: field(hour, 0, 23)?,
            day: field(day, 1, 31)?,
            month: field(month, 1, 12)?,
            weekday: weekdays,
            any_day: day.starts_with('*'),
            any_weekday: weekday.starts_with('*'),
        })
    }

    fn fires(&self, t: OffsetDateTime) -> bool {
        let has = |bits: u64, n: u8| bits & (1 << n) != 0;
        let day = has(self.day, t.day());
        let weekday = has(self.weekday, t.weekday().number_days_from_sunday());
        let day_ok = match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (true, false) => weekday,
            (false, true) => day,
            (false, false) => day || weekday,
        };
        has(self.minute, t.minute())
            && has(self.hour, t.hour())
            && has(self.month, u8::from(t.month()))
            && day_ok
    }
}

impl Schedule {
    pub(crate) fn parse(text: &str) -> Result<Schedule, Error> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Schedule::default());
        }
        if !text.starts_with('@') {
            return Ok(Schedule(vec![Cron::parse(text)?]));
        }
        let lines = text.split(',').map(|name| {
            NAMED
                .iter()
                .find(|(n, _)| *n == name.trim())
                .ok_or_else(|| {
                    invalid(
                        "snapshots.schedule",
                        name.trim(),
                        "known names are @hourly, @daily, @midnight, @weekly, @monthly, @yearly and @annually",
                    )
                })
                .and_then(|(_, line)| Cron::parse(line))
        });
        Ok(Schedule(lines.collect::<Result<_, _>>()?))
    }

    /// Whether the schedule names the minute that holds `secs`.
    pub(crate) fn fires(&self, secs: u64) -> bool {
        let t = i64::try_from(secs)
            .ok()
            .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok());
        t.is_some_and(|t| self.0.iter().any(|c| c.fires(t)))
    }
}

/// `t` plus `n` calendar months, the day kept or cut to the month's last.
fn add_months(t: OffsetDateTime, n: i64) -> Option<OffsetDateTime> {
    let months = i64::from(t.year()) * 12 + i64::from(u8::from(t.month())) - 1 + n;
    let year = i32::try_from(months.div_euclid(12)).ok()?;
    let month = Month::try_from(u8::try_from(months.rem_euclid(12) + 1).ok()?).ok()?;
    let day = t.day().min(month.length(year));
    Some(t.replace_date(time::Date::from_calendar_date(year, month, day).ok()?))
}

/// When a snapshot taken at `from` expires under `snapshots.expiry` =
/// `spec`: numbers with a unit, `M` minutes, `H` hours, `d` days, `w`
/// weeks, `m` months, `y` years, separated by spaces. `None`: never.
pub(crate) fn expiry(spec: &str, from: u64) -> Result<Option<u64>, Error> {
    let bad = |why: &str| invalid("snapshots.expiry", spec, why);
    let mut t = i64::try_from(from)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| bad("the clock is out of range"))?;
    let mut any = false;
    for token in spec.split_whitespace() {
        let split = token.len().saturating_sub(1);
        let (n, unit) = (token.get(..split).unwrap_or(""), token.get(split..));
        let n = n
            .parse::<u32>()
            .map_err(|_| bad("expected numbers with a unit, such as 2d or 1w 12H"))?;
        let n = i64::from(n);
        t = match unit {
            Some("M") => t.checked_add(Duration::minutes(n)),
            Some("H") => t.checked_add(Duration::hours(n)),
            Some("d") => t.checked_add(Duration::days(n)),
            Some("w") => t.checked_add(Duration::weeks(n)),
            Some("m") => add_months(t, n),
            Some("y") => add_months(t, n.saturating_mul(12)),
            _ => return Err(bad("units are M, H, d, w, m and y")),
        }
        .ok_or_else(|| bad("too far ahead"))?;
        any = true;
    }
    match u64::try_from(t.unix_timestamp()) {
        Ok(at) if any => Ok(Some(at)),
        Ok(_) => Ok(None),
        Err(_) => Err(bad("too far ahead")),
    }
}

/// The name `snapshots.pattern` gives the next scheduled snapshot, among
/// the instance's snapshots `existing`: `%d` becomes one more than the
/// highest number a snapshot of this pattern has (0 for the first), so a
/// name is not given again while older ones are kept; a pattern without
/// `%d` is used as it is, and once that is taken, with `-%d` after it (as
/// LXD does). `None` when even that name is taken.
pub(crate) fn next_name<'a>(
    pattern: &str,
    existing: impl Iterator<Item = &'a str> + Clone,
) -> Option<String> {
    let name = match pattern.split_once("%d") {
        None if existing.clone().any(|n| n == pattern) => {
            return next_name(&format!("{pattern}-%d"), existing)
        }
        None => pattern.to_string(),
        Some((pre, post)) => {
            let next = existing
                .clone()
                .filter_map(|n| n.strip_prefix(pre)?.strip_suffix(post)?.parse::<u32>().ok())
                .max()
                .map_or(0, |n| n.saturating_add(1));
            format!("{pre}{next}{post}")
        }
    };
    let mut existing = existing;
    (!existing.any(|n| n == name)).then_some(name)
}

/// Checks a `snapshots.pattern`: a snapshot name (`check_name`) once
/// its one `%d`, if any, is a number.
pub(crate) fn check_pattern(
    pattern: &str,
    check_name: impl Fn(&str) -> Result<(), Error>,
) -> Result<(), Error> {
    if pattern.matches("%d").count() > 1 {
        return Err(invalid("snapshots.pattern", pattern, "at most one %d"));
    }
    check_name(&pattern.replace("%d", "0")).map_err(|_| {
        invalid(
            "snapshots.pattern",
            pattern,
            "a snapshot name, where %d stands for a number",
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a failed test should panic")]
mod tests {
    use super::*;

    /// Seconds of the UTC date and time given.
    fn at(y: i32, mo: u8, d: u8, h: u8, mi: u8) -> u64 {
        let date = time::Date::from_calendar_date(y, Month::try_from(mo).unwrap(), d).unwrap();
        let t = date.with_hms(h, mi, 0).unwrap().assume_utc();
        u64::try_from(t.unix_timestamp()).unwrap()
    }

    #[test]
    fn a_schedule_fires_in_the_minutes_it_names() {
        // 2026-11-30 is a Monday.
        let s = Schedule::parse("*/15 2-4 * * *").unwrap();
        assert!(s.fires(at(2026, 11, 30, 2, 0)));
        assert!(s.fires(at(2026, 11, 30, 4, 45) + 59));
        assert!(!s.fires(at(2026, 11, 30, 4, 46)));
        assert!(!s.fires(at(2026, 11, 30, 5, 0)));
        let daily = Schedule::parse("@daily").unwrap();
        assert!(daily.fires(at(2026, 12, 1, 0, 0)));
        assert!(!daily.fires(at(2026, 12, 1, 0, 1)));
        let both = Schedule::parse("@hourly, @weekly").unwrap();
        assert!(both.fires(at(2026, 11, 30, 7, 0)));
        // Sunday as 7, and cron's either-day rule.
        let sunday = Schedule::parse("30 6 * * 7").unwrap();
        assert!(sunday.fires(at(2026, 11, 29, 6, 30)));
        assert!(!sunday.fires(at(2026, 11, 30, 6, 30)));
        let either = Schedule::parse("0 0 1 * 1").unwrap();
        assert!(either.fires(at(2026, 11, 30, 0, 0)), "a Monday");
        assert!(either.fires(at(2026, 12, 1, 0, 0)), "the 1st, a Tuesday");
        assert!(!either.fires(at(2026, 12, 2, 0, 0)));
        assert!(!Schedule::parse("").unwrap().fires(at(2026, 1, 1, 0, 0)));
        let huge_step = Schedule::parse("0/4294967295 * * * *").unwrap();
        assert!(huge_step.fires(at(2026, 1, 1, 0, 0)));
        assert!(!huge_step.fires(at(2026, 1, 1, 0, 1)));
    }

    #[test]
    fn a_bad_schedule_is_refused() {
        for bad in [
            "* * * *",
            "* * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "5-1 * * * *",
            "1,,2 * * * *",
            "@often",
            "@daily, 0 * * * *",
            "a * * * *",
            "-1 * * * *",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn expiry_counts_calendar_units() {
        let t = at(2026, 1, 31, 12, 0);
        assert_eq!(expiry("", t).unwrap(), None);
        assert_eq!(expiry("2d", t).unwrap(), Some(t + 2 * 86_400));
        assert_eq!(
            expiry("1w 3H 5M", t).unwrap(),
            Some(t + 604_800 + 3 * 3600 + 300)
        );
        assert_eq!(expiry("1m", t).unwrap(), Some(at(2026, 2, 28, 12, 0)));
        assert_eq!(
            expiry("1y", at(2028, 2, 29, 0, 0)).unwrap(),
            Some(at(2029, 2, 28, 0, 0))
        );
        for bad in ["d", "2", "2x", "-1d", "1.5d", "99999999999d", "4294967295y"] {
            assert!(expiry(bad, t).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_pattern_counts_on_from_the_highest_number() {
        let names = ["snap0", "snap4", "nightly", "snapx", "snap-1"];
        let it = || names.iter().copied();
        assert_eq!(next_name("snap%d", it()).as_deref(), Some("snap5"));
        assert_eq!(next_name("daily-%d", it()).as_deref(), Some("daily-0"));
        assert_eq!(
            next_name("n%dly", ["n7ly"].into_iter()).as_deref(),
            Some("n8ly")
        );
        assert_eq!(next_name("nightly", it()).as_deref(), Some("nightly-0"));
        assert_eq!(
            next_name("nightly", ["nightly", "nightly-0"].into_iter()).as_deref(),
            Some("nightly-1")
        );
        assert_eq!(next_name("weekly", it()).as_deref(), Some("weekly"));
        let plain = |n: &str| match n.contains(['/', ' ', '.']) || n.is_empty() {
            true => Err(Error::Invalid(n.into())),
            false => Ok(()),
        };
        assert!(check_pattern("auto-%d", plain).is_ok());
        assert!(check_pattern("weekly", plain).is_ok());
        for bad in ["%d%d", "a/%d", "", "%d x", ".%d"] {
            assert!(check_pattern(bad, plain).is_err(), "{bad:?}");
        }
    }
}
