//! When a backup schedule next runs.
//!
//! Schedules are kept in local terms (a wall-clock time in an IANA zone) so that a 03:00
//! backup stays at 03:00 across DST changes; every instant handed out is UTC.
//!
//! The run for a local date-time `L` is the first instant at which the zone's wall clock
//! reads `L` or later: a time skipped by a spring-forward gap runs when the gap ends, and a
//! time repeated by a fall-back runs once, at its first occurrence. That instant never
//! decreases as `L` grows, which lets [`next_run_after`] stop at the first run date whose
//! run is still ahead.

use chrono::{DateTime, Datelike, Days, LocalResult, NaiveDate, NaiveTime, Offset, TimeZone, Utc};
use chrono_tz::{GapInfo, Tz};

use crate::model::settings::Frequency;

/// A user's schedule: local time of day in a time zone, anchored on a local date.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub frequency: Frequency,
    /// Minute precision (seconds always 0).
    pub time: NaiveTime,
    pub timezone: Tz,
    /// The local date of the schedule's first run. Weekly schedules run on its weekday,
    /// monthly ones on its day of the month (clamped to the month's last day). Ignored for daily.
    pub anchor: NaiveDate,
}

/// The anchor of a new schedule created (or whose frequency/time/zone changed) at `now`:
/// today in `timezone` if today's run at `time` is still strictly ahead of `now`, else tomorrow.
///
/// "Today's run" follows the same DST rules as [`next_run_after`], so a schedule anchored
/// here next runs on its anchor date.
pub fn first_anchor(time: NaiveTime, timezone: Tz, now: DateTime<Utc>) -> NaiveDate {
    let today = local_date(timezone, now);
    match run_at(timezone, today, time) {
        Some(run) if run > now => today,
        // Saturating at the last representable date is all that can be done there.
        _ => today.succ_opt().unwrap_or(today),
    }
}

/// The first run instant strictly after `after`, in UTC.
///
/// Saturates to [`DateTime::<Utc>::MAX_UTC`] when no later run is representable.
pub fn next_run_after(schedule: &Schedule, after: DateTime<Utc>) -> DateTime<Utc> {
    try_next_run_after(schedule, after).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The run instants in the half-open range (`from`, `to`] in order, at most `limit` of them
/// (the slots a server missed while it was down).
pub fn runs_between(
    schedule: &Schedule,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: usize,
) -> Vec<DateTime<Utc>> {
    let mut runs = Vec::new();
    let mut cursor = from;
    while runs.len() < limit {
        match try_next_run_after(schedule, cursor) {
            Some(run) if run <= to => {
                runs.push(run);
                cursor = run;
            }
            _ => break,
        }
    }
    runs
}

/// [`next_run_after`], or `None` past the end of representable time.
///
/// Runs never move earlier as the local date grows (see the module docs), so runs on dates
/// before `after`'s local date are not ahead of it, and the first run ahead of it while
/// walking run dates upward from there is the earliest. The walk takes a few steps at most,
/// as no zone turns its clocks back by a whole day.
fn try_next_run_after(schedule: &Schedule, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let today = local_date(schedule.timezone, after);
    let mut date = run_date_on_or_after(schedule, today)?;
    loop {
        if let Some(run) = run_at(schedule.timezone, date, schedule.time)
            && run > after
        {
            return Some(run);
        }
        date = run_date_on_or_after(schedule, date.succ_opt()?)?;
    }
}

/// The first local date on or after `date` on which `schedule` runs, computed arithmetically.
fn run_date_on_or_after(schedule: &Schedule, date: NaiveDate) -> Option<NaiveDate> {
    let anchor = schedule.anchor;
    match schedule.frequency {
        Frequency::Daily => Some(date),
        Frequency::Weekly => {
            let date = date.max(anchor);
            let into_week = date.signed_duration_since(anchor).num_days() % 7;
            date.checked_add_days(Days::new(((7 - into_week) % 7).unsigned_abs()))
        }
        Frequency::Monthly => {
            let date = date.max(anchor);
            let this_month = clamped_day(date.year(), date.month(), anchor.day())?;
            if this_month >= date {
                return Some(this_month);
            }
            let (year, month) = match date.month() {
                12 => (date.year() + 1, 1),
                month => (date.year(), month + 1),
            };
            clamped_day(year, month, anchor.day())
        }
    }
}

/// The date the wall clock in `tz` shows at `at`.
///
/// Where that date is not representable (within a day of the ends of time) the UTC date
/// stands in: at the start of time it is the first date there is, at the end it is a day
/// early, so a search from it misses nothing either way.
fn local_date(tz: Tz, at: DateTime<Utc>) -> NaiveDate {
    let offset = tz.offset_from_utc_datetime(&at.naive_utc()).fix();
    at.naive_utc()
        .checked_add_offset(offset)
        .map_or(at.date_naive(), |local| local.date())
}

/// `day` of the given month, or the month's last day when it is shorter.
fn clamped_day(year: i32, month: u32, day: u32) -> Option<NaiveDate> {
    (1..=day)
        .rev()
        .find_map(|d| NaiveDate::from_ymd_opt(year, month, d))
}

/// The first instant at which the wall clock in `tz` reads `date` at `time` or later.
///
/// `None` only where the instant is not representable.
fn run_at(tz: Tz, date: NaiveDate, time: NaiveTime) -> Option<DateTime<Utc>> {
    let local = date.and_time(time);
    match tz.from_local_datetime(&local) {
        LocalResult::Single(run) => Some(run.to_utc()),
        // The earlier occurrence, so a fall-back cannot make a schedule run twice.
        LocalResult::Ambiguous(earliest, _) => Some(earliest.to_utc()),
        // Skipped by a spring-forward gap: chrono-tz knows the exact instant the gap ends.
        LocalResult::None => GapInfo::new(&local, &tz)?.end.map(|end| end.to_utc()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::settings::{format_backup_time, parse_backup_time};
    use chrono::{NaiveDateTime, TimeDelta, Weekday};

    fn zone(name: &str) -> Tz {
        name.parse().expect("known IANA zone")
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("valid date")
    }

    fn hm(s: &str) -> NaiveTime {
        parse_backup_time(s).expect("valid HH:MM")
    }

    fn utc(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, 0)
            .single()
            .expect("valid UTC instant")
    }

    fn schedule(frequency: Frequency, time: &str, tz: &str, anchor: NaiveDate) -> Schedule {
        Schedule {
            frequency,
            time: hm(time),
            timezone: zone(tz),
            anchor,
        }
    }

    fn daily(time: &str, tz: &str) -> Schedule {
        // Daily schedules ignore the anchor; a far-future one proves it.
        schedule(Frequency::Daily, time, tz, date(2099, 1, 1))
    }

    fn local(run: DateTime<Utc>, tz: Tz) -> NaiveDateTime {
        run.with_timezone(&tz).naive_local()
    }

    fn offset_at(tz: Tz, at: DateTime<Utc>) -> i32 {
        tz.offset_from_utc_datetime(&at.naive_utc())
            .fix()
            .local_minus_utc()
    }

    /// A UTC-offset change of a zone: its instant and the offsets (seconds) either side.
    #[derive(Debug, PartialEq, Eq)]
    struct Transition {
        at: DateTime<Utc>,
        before: i32,
        after: i32,
    }

    /// The offset changes of `tz` during `year` (UTC), as chrono-tz reports them: scanned
    /// hour by hour, then narrowed to the second.
    fn transitions(tz: Tz, year: i32) -> Vec<Transition> {
        let mut found = Vec::new();
        let mut hour = utc(year, 1, 1, 0, 0);
        while hour.year() == year {
            let next = hour + TimeDelta::hours(1);
            let (before, after) = (offset_at(tz, hour), offset_at(tz, next));
            if before != after {
                let (mut lo, mut hi) = (hour, next);
                while hi - lo > TimeDelta::seconds(1) {
                    let mid = lo + (hi - lo) / 2;
                    if offset_at(tz, mid) == before {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                found.push(Transition {
                    at: hi,
                    before,
                    after,
                });
            }
            hour = next;
        }
        found
    }

    fn transition(at: DateTime<Utc>, before_minutes: i32, after_minutes: i32) -> Transition {
        Transition {
            at,
            before: before_minutes * 60,
            after: after_minutes * 60,
        }
    }

    /// The earliest instant the wall clock reads `local`, or for a skipped `local` the first
    /// minute after it that does exist: a deliberately naive model of the DST rules.
    fn oracle_run_at(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
        (0..48 * 60)
            .find_map(|minutes| {
                match tz.from_local_datetime(&(local + TimeDelta::minutes(minutes))) {
                    LocalResult::Single(run) => Some(run),
                    LocalResult::Ambiguous(a, b) => Some(a.min(b)),
                    LocalResult::None => None,
                }
            })
            .expect("every gap ends within two days")
            .to_utc()
    }

    fn oracle_is_run_date(s: &Schedule, d: NaiveDate) -> bool {
        match s.frequency {
            Frequency::Daily => true,
            Frequency::Weekly => d >= s.anchor && d.weekday() == s.anchor.weekday(),
            Frequency::Monthly => {
                d >= s.anchor && d.day() == s.anchor.day().min(u32::from(d.num_days_in_month()))
            }
        }
    }

    /// Brute force: every run date from a few days before `after`'s local date up to the
    /// first one at least three days past it (no DST shift moves a run by that much),
    /// resolved independently; the earliest run strictly after `after`.
    fn oracle_next_run_after(s: &Schedule, after: DateTime<Utc>) -> DateTime<Utc> {
        let today = local(after, s.timezone).date();
        let mut runs = Vec::new();
        for d in (today - TimeDelta::days(3)).iter_days() {
            if oracle_is_run_date(s, d) {
                runs.push(oracle_run_at(s.timezone, d.and_time(s.time)));
                if d >= today + TimeDelta::days(3) {
                    break;
                }
            }
        }
        runs.into_iter()
            .filter(|run| *run > after)
            .min()
            .expect("the last candidate is ahead")
    }

    fn local_dates(runs: &[DateTime<Utc>], tz: Tz) -> Vec<NaiveDate> {
        runs.iter().map(|run| local(*run, tz).date()).collect()
    }

    #[test]
    fn parse_accepts_exact_hh_mm() {
        for (s, h, m) in [
            ("00:00", 0, 0),
            ("23:59", 23, 59),
            ("03:00", 3, 0),
            ("12:07", 12, 7),
        ] {
            assert_eq!(
                parse_backup_time(s),
                Ok(NaiveTime::from_hms_opt(h, m, 0).expect("valid"))
            );
        }
    }

    #[test]
    fn parse_rejects_anything_else_with_a_helpful_message() {
        for s in [
            "24:00",
            "3:00",
            "03:60",
            "0300",
            " 03:00",
            "03:00 ",
            "",
            "0a:00",
            "٠٣:٠٠",
            "03:00:00",
            "+3:00",
            "03:0",
            "-1:00",
            "03-00",
            "03:-1",
            "３:00",
            "0３:00",
            "99:99",
            ":0300",
        ] {
            assert_eq!(
                parse_backup_time(s),
                Err("must be HH:MM with hours 00-23 and minutes 00-59"),
                "{s:?} should be rejected"
            );
        }
    }

    #[test]
    fn format_round_trips_every_minute_of_the_day() {
        assert_eq!(format_backup_time(hm("03:05")), "03:05");
        assert_eq!(
            format_backup_time(NaiveTime::from_hms_opt(0, 0, 0).expect("valid")),
            "00:00"
        );
        for minute in 0..24 * 60 {
            let t = NaiveTime::from_hms_opt(minute / 60, minute % 60, 0).expect("valid");
            assert_eq!(parse_backup_time(&format_backup_time(t)), Ok(t));
        }
    }

    #[test]
    fn daily_runs_today_while_ahead_else_tomorrow() {
        let s = daily("03:00", "UTC");
        assert_eq!(
            next_run_after(&s, utc(2026, 6, 10, 2, 59)),
            utc(2026, 6, 10, 3, 0)
        );
        // Strictly after: a run exactly at `after` is already taken.
        assert_eq!(
            next_run_after(&s, utc(2026, 6, 10, 3, 0)),
            utc(2026, 6, 11, 3, 0)
        );
        assert_eq!(
            next_run_after(&s, utc(2026, 6, 10, 23, 59)),
            utc(2026, 6, 11, 3, 0)
        );
        // Across a year end.
        assert_eq!(
            next_run_after(&s, utc(2026, 12, 31, 4, 0)),
            utc(2027, 1, 1, 3, 0)
        );

        // In a zone ahead of UTC the local date, not the UTC one, decides "today".
        let s = daily("09:00", "Pacific/Auckland"); // NZST, UTC+12 in June
        assert_eq!(
            next_run_after(&s, utc(2026, 6, 10, 20, 0)),
            utc(2026, 6, 10, 21, 0)
        );
        assert_eq!(
            next_run_after(&s, utc(2026, 6, 10, 21, 0)),
            utc(2026, 6, 11, 21, 0)
        );
    }

    #[test]
    fn daily_ignores_the_anchor() {
        let s = daily("03:00", "UTC");
        assert!(s.anchor > date(2026, 6, 11));
        assert_eq!(
            next_run_after(&s, utc(2026, 6, 10, 12, 0)),
            utc(2026, 6, 11, 3, 0)
        );
    }

    #[test]
    fn weekly_stays_on_the_anchor_weekday() {
        let anchor = date(2026, 1, 7); // a Wednesday
        assert_eq!(anchor.weekday(), Weekday::Wed);
        let s = schedule(Frequency::Weekly, "22:15", "America/New_York", anchor);
        let tz = s.timezone;

        let mut after = utc(2026, 1, 1, 0, 0);
        let mut previous: Option<NaiveDateTime> = None;
        for _ in 0..110 {
            let run = next_run_after(&s, after);
            let at = local(run, tz);
            assert_eq!(at.weekday(), Weekday::Wed);
            assert_eq!(
                at.time(),
                hm("22:15"),
                "22:15 exists on every date in New York"
            );
            match previous {
                None => assert_eq!(at.date(), anchor),
                Some(prev) => assert_eq!(at.date() - prev.date(), TimeDelta::days(7)),
            }
            previous = Some(at);
            after = run;
        }

        // Mid-week, and on the run day itself before and after the run.
        let s = schedule(Frequency::Weekly, "03:00", "UTC", anchor);
        assert_eq!(
            next_run_after(&s, utc(2026, 3, 2, 12, 0)),
            utc(2026, 3, 4, 3, 0)
        );
        assert_eq!(
            next_run_after(&s, utc(2026, 3, 4, 2, 0)),
            utc(2026, 3, 4, 3, 0)
        );
        assert_eq!(
            next_run_after(&s, utc(2026, 3, 4, 3, 0)),
            utc(2026, 3, 11, 3, 0)
        );
    }

    #[test]
    fn monthly_on_the_31st_clamps_to_short_months_and_returns() {
        let s = schedule(
            Frequency::Monthly,
            "03:00",
            "Europe/London",
            date(2027, 1, 31),
        );
        let runs = runs_between(&s, utc(2026, 12, 1, 0, 0), utc(2028, 3, 31, 12, 0), 100);
        let expected = [
            (2027, 1, 31),
            (2027, 2, 28),
            (2027, 3, 31),
            (2027, 4, 30),
            (2027, 5, 31),
            (2027, 6, 30),
            (2027, 7, 31),
            (2027, 8, 31),
            (2027, 9, 30),
            (2027, 10, 31),
            (2027, 11, 30),
            (2027, 12, 31),
            (2028, 1, 31),
            (2028, 2, 29),
            (2028, 3, 31),
        ];
        let expected: Vec<_> = expected.iter().map(|&(y, m, d)| date(y, m, d)).collect();
        assert_eq!(local_dates(&runs, s.timezone), expected);
        for run in &runs {
            assert_eq!(local(*run, s.timezone).time(), hm("03:00"));
        }
        // 03:00 is GMT in winter and BST in summer.
        assert_eq!(runs[0], utc(2027, 1, 31, 3, 0));
        assert_eq!(runs[2], utc(2027, 3, 31, 2, 0));
    }

    #[test]
    fn monthly_on_the_29th_and_30th() {
        let s = schedule(Frequency::Monthly, "12:00", "UTC", date(2027, 1, 29));
        let runs = runs_between(&s, utc(2027, 1, 1, 0, 0), utc(2028, 3, 31, 0, 0), 100);
        let dates = local_dates(&runs, s.timezone);
        assert_eq!(
            &dates[..3],
            &[date(2027, 1, 29), date(2027, 2, 28), date(2027, 3, 29)]
        );
        assert_eq!(
            &dates[12..],
            &[date(2028, 1, 29), date(2028, 2, 29), date(2028, 3, 29)]
        );
        assert!(
            dates
                .iter()
                .skip(2)
                .all(|d| d.day() == 29 || d.month() == 2)
        );

        let s = schedule(Frequency::Monthly, "12:00", "UTC", date(2027, 1, 30));
        let runs = runs_between(&s, utc(2027, 1, 1, 0, 0), utc(2028, 4, 30, 12, 0), 100);
        let dates = local_dates(&runs, s.timezone);
        assert_eq!(
            &dates[..4],
            &[
                date(2027, 1, 30),
                date(2027, 2, 28),
                date(2027, 3, 30),
                date(2027, 4, 30)
            ]
        );
        assert_eq!(
            &dates[13..],
            &[date(2028, 2, 29), date(2028, 3, 30), date(2028, 4, 30)]
        );
        assert_eq!(dates.len(), 16);
    }

    #[test]
    fn monthly_after_this_months_run_goes_to_next_month() {
        let s = schedule(Frequency::Monthly, "03:00", "UTC", date(2026, 1, 15));
        assert_eq!(
            next_run_after(&s, utc(2026, 5, 15, 2, 0)),
            utc(2026, 5, 15, 3, 0)
        );
        assert_eq!(
            next_run_after(&s, utc(2026, 5, 15, 3, 0)),
            utc(2026, 6, 15, 3, 0)
        );
        assert_eq!(
            next_run_after(&s, utc(2026, 12, 20, 0, 0)),
            utc(2027, 1, 15, 3, 0)
        );
    }

    #[test]
    fn nothing_runs_before_a_future_anchor() {
        // 2026-07-01 and 07-08 are Wednesdays too, but precede the anchor.
        let s = schedule(Frequency::Weekly, "03:00", "UTC", date(2026, 7, 15));
        assert_eq!(date(2026, 7, 1).weekday(), Weekday::Wed);
        assert_eq!(
            next_run_after(&s, utc(2026, 6, 30, 0, 0)),
            utc(2026, 7, 15, 3, 0)
        );
        assert!(runs_between(&s, utc(2026, 6, 1, 0, 0), utc(2026, 7, 14, 0, 0), 10).is_empty());

        let s = schedule(Frequency::Monthly, "03:00", "UTC", date(2026, 9, 10));
        assert_eq!(
            next_run_after(&s, utc(2026, 6, 20, 0, 0)),
            utc(2026, 9, 10, 3, 0)
        );
        assert_eq!(
            next_run_after(&s, utc(2026, 9, 10, 3, 0)),
            utc(2026, 10, 10, 3, 0)
        );

        // An anchor on the 31st in a month that has one is not clamped in its own month.
        let s = schedule(Frequency::Monthly, "03:00", "UTC", date(2026, 8, 31));
        assert_eq!(
            next_run_after(&s, utc(2026, 2, 1, 0, 0)),
            utc(2026, 8, 31, 3, 0)
        );
        assert_eq!(
            next_run_after(&s, utc(2026, 8, 31, 3, 0)),
            utc(2026, 9, 30, 3, 0)
        );
    }

    #[test]
    fn dst_transition_dates_come_from_chrono_tz() {
        assert_eq!(
            transitions(zone("Europe/London"), 2026),
            [
                transition(utc(2026, 3, 29, 1, 0), 0, 60),
                transition(utc(2026, 10, 25, 1, 0), 60, 0),
            ]
        );
        assert_eq!(
            transitions(zone("Europe/London"), 2027),
            [
                transition(utc(2027, 3, 28, 1, 0), 0, 60),
                transition(utc(2027, 10, 31, 1, 0), 60, 0),
            ]
        );
        assert_eq!(
            transitions(zone("America/New_York"), 2026),
            [
                transition(utc(2026, 3, 8, 7, 0), -300, -240),
                transition(utc(2026, 11, 1, 6, 0), -240, -300),
            ]
        );
        assert_eq!(
            transitions(zone("America/New_York"), 2027),
            [
                transition(utc(2027, 3, 14, 7, 0), -300, -240),
                transition(utc(2027, 11, 7, 6, 0), -240, -300),
            ]
        );
        // Lord Howe shifts by 30 minutes, at 02:00 local either way.
        assert_eq!(
            transitions(zone("Australia/Lord_Howe"), 2026),
            [
                transition(utc(2026, 4, 4, 15, 0), 660, 630),
                transition(utc(2026, 10, 3, 15, 30), 630, 660),
            ]
        );
        assert_eq!(
            transitions(zone("Australia/Lord_Howe"), 2027),
            [
                transition(utc(2027, 4, 3, 15, 0), 660, 630),
                transition(utc(2027, 10, 2, 15, 30), 630, 660),
            ]
        );
    }

    #[test]
    fn london_spring_gap_runs_when_the_gap_ends() {
        // 2026-03-29: 01:00 GMT becomes 02:00 BST at 01:00 UTC.
        let s = daily("01:30", "Europe/London");
        let run = next_run_after(&s, utc(2026, 3, 28, 12, 0));
        assert_eq!(run, utc(2026, 3, 29, 1, 0));
        assert_eq!(
            local(run, s.timezone),
            date(2026, 3, 29).and_time(hm("02:00"))
        );
        assert_eq!(next_run_after(&s, run), utc(2026, 3, 30, 0, 30));
        // The gap's first minute and the first minute after it map to the same instant.
        assert_eq!(
            next_run_after(&daily("01:00", "Europe/London"), utc(2026, 3, 29, 0, 0)),
            utc(2026, 3, 29, 1, 0)
        );
        assert_eq!(
            next_run_after(&daily("02:00", "Europe/London"), utc(2026, 3, 29, 0, 0)),
            utc(2026, 3, 29, 1, 0)
        );
    }

    #[test]
    fn london_fall_back_runs_once_at_the_first_occurrence() {
        // 2026-10-25: 01:00-02:00 happens in BST (00:00-01:00 UTC), then again in GMT.
        let s = daily("01:30", "Europe/London");
        let first = next_run_after(&s, utc(2026, 10, 24, 12, 0));
        assert_eq!(first, utc(2026, 10, 25, 0, 30));
        // Not 01:30 UTC, the second 01:30 of the same day.
        assert_eq!(next_run_after(&s, first), utc(2026, 10, 26, 1, 30));
        assert_eq!(
            next_run_after(&s, utc(2026, 10, 25, 1, 0)),
            utc(2026, 10, 26, 1, 30)
        );
        assert_eq!(
            runs_between(&s, utc(2026, 10, 24, 12, 0), utc(2026, 10, 27, 12, 0), 10),
            [
                utc(2026, 10, 25, 0, 30),
                utc(2026, 10, 26, 1, 30),
                utc(2026, 10, 27, 1, 30)
            ]
        );
        // The edges of the repeated hour.
        assert_eq!(
            next_run_after(&daily("01:00", "Europe/London"), utc(2026, 10, 24, 12, 0)),
            utc(2026, 10, 25, 0, 0)
        );
        assert_eq!(
            next_run_after(&daily("02:00", "Europe/London"), utc(2026, 10, 24, 12, 0)),
            utc(2026, 10, 25, 2, 0)
        );
    }

    #[test]
    fn new_york_gap_and_overlap() {
        // 2026-03-08: 02:00 EST becomes 03:00 EDT at 07:00 UTC.
        let s = daily("02:30", "America/New_York");
        let run = next_run_after(&s, utc(2026, 3, 7, 12, 0));
        assert_eq!(run, utc(2026, 3, 8, 7, 0));
        assert_eq!(
            local(run, s.timezone),
            date(2026, 3, 8).and_time(hm("03:00"))
        );
        assert_eq!(next_run_after(&s, run), utc(2026, 3, 9, 6, 30));

        // A weekly Sunday schedule keeps its weekday through the gap.
        let s = schedule(
            Frequency::Weekly,
            "02:30",
            "America/New_York",
            date(2026, 3, 1),
        );
        assert_eq!(
            runs_between(&s, utc(2026, 2, 28, 0, 0), utc(2026, 3, 16, 0, 0), 10),
            [
                utc(2026, 3, 1, 7, 30),
                utc(2026, 3, 8, 7, 0),
                utc(2026, 3, 15, 6, 30)
            ]
        );

        // 2026-11-01: 01:00-02:00 happens in EDT (05:00-06:00 UTC), then in EST.
        let s = daily("01:30", "America/New_York");
        let first = next_run_after(&s, utc(2026, 10, 31, 12, 0));
        assert_eq!(first, utc(2026, 11, 1, 5, 30));
        assert_eq!(next_run_after(&s, first), utc(2026, 11, 2, 6, 30));
        assert_eq!(
            next_run_after(&s, utc(2026, 11, 1, 6, 15)),
            utc(2026, 11, 2, 6, 30)
        );
    }

    #[test]
    fn lord_howe_half_hour_gap_and_overlap() {
        // 2026-10-04: 02:00 +10:30 becomes 02:30 +11 at 15:30 UTC the day before.
        let s = daily("02:15", "Australia/Lord_Howe");
        let run = next_run_after(&s, utc(2026, 10, 3, 0, 0));
        assert_eq!(run, utc(2026, 10, 3, 15, 30));
        assert_eq!(
            local(run, s.timezone),
            date(2026, 10, 4).and_time(hm("02:30"))
        );
        assert_eq!(next_run_after(&s, run), utc(2026, 10, 4, 15, 15));
        // Just outside the gap nothing moves.
        assert_eq!(
            next_run_after(
                &daily("01:59", "Australia/Lord_Howe"),
                utc(2026, 10, 3, 0, 0)
            ),
            utc(2026, 10, 3, 15, 29)
        );
        assert_eq!(
            next_run_after(
                &daily("02:30", "Australia/Lord_Howe"),
                utc(2026, 10, 3, 0, 0)
            ),
            utc(2026, 10, 3, 15, 30)
        );

        // 2026-04-05: 01:30-02:00 happens at +11 (14:30-15:00 UTC), then at +10:30.
        let s = daily("01:45", "Australia/Lord_Howe");
        let first = next_run_after(&s, utc(2026, 4, 4, 0, 0));
        assert_eq!(first, utc(2026, 4, 4, 14, 45));
        // The second 01:45 (15:15 UTC) is skipped: next is the following local day.
        assert_eq!(next_run_after(&s, first), utc(2026, 4, 5, 15, 15));
        assert_eq!(
            local(utc(2026, 4, 5, 15, 15), s.timezone).date(),
            date(2026, 4, 6)
        );
        assert_eq!(
            next_run_after(&s, utc(2026, 4, 4, 15, 0)),
            utc(2026, 4, 5, 15, 15)
        );
    }

    #[test]
    fn samoa_skipped_day_runs_once_when_it_ends() {
        // Samoa went from 2011-12-29 24:00 (-10) straight to 2011-12-31 00:00 (+14).
        let apia = zone("Pacific/Apia");
        let skip = utc(2011, 12, 30, 10, 0);
        assert_eq!(offset_at(apia, skip - TimeDelta::seconds(1)), -10 * 3600);
        assert_eq!(offset_at(apia, skip), 14 * 3600);
        assert_eq!(local(skip, apia), date(2011, 12, 31).and_time(hm("00:00")));

        let s = daily("12:00", "Pacific/Apia");
        assert_eq!(
            runs_between(&s, utc(2011, 12, 29, 12, 0), utc(2011, 12, 31, 23, 0), 10),
            [
                utc(2011, 12, 29, 22, 0),
                skip,
                utc(2011, 12, 30, 22, 0),
                utc(2011, 12, 31, 22, 0)
            ]
        );
        // Dec 30 00:00 and Dec 31 00:00 both map to the end of the skip: one run, not two.
        let s = daily("00:00", "Pacific/Apia");
        assert_eq!(
            runs_between(&s, utc(2011, 12, 29, 12, 0), utc(2011, 12, 31, 23, 0), 10),
            [skip, utc(2011, 12, 31, 10, 0)]
        );
        // A Friday schedule loses its Friday and runs at the start of Saturday instead.
        let s = schedule(
            Frequency::Weekly,
            "12:00",
            "Pacific/Apia",
            date(2011, 12, 23),
        );
        assert_eq!(
            runs_between(&s, utc(2011, 12, 24, 0, 0), utc(2012, 1, 7, 0, 0), 10),
            [skip, utc(2012, 1, 5, 22, 0)]
        );
    }

    #[test]
    fn matches_a_brute_force_model_around_every_transition() {
        let zones = [
            ("Europe/London", 2026),
            ("America/New_York", 2026),
            ("Australia/Lord_Howe", 2026),
            ("Pacific/Auckland", 2026),
            // Gaps and overlaps at or across local midnight.
            ("America/Havana", 2026),
            ("Africa/Cairo", 2026),
            ("America/Santiago", 2026),
        ];
        let times = [
            "00:00", "00:30", "01:00", "01:30", "01:45", "02:00", "02:15", "02:30", "03:00",
            "23:00", "23:30",
        ];
        let mut checked = 0;
        for (name, year) in zones {
            let tz = zone(name);
            let found = transitions(tz, year);
            assert!(found.len() >= 2, "{name} has DST in {year}");
            for t in found {
                let one_second = TimeDelta::seconds(1);
                // Dates around the change, as anchors that make every frequency run there.
                let before = local(t.at - one_second, tz).date();
                let dates = [before, before + TimeDelta::days(1), local(t.at, tz).date()];
                let afters: Vec<_> = (-60..=60)
                    .map(|k| t.at + TimeDelta::minutes(29 * k))
                    .chain([t.at - one_second, t.at, t.at + one_second])
                    .collect();
                for time in times {
                    let mut schedules = vec![daily(time, name)];
                    for d in dates {
                        let weekly = d - TimeDelta::days(14);
                        schedules.push(schedule(Frequency::Weekly, time, name, weekly));
                        schedules.push(schedule(Frequency::Weekly, time, name, d));
                        schedules.push(schedule(Frequency::Monthly, time, name, d));
                    }
                    for s in &schedules {
                        for &after in &afters {
                            let expected = oracle_next_run_after(s, after);
                            assert_eq!(next_run_after(s, after), expected, "{s:?} after {after}");
                            checked += 1;
                        }
                    }
                    // A schedule anchored by first_anchor runs on its anchor date.
                    for &now in &afters {
                        let anchor = first_anchor(hm(time), tz, now);
                        let first = oracle_run_at(tz, anchor.and_time(hm(time)));
                        for frequency in [Frequency::Daily, Frequency::Weekly, Frequency::Monthly] {
                            let s = schedule(frequency, time, name, anchor);
                            assert_eq!(next_run_after(&s, now), first, "{s:?} created at {now}");
                        }
                    }
                }
            }
        }
        assert!(checked > 100_000);
    }

    #[test]
    fn runs_are_strictly_after_and_none_is_skipped() {
        let s = schedule(
            Frequency::Weekly,
            "02:30",
            "America/New_York",
            date(2026, 1, 4),
        );
        let runs = runs_between(&s, utc(2026, 1, 1, 0, 0), utc(2028, 1, 1, 0, 0), 1000);
        assert_eq!(runs.len(), 104);
        for pair in runs.windows(2) {
            assert!(pair[0] < pair[1]);
            assert_eq!(next_run_after(&s, pair[0]), pair[1]);
            assert_eq!(next_run_after(&s, pair[1] - TimeDelta::seconds(1)), pair[1]);
        }
    }

    #[test]
    fn runs_between_lists_missed_slots_up_to_the_limit() {
        // Down from noon on May 1st to noon on May 6th: five 03:00 BST runs were missed.
        let s = daily("03:00", "Europe/London");
        let (from, to) = (utc(2026, 5, 1, 12, 0), utc(2026, 5, 6, 12, 0));
        let all: Vec<_> = (2..=6).map(|d| utc(2026, 5, d, 2, 0)).collect();
        assert_eq!(runs_between(&s, from, to, 10), all);
        assert_eq!(runs_between(&s, from, to, 3), &all[..3]);
        assert!(runs_between(&s, from, to, 0).is_empty());
        // (from, to]: a run at `from` was not missed, one at `to` was.
        assert_eq!(runs_between(&s, all[0], all[4], 10), &all[1..]);
        assert!(runs_between(&s, to, from, 10).is_empty());
        assert!(runs_between(&s, from, from, 10).is_empty());

        // Thirty days down misses four or five weekly slots.
        let s = schedule(Frequency::Weekly, "03:00", "UTC", date(2026, 1, 7));
        let missed = runs_between(&s, utc(2026, 4, 1, 12, 0), utc(2026, 5, 1, 12, 0), 100);
        assert_eq!(
            missed,
            [8, 15, 22, 29]
                .map(|d| utc(2026, 4, d, 3, 0))
                .into_iter()
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn first_anchor_is_today_only_while_todays_run_is_ahead() {
        let tz = zone("UTC");
        let t = hm("03:00");
        assert_eq!(
            first_anchor(t, tz, utc(2026, 6, 10, 2, 59)),
            date(2026, 6, 10)
        );
        assert_eq!(
            first_anchor(t, tz, utc(2026, 6, 10, 3, 0)),
            date(2026, 6, 11)
        );
        assert_eq!(
            first_anchor(t, tz, utc(2026, 6, 10, 3, 1)),
            date(2026, 6, 11)
        );
        assert_eq!(
            first_anchor(t, tz, utc(2026, 12, 31, 4, 0)),
            date(2027, 1, 1)
        );
    }

    #[test]
    fn first_anchor_uses_the_local_date() {
        // 20:00 UTC on June 10th is 08:00 on June 11th in Auckland (NZST, +12).
        let auckland = zone("Pacific/Auckland");
        let now = utc(2026, 6, 10, 20, 0);
        assert_eq!(first_anchor(hm("09:00"), auckland, now), date(2026, 6, 11));
        assert_eq!(first_anchor(hm("07:00"), auckland, now), date(2026, 6, 12));

        // 03:00 UTC on June 11th is 20:00 on June 10th in Los Angeles (PDT, -7).
        let los_angeles = zone("America/Los_Angeles");
        let now = utc(2026, 6, 11, 3, 0);
        assert_eq!(
            first_anchor(hm("21:00"), los_angeles, now),
            date(2026, 6, 10)
        );
        assert_eq!(
            first_anchor(hm("19:00"), los_angeles, now),
            date(2026, 6, 11)
        );
    }

    #[test]
    fn first_anchor_follows_the_dst_rules() {
        let london = zone("Europe/London");
        let t = hm("01:30");
        // Today's 01:30 falls in the gap and runs at 01:00 UTC.
        assert_eq!(
            first_anchor(t, london, utc(2026, 3, 29, 0, 59)),
            date(2026, 3, 29)
        );
        assert_eq!(
            first_anchor(t, london, utc(2026, 3, 29, 1, 0)),
            date(2026, 3, 30)
        );
        // Between the two 01:30s of the fall-back day, today's run has already happened.
        assert_eq!(
            first_anchor(t, london, utc(2026, 10, 25, 0, 29)),
            date(2026, 10, 25)
        );
        assert_eq!(
            first_anchor(t, london, utc(2026, 10, 25, 0, 45)),
            date(2026, 10, 26)
        );
    }

    #[test]
    fn extreme_inputs_do_not_panic() {
        let instants = [
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MIN_UTC + TimeDelta::days(2),
            utc(2026, 6, 10, 12, 0),
            DateTime::<Utc>::MAX_UTC - TimeDelta::days(2),
            DateTime::<Utc>::MAX_UTC,
        ];
        let anchors = [NaiveDate::MIN, date(2026, 1, 31), NaiveDate::MAX];
        let zones = ["UTC", "Pacific/Kiritimati", "Etc/GMT+12", "Europe/London"];
        for name in zones {
            for time in ["00:00", "23:59"] {
                for &now in &instants {
                    let anchor = first_anchor(hm(time), zone(name), now);
                    assert!((anchor - now.date_naive()).num_days().abs() <= 2);
                }
                for frequency in [Frequency::Daily, Frequency::Weekly, Frequency::Monthly] {
                    for anchor in anchors {
                        let s = schedule(frequency, time, name, anchor);
                        for &after in &instants {
                            let next = next_run_after(&s, after);
                            assert!(next > after || next == DateTime::<Utc>::MAX_UTC);
                            let runs = runs_between(&s, after, DateTime::<Utc>::MAX_UTC, 3);
                            assert!(runs.len() <= 3);
                            assert!(runs.windows(2).all(|w| w[0] < w[1]));
                            assert!(runs.iter().all(|run| *run > after));
                        }
                    }
                }
            }
        }
        // Nothing is left after the end of time.
        let s = daily("00:00", "UTC");
        assert_eq!(
            next_run_after(&s, DateTime::<Utc>::MAX_UTC),
            DateTime::<Utc>::MAX_UTC
        );
    }
}
