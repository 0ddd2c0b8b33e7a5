//! Property-based tests (fuzzing) of the parsers and computations that take
//! untrusted or wide-ranging input: the custom backup file name validator,
//! the `HH:MM` time parser, page-token decoding and the next-run computation.
//!
//! Each property runs proptest's default 256 cases in the normal test
//! command (`cargo test -p backup-server --test properties`, a few seconds).
//! A longer fuzzing session only raises the case count, e.g.:
//!
//! ```text
//! PROPTEST_CASES=100000 cargo test --release -p backup-server --test properties
//! ```
//!
//! Failures are shrunk to a minimal input and printed; they are not persisted
//! to a regressions file (copy a minimal input into a unit test instead).
//!
//! These found one real bug, now fixed: `PageTokens::cursor` accepted a tag
//! shorter than the 16 bytes it issues, so a token for any cursor could be
//! forged in at most 256 guesses (`token_with_a_truncated_tag_is_refused`,
//! `token_cannot_be_forged_by_guessing_a_one_byte_tag`).
//!
//! The oracles here are written independently of the code under test: a
//! character-by-character model of the allowed names and times, the base64
//! and HMAC layout of a token, and a minute-by-minute brute-force model of the
//! DST rules in `schedule::next_run`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Component, Path};

use backup_server::backup::naming::{is_backup_filename, validate_custom_filename};
use backup_server::model::settings::{Frequency, format_backup_time, parse_backup_time};
use backup_server::paging::PageTokens;
use backup_server::schedule::next_run::{Schedule, first_anchor, next_run_after, runs_between};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeDelta,
    TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::Config;

/// The default config (256 cases, or `PROPTEST_CASES`), without writing
/// regression files into the source tree.
fn config() -> Config {
    Config {
        failure_persistence: None,
        ..Config::default()
    }
}

/// Any string of any Unicode scalar values, NUL and control characters
/// included (proptest's `any::<String>()` leaves some of them out).
fn any_chars(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..max).prop_map(String::from_iter)
}

/// Strings glued together from `parts`: reaches the interesting
/// combinations far more often than random characters do.
fn glued(parts: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(select(parts), 0..max).prop_map(|parts| parts.concat())
}

// ---------------------------------------------------------------------------
// Custom backup file names
// ---------------------------------------------------------------------------

const RESERVED: [&str; 3] = ["auto_backup_", "pre_restore_", "pre_migration_"];

/// What `validate_custom_filename` must return, from the rules alone.
fn expected_filename(name: &str) -> Option<String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-';
    if name.is_empty()
        || !name.chars().all(allowed)
        || name.starts_with('.')
        || RESERVED.iter().any(|p| name.starts_with(p))
    {
        return None;
    }
    let full = if name.ends_with(".db") {
        name.to_owned()
    } else {
        format!("{name}.db")
    };
    (full.len() <= 128).then_some(full)
}

fn check_filename(name: &str) -> Result<(), TestCaseError> {
    let got = validate_custom_filename(name);
    let expected = expected_filename(name);
    match (&got, &expected) {
        (Ok(valid), Some(expected)) => {
            prop_assert_eq!(valid, expected);
            prop_assert!(valid.ends_with(".db"));
            prop_assert!(valid.len() <= 128, "{} bytes", valid.len());
            prop_assert!(valid.is_ascii());
            prop_assert!(!valid.starts_with('.'));
            let components: Vec<_> = Path::new(valid).components().collect();
            prop_assert_eq!(
                components,
                vec![Component::Normal(valid.as_ref())],
                "not a single plain path component"
            );
            prop_assert!(is_backup_filename(valid));
            let again = validate_custom_filename(valid);
            prop_assert_eq!(again.as_ref(), Ok(valid), "not idempotent");
        }
        (Err(message), None) => prop_assert!(!message.is_empty()),
        _ => prop_assert!(false, "{name:?}: got {got:?}, expected {expected:?}"),
    }
    Ok(())
}

const NAME_PARTS: &[&str] = &[
    "a",
    "Z",
    "0",
    "9",
    ".",
    "_",
    "-",
    ".db",
    "db",
    "..",
    "/",
    "\\",
    "\0",
    " ",
    "\n",
    ":",
    "*",
    "%2e",
    "é",
    "\u{ff41}", // fullwidth 'a'
    "\u{0430}", // Cyrillic 'а'
    "\u{2024}", // one dot leader, a '.' lookalike
    "\u{ff0e}", // fullwidth full stop
    "\u{200b}", // zero-width space
    "\u{202e}", // right-to-left override
    "auto_backup_",
    "pre_restore_",
    "pre_migration_",
    "AUTO_BACKUP_",
    "auto_backup",
    "pre_",
];

/// Names of the allowed alphabet only, often with a reserved prefix or near
/// the length limit.
fn allowed_names() -> impl Strategy<Value = String> {
    let prefix = select(
        &[
            "",
            "",
            "",
            ".",
            "-",
            "_",
            "auto_backup_",
            "pre_restore_",
            "pre_migration_",
            "auto_backup",
            "pre_restore",
        ][..],
    );
    let body = prop_oneof![
        "[A-Za-z0-9._-]{0,40}",
        "[A-Za-z0-9._-]{115,135}",
        "[a-z]{122,128}",
    ];
    let suffix = select(&["", "", ".db", ".DB", ".d", "db", "."][..]);
    (prefix, body, suffix).prop_map(|(p, b, s)| format!("{p}{b}{s}"))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn filename_any_string(name in any_chars(160)) {
        check_filename(&name)?;
    }

    #[test]
    fn filename_tricky_fragments(name in glued(NAME_PARTS, 12)) {
        check_filename(&name)?;
    }

    #[test]
    fn filename_allowed_alphabet(name in allowed_names()) {
        check_filename(&name)?;
    }
}

// ---------------------------------------------------------------------------
// HH:MM backup times
// ---------------------------------------------------------------------------

/// `^[0-2][0-9]:[0-5][0-9]$` with hour <= 23, as (hour, minute).
fn expected_time(s: &str) -> Option<(u32, u32)> {
    let chars: Vec<char> = s.chars().collect();
    let [h1, h2, ':', m1, m2] = chars[..] else {
        return None;
    };
    let in_range = |c: char, lo: char, hi: char| lo <= c && c <= hi;
    if !(in_range(h1, '0', '2')
        && in_range(h2, '0', '9')
        && in_range(m1, '0', '5')
        && in_range(m2, '0', '9'))
    {
        return None;
    }
    let digit = |c: char| u32::from(c) - u32::from('0');
    let hour = digit(h1) * 10 + digit(h2);
    let minute = digit(m1) * 10 + digit(m2);
    (hour <= 23).then_some((hour, minute))
}

fn check_time(s: &str) -> Result<(), TestCaseError> {
    let got = parse_backup_time(s);
    match (got, expected_time(s)) {
        (Ok(t), Some((hour, minute))) => {
            prop_assert_eq!(
                (t.hour(), t.minute(), t.second(), t.nanosecond()),
                (hour, minute, 0, 0)
            );
            prop_assert_eq!(format_backup_time(t), s);
        }
        (Err(message), None) => prop_assert!(!message.is_empty()),
        (got, expected) => prop_assert!(false, "{s:?}: got {got:?}, expected {expected:?}"),
    }
    Ok(())
}

const TIME_PARTS: &[&str] = &[
    "0", "1", "2", "3", "5", "6", "9", ":", " ", "+", "-", "\0",
    "\u{663}",  // Arabic-Indic three
    "\u{ff13}", // fullwidth three
    "\u{ff1a}", // fullwidth colon
    "\u{2236}", // ratio, a ':' lookalike
    "00", "23", "24", "59", "60",
];

proptest! {
    #![proptest_config(config())]

    #[test]
    fn time_any_string(s in any_chars(8)) {
        check_time(&s)?;
    }

    #[test]
    fn time_near_misses(s in prop_oneof![
        "[0-9:]{0,7}",
        "[0-9]{2}:[0-9]{2}",
        "[0-3][0-9]:[0-6][0-9]",
        glued(TIME_PARTS, 6),
    ]) {
        check_time(&s)?;
    }

    #[test]
    fn time_every_minute_round_trips(hour in 0..24u32, minute in 0..60u32) {
        let s = format!("{hour:02}:{minute:02}");
        check_time(&s)?;
        let t = NaiveTime::from_hms_opt(hour, minute, 0).expect("valid time");
        prop_assert_eq!(parse_backup_time(&format_backup_time(t)), Ok(t));
    }
}

// ---------------------------------------------------------------------------
// Page tokens
// ---------------------------------------------------------------------------

/// The number of bytes of HMAC-SHA256 a token carries.
const TAG_BYTES: usize = 16;

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..64)
}

/// Listing names and cursors: mostly arbitrary text, sometimes the shapes the
/// server uses (`backups`, `2026|x.db`, numeric ids).
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any_chars(40),
        "[a-z_]{0,16}",
        "[0-9]{1,19}",
        "[0-9]{4}\\|[a-z0-9_.-]{1,20}",
    ]
}

/// A token's two parts, decoded as the server documents them:
/// `base64url(cursor).base64url(tag)`, split at the first '.'.
fn decode_parts(token: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let (cursor, tag) = token.split_once('.')?;
    Some((
        URL_SAFE_NO_PAD.decode(cursor).ok()?,
        URL_SAFE_NO_PAD.decode(tag).ok()?,
    ))
}

/// A token with the given cursor and raw tag bytes.
fn token_with_tag(cursor: &str, tag: &[u8]) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(cursor),
        URL_SAFE_NO_PAD.encode(tag)
    )
}

proptest! {
    #![proptest_config(config())]

    /// Whatever cursor a listing hands out comes back unchanged.
    #[test]
    fn token_round_trips(key in key(), listing in text(), cursor in text()) {
        let tokens = PageTokens::from_key(&key);
        let token = tokens.issue(&listing, &cursor);
        prop_assert!(!token.is_empty(), "an issued token must not read as the first page");
        prop_assert!(token.is_ascii());
        prop_assert_eq!(tokens.cursor(&listing, &token).ok(), Some(Some(cursor)));
    }

    /// Nothing panics, and a token is accepted only if it is exactly what the
    /// server issues for that listing and cursor (the empty token means the
    /// first page).
    #[test]
    fn token_arbitrary_strings_are_refused(
        key in key(),
        listing in text(),
        token in prop_oneof![
            any_chars(80),
            "[A-Za-z0-9_=.-]{0,60}",
            "[A-Za-z0-9_-]{0,30}\\.[A-Za-z0-9_-]{0,30}",
            "[A-Za-z0-9_-]{0,30}\\.[A-Za-z0-9_-]{22}",
        ],
    ) {
        let tokens = PageTokens::from_key(&key);
        match tokens.cursor(&listing, &token) {
            Ok(None) => prop_assert!(token.is_empty()),
            Ok(Some(cursor)) => prop_assert_eq!(
                &token,
                &tokens.issue(&listing, &cursor),
                "accepted a token the server never issued"
            ),
            Err(_) => prop_assert!(!token.is_empty()),
        }
    }

    /// A token is bound to its listing and to its key.
    #[test]
    fn token_for_another_listing_or_key_is_refused(
        key in key(),
        other_key in key(),
        listing in text(),
        other_listing in text(),
        cursor in text(),
    ) {
        let tokens = PageTokens::from_key(&key);
        let token = tokens.issue(&listing, &cursor);
        if other_listing != listing {
            prop_assert!(tokens.cursor(&other_listing, &token).is_err());
        }
        if other_key != key {
            // HMAC pads short keys with zeros: keys equal up to trailing
            // zero bytes (within one 64-byte block) are the same key.
            let trimmed = |k: &[u8]| k.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            if key[..trimmed(&key)] != other_key[..trimmed(&other_key)] {
                prop_assert!(PageTokens::from_key(&other_key).cursor(&listing, &token).is_err());
            }
        }
    }

    /// Changing any one character of a valid token gets it refused, unless
    /// the change leaves both decoded parts byte for byte the same (which
    /// strict base64 never allows, so in practice: always refused).
    #[test]
    fn token_with_one_character_changed_is_refused(
        key in key(),
        listing in text(),
        cursor in text(),
        at in any::<Index>(),
        replacement in prop_oneof![
            4 => select(
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/"
                    .chars()
                    .collect::<Vec<_>>(),
            ),
            1 => any::<char>(),
        ],
    ) {
        let tokens = PageTokens::from_key(&key);
        let token = tokens.issue(&listing, &cursor);
        let mut chars: Vec<char> = token.chars().collect();
        let at = at.index(chars.len());
        // A "change" to the same character changes it to another one.
        chars[at] = match replacement {
            same if same != chars[at] => same,
            'A' => 'B',
            _ => 'A',
        };
        let changed: String = chars.into_iter().collect();
        match tokens.cursor(&listing, &changed) {
            Err(_) => {}
            Ok(got) => {
                prop_assert_eq!(got, Some(cursor), "{:?} accepted with another cursor", changed);
                prop_assert_eq!(
                    decode_parts(&changed),
                    decode_parts(&token),
                    "{:?} accepted though it decodes differently",
                    changed
                );
            }
        }
    }

    /// The tag is exactly as long as the server issues it: a shortened (or
    /// lengthened) tag is a token the server never issued. A shortened tag
    /// that is still accepted cuts the 128-bit MAC down to as little as
    /// 8 bits: a forger needs about 256 guesses, not 2^128.
    #[test]
    fn token_with_a_truncated_tag_is_refused(
        key in key(),
        listing in text(),
        cursor in text(),
        keep in 0..TAG_BYTES,
    ) {
        let tokens = PageTokens::from_key(&key);
        let token = tokens.issue(&listing, &cursor);
        let (_, tag) = decode_parts(&token).expect("an issued token decodes");
        prop_assert_eq!(tag.len(), TAG_BYTES);
        let truncated = token_with_tag(&cursor, &tag[..keep]);
        prop_assert!(
            tokens.cursor(&listing, &truncated).is_err(),
            "{:?} (tag cut to {} of {} bytes) was accepted for cursor {:?}; issued token {:?}",
            truncated, keep, TAG_BYTES, cursor, token
        );
        let longer = token_with_tag(&cursor, &[&tag[..], &[0]].concat());
        prop_assert!(tokens.cursor(&listing, &longer).is_err());
    }
}

/// The minimal case of the property above, as a concrete attack: without
/// the key, a token for any cursor is found among the 256 one-byte tags.
#[test]
fn token_cannot_be_forged_by_guessing_a_one_byte_tag() {
    let tokens = PageTokens::from_key(&[7; 32]);
    let forged: Vec<String> = (0..=u8::MAX)
        .map(|byte| token_with_tag("9999|y.db", &[byte]))
        .filter(|token| tokens.cursor("backups", token).is_ok())
        .collect();
    assert!(forged.is_empty(), "forged tokens accepted: {forged:?}");
}

// ---------------------------------------------------------------------------
// Next-run computation
// ---------------------------------------------------------------------------

/// Zones with every kind of change: none, 30-minute DST, DST at midnight,
/// negative DST, a 2-hour DST, a skipped day, half-hour offsets.
const ZONES: &[&str] = &[
    "Europe/London",
    "America/New_York",
    "Australia/Lord_Howe",
    "Pacific/Auckland",
    "Asia/Kolkata",
    "America/Sao_Paulo",
    "UTC",
    "Pacific/Apia",
    "America/Havana",
    "America/Santiago",
    "Africa/Cairo",
    "Europe/Dublin",
    "Antarctica/Troll",
    "Pacific/Chatham",
    "America/St_Johns",
    "Asia/Tehran",
];

const FIRST_YEAR: i32 = 2000;
const LAST_YEAR: i32 = 2100;

fn utc_from(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).expect("in range")
}

fn year_start(year: i32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(year, 1, 1, 0, 0, 0)
        .single()
        .expect("valid")
}

fn offset_at(tz: Tz, at: DateTime<Utc>) -> i64 {
    i64::from(
        tz.offset_from_utc_datetime(&at.naive_utc())
            .fix()
            .local_minus_utc(),
    )
}

fn local(tz: Tz, at: DateTime<Utc>) -> NaiveDateTime {
    at.with_timezone(&tz).naive_local()
}

/// Transition instants by zone and year.
type TransitionCache = HashMap<(Tz, i32), Vec<DateTime<Utc>>>;

/// The instants during `year` at which `tz` changes its UTC offset (found by
/// scanning in 6-hour steps, then bisecting to the second), cached. Two
/// changes within one step would be missed; no zone here has them, and
/// these only steer `after` towards interesting instants anyway.
fn transitions(tz: Tz, year: i32) -> Vec<DateTime<Utc>> {
    thread_local! {
        static CACHE: RefCell<TransitionCache> = RefCell::default();
    }
    CACHE.with(|cache| {
        cache
            .borrow_mut()
            .entry((tz, year))
            .or_insert_with(|| {
                let mut found = Vec::new();
                let (start, end) = (year_start(year), year_start(year + 1));
                let mut at = start;
                while at < end {
                    let next = at + TimeDelta::hours(6);
                    if offset_at(tz, at) != offset_at(tz, next) {
                        let (mut lo, mut hi) = (at, next);
                        while hi - lo > TimeDelta::seconds(1) {
                            let mid = lo + (hi - lo) / 2;
                            if offset_at(tz, mid) == offset_at(tz, at) {
                                lo = mid;
                            } else {
                                hi = mid;
                            }
                        }
                        found.push(hi);
                    }
                    at = next;
                }
                found
            })
            .clone()
    })
}

/// The earliest instant the wall clock in `tz` reads `local`, or, for a
/// `local` skipped by a gap, the first minute after it that exists: a
/// deliberately naive model of the documented DST rules.
fn oracle_run_at(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    (0..48 * 60)
        .find_map(
            |minutes| match tz.from_local_datetime(&(local + TimeDelta::minutes(minutes))) {
                LocalResult::Single(run) => Some(run),
                LocalResult::Ambiguous(a, b) => Some(a.min(b)),
                LocalResult::None => None,
            },
        )
        .expect("every gap ends within two days")
        .to_utc()
}

fn days_in_month(d: NaiveDate) -> u32 {
    let (y, m) = if d.month() == 12 {
        (d.year() + 1, 1)
    } else {
        (d.year(), d.month() + 1)
    };
    let first_of_next = NaiveDate::from_ymd_opt(y, m, 1).expect("valid");
    (first_of_next - TimeDelta::days(1)).day()
}

fn oracle_is_run_date(s: &Schedule, d: NaiveDate) -> bool {
    match s.frequency {
        Frequency::Daily => true,
        Frequency::Weekly => d >= s.anchor && d.weekday() == s.anchor.weekday(),
        Frequency::Monthly => d >= s.anchor && d.day() == s.anchor.day().min(days_in_month(d)),
    }
}

/// Brute force: every run date from a few days before `after`'s local date
/// (or from the anchor) up to the first one at least three days past it,
/// each resolved by [`oracle_run_at`]; the earliest run strictly after.
fn oracle_next_run_after(s: &Schedule, after: DateTime<Utc>) -> DateTime<Utc> {
    let today = local(s.timezone, after).date();
    let mut start = today - TimeDelta::days(3);
    if s.frequency != Frequency::Daily {
        start = start.max(s.anchor);
    }
    let mut best: Option<DateTime<Utc>> = None;
    for d in start.iter_days() {
        if oracle_is_run_date(s, d) {
            let run = oracle_run_at(s.timezone, d.and_time(s.time));
            if run > after && best.is_none_or(|b| run < b) {
                best = Some(run);
            }
            if d >= today + TimeDelta::days(3) && best.is_some() {
                break;
            }
        }
    }
    best.expect("a run ahead")
}

/// The local dates whose scheduled run lands on `run`, found from the wall
/// clock alone: either `run` reads exactly the schedule time (at its first
/// occurrence), or the offset jumps forward at `run` and the schedule time
/// on that date fell in the skipped stretch, strictly between the wall clock
/// a second earlier and at `run`.
fn run_dates_of(s: &Schedule, run: DateTime<Utc>) -> Vec<NaiveDate> {
    let tz = s.timezone;
    let at = local(tz, run);
    let mut dates = Vec::new();
    if at.time() == s.time {
        let earliest = match tz.from_local_datetime(&at) {
            LocalResult::Single(t) => Some(t),
            LocalResult::Ambiguous(a, b) => Some(a.min(b)),
            LocalResult::None => None,
        };
        if earliest.map(|t| t.to_utc()) == Some(run) {
            dates.push(at.date());
        }
    }
    let second_before = run - TimeDelta::seconds(1);
    if offset_at(tz, second_before) < offset_at(tz, run) {
        let before = local(tz, second_before);
        for back in 0..=2 {
            let d = at.date() - TimeDelta::days(back);
            let scheduled = d.and_time(s.time);
            if before < scheduled && scheduled < at {
                dates.push(d);
            }
        }
    }
    dates
}

fn frequency() -> impl Strategy<Value = Frequency> {
    prop_oneof![
        Just(Frequency::Daily),
        Just(Frequency::Weekly),
        Just(Frequency::Monthly),
    ]
}

/// How a case picks its schedule's anchor date.
#[derive(Debug, Clone, Copy)]
enum AnchorFrom {
    /// Any date in 2000..2100.
    Anywhere,
    /// Within 70 days of `after`'s local date.
    NearAfter,
    /// A whole number of weeks (0..=4) before the local date of the chosen
    /// transition, or the day after that: weekly and monthly schedules then
    /// run right at the transition.
    Transition,
}

/// Raw choices for a schedule and an `after`, turned into values by
/// [`Case::build`] (so shrinking works on small numbers).
#[derive(Debug, Clone)]
struct Case {
    frequency: Frequency,
    hour: u32,
    minute: u32,
    /// Or, when `after` is near a transition, the wall-clock time at which
    /// the transition happens moved by `time_delta` minutes (often in the
    /// gap or the repeated stretch).
    time_near: bool,
    time_delta: i64,
    zone: &'static str,
    /// Either a uniform instant in 2000..2100, or one `delta` seconds from a
    /// UTC-offset transition of the zone in `year` (where there is one).
    uniform: bool,
    seconds: i64,
    year: i32,
    transition: Index,
    delta: i64,
    anchor_from: AnchorFrom,
    anchor_days: i64,
    anchor_weeks: i64,
}

fn case() -> impl Strategy<Value = Case> {
    let first = year_start(FIRST_YEAR).timestamp();
    let last = year_start(LAST_YEAR + 1).timestamp() - 1;
    let anchor_days = (NaiveDate::from_ymd_opt(LAST_YEAR, 12, 31).expect("valid")
        - NaiveDate::from_ymd_opt(FIRST_YEAR, 1, 1).expect("valid"))
    .num_days();
    let anchor_from = prop_oneof![
        1 => Just(AnchorFrom::Anywhere),
        2 => Just(AnchorFrom::NearAfter),
        2 => Just(AnchorFrom::Transition),
    ];
    (
        (
            frequency(),
            0..24u32,
            0..60u32,
            prop::bool::weighted(0.6),
            -90..=90i64,
            select(ZONES),
        ),
        (
            prop::bool::weighted(0.2),
            first..=last,
            FIRST_YEAR..=LAST_YEAR,
            any::<Index>(),
            // Often within the day before the transition, so that the next
            // daily run is the one the transition moves.
            prop_oneof![-3 * 86_400..=3 * 86_400i64, -30 * 3600..=0i64],
        ),
        (anchor_from, 0..=anchor_days, -70..=70i64),
    )
        .prop_map(
            |(
                (frequency, hour, minute, time_near, time_delta, zone),
                (uniform, seconds, year, transition, delta),
                (anchor_from, anchor_days, anchor_weeks),
            )| Case {
                frequency,
                hour,
                minute,
                time_near,
                time_delta,
                zone,
                uniform,
                seconds,
                year,
                transition,
                delta,
                anchor_from,
                anchor_days,
                anchor_weeks,
            },
        )
}

impl Case {
    fn build(&self) -> (Schedule, DateTime<Utc>) {
        let tz: Tz = self.zone.parse().expect("known zone");
        let found = transitions(tz, self.year);
        let near =
            (!self.uniform && !found.is_empty()).then(|| found[self.transition.index(found.len())]);
        let after = near.map_or(utc_from(self.seconds), |t| {
            t + TimeDelta::seconds(self.delta)
        });
        // The old wall clock's reading at the transition.
        let clock_at_transition =
            near.map(|t| local(tz, t - TimeDelta::seconds(1)) + TimeDelta::seconds(1));
        let time = match clock_at_transition {
            Some(at) if self.time_near => {
                let moved = at + TimeDelta::minutes(self.time_delta);
                NaiveTime::from_hms_opt(moved.hour(), moved.minute(), 0).expect("valid")
            }
            _ => NaiveTime::from_hms_opt(self.hour, self.minute, 0).expect("valid"),
        };
        let first_day = NaiveDate::from_ymd_opt(FIRST_YEAR, 1, 1).expect("valid");
        let last_day = NaiveDate::from_ymd_opt(LAST_YEAR, 12, 31).expect("valid");
        let near_after = local(tz, after).date() + TimeDelta::days(self.anchor_weeks);
        let anchor = match (self.anchor_from, clock_at_transition) {
            (AnchorFrom::Anywhere, _) => first_day + TimeDelta::days(self.anchor_days),
            (AnchorFrom::Transition, Some(at)) => {
                // anchor_weeks in -70..=70: its sign picks the day after.
                let weeks = self.anchor_weeks.rem_euclid(5);
                at.date() - TimeDelta::weeks(weeks)
                    + TimeDelta::days(i64::from(self.anchor_weeks < 0))
            }
            (AnchorFrom::NearAfter | AnchorFrom::Transition, _) => near_after,
        }
        .clamp(first_day, last_day);
        let schedule = Schedule {
            frequency: self.frequency,
            time,
            timezone: tz,
            anchor,
        };
        (schedule, after)
    }
}

/// Everything a single run must satisfy.
fn check_run(s: &Schedule, after: DateTime<Utc>, run: DateTime<Utc>) -> Result<(), TestCaseError> {
    prop_assert!(run > after, "run {run} is not after {after}");
    let dates = run_dates_of(s, run);
    prop_assert!(
        !dates.is_empty(),
        "run {run} (local {}) neither reads {} at its first occurrence nor ends a gap that skipped it",
        local(s.timezone, run),
        s.time
    );
    prop_assert!(
        dates.iter().any(|d| oracle_is_run_date(s, *d)),
        "run {run} is for local date(s) {dates:?}, none a run date of the schedule"
    );
    match s.frequency {
        Frequency::Daily => {}
        Frequency::Weekly => prop_assert!(
            dates
                .iter()
                .any(|d| d.weekday() == s.anchor.weekday() && *d >= s.anchor),
            "weekly run on {dates:?}, anchor {} ({})",
            s.anchor,
            s.anchor.weekday()
        ),
        Frequency::Monthly => prop_assert!(
            dates
                .iter()
                .any(|d| d.day() == s.anchor.day().min(days_in_month(*d)) && *d >= s.anchor),
            "monthly run on {dates:?}, anchor {}",
            s.anchor
        ),
    }
    Ok(())
}

/// The spread of `tz`'s UTC offset over [from, to], sampled every 15 minutes.
fn offset_spread(tz: Tz, from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    let mut at = from;
    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
    loop {
        let offset = offset_at(tz, at.min(to));
        lo = lo.min(offset);
        hi = hi.max(offset);
        if at >= to {
            return hi - lo;
        }
        at += TimeDelta::minutes(15);
    }
}

proptest! {
    #![proptest_config(config())]

    /// The next run is strictly ahead, at the schedule's local time on a run
    /// date (or where a gap that skipped that time ends), and is the one a
    /// brute-force model of the documented rules picks.
    #[test]
    fn next_run_is_ahead_on_a_run_date_and_matches_the_model(case in case()) {
        let (s, after) = case.build();
        let run = next_run_after(&s, after);
        check_run(&s, after, run)?;
        prop_assert_eq!(run, oracle_next_run_after(&s, after), "{:?} after {}", s, after);
        // Nothing between `after` and the run: asking from just before it,
        // or from any instant in between, gives the same run.
        prop_assert_eq!(next_run_after(&s, run - TimeDelta::seconds(1)), run);
        let mid = after + (run - after) / 2;
        prop_assert_eq!(next_run_after(&s, mid), run);
    }

    /// Consecutive daily runs are a day apart give or take the offset change
    /// between them: 23 to 25 hours wherever the zone's offset moves by at
    /// most an hour around them (every zone and date here except Samoa's
    /// skipped 2011-12-30 and Troll's 2-hour DST), and exactly 24 hours
    /// without a change.
    #[test]
    fn consecutive_runs(case in case()) {
        let (s, after) = case.build();
        let first = next_run_after(&s, after);
        let second = next_run_after(&s, first);
        check_run(&s, first, second)?;
        if s.frequency == Frequency::Daily {
            let apart = second - first;
            let spread = offset_spread(s.timezone, first - TimeDelta::hours(26), second);
            prop_assert!(
                (apart - TimeDelta::days(1)).num_seconds().abs() <= spread,
                "{:?}: runs {} and {} are {} apart; the offset spread is {}s",
                s, first, second, apart, spread
            );
            if spread <= 3600 {
                prop_assert!(
                    TimeDelta::hours(23) <= apart && apart <= TimeDelta::hours(25),
                    "{:?}: daily runs {} and {} are {} apart", s, first, second, apart
                );
            }
        }
    }

    /// `runs_between` lists exactly the runs in (from, to], in order, at most
    /// `limit`, each the next run after the previous one.
    #[test]
    fn runs_between_is_iterated_next_run(
        case in case(),
        span in -86_400..=120 * 86_400i64,
        limit in 0..40usize,
    ) {
        let (s, from) = case.build();
        let to = from + TimeDelta::seconds(span);
        let runs = runs_between(&s, from, to, limit);
        prop_assert!(runs.len() <= limit);
        prop_assert!(runs.windows(2).all(|w| w[0] < w[1]), "not strictly increasing");
        prop_assert!(runs.iter().all(|r| from < *r && *r <= to), "outside (from, to]");
        let mut expected = Vec::new();
        let mut cursor = from;
        while expected.len() < limit {
            let next = next_run_after(&s, cursor);
            if next > to {
                break;
            }
            check_run(&s, cursor, next)?;
            expected.push(next);
            cursor = next;
        }
        prop_assert_eq!(&runs, &expected);
        for pair in runs.windows(2) {
            prop_assert_eq!(next_run_after(&s, pair[0]), pair[1]);
        }
    }

    /// A new schedule is anchored today while today's run is still ahead,
    /// else tomorrow, and whatever its frequency first runs on its anchor.
    #[test]
    fn first_anchor_first_runs_on_the_anchor(case in case()) {
        let (s, now) = case.build();
        let anchor = first_anchor(s.time, s.timezone, now);
        let today = local(s.timezone, now).date();
        let todays_run = oracle_run_at(s.timezone, today.and_time(s.time));
        let expected = if todays_run > now { today } else { today + TimeDelta::days(1) };
        prop_assert_eq!(anchor, expected);
        let s = Schedule { anchor, ..s };
        prop_assert_eq!(
            next_run_after(&s, now),
            oracle_run_at(s.timezone, anchor.and_time(s.time)),
            "{:?} created at {}", s, now
        );
    }

    /// Anywhere in representable time, in any zone chrono-tz knows, with any
    /// anchor: no panic, and the run is ahead or saturates at the end of time.
    #[test]
    fn never_panics_anywhere(
        frequency in frequency(),
        hour in 0..24u32,
        minute in 0..60u32,
        zone in select(chrono_tz::TZ_VARIANTS.as_slice()),
        after in prop_oneof![
            DateTime::<Utc>::MIN_UTC.timestamp()..=DateTime::<Utc>::MAX_UTC.timestamp(),
            DateTime::<Utc>::MIN_UTC.timestamp()..=DateTime::<Utc>::MIN_UTC.timestamp() + 5 * 86_400,
            DateTime::<Utc>::MAX_UTC.timestamp() - 5 * 86_400..=DateTime::<Utc>::MAX_UTC.timestamp(),
        ],
        anchor in prop_oneof![
            NaiveDate::MIN.num_days_from_ce()..=NaiveDate::MAX.num_days_from_ce(),
            Just(NaiveDate::MIN.num_days_from_ce()),
            Just(NaiveDate::MAX.num_days_from_ce()),
        ],
        limit in 0..4usize,
    ) {
        let s = Schedule {
            frequency,
            time: NaiveTime::from_hms_opt(hour, minute, 0).expect("valid"),
            timezone: zone,
            anchor: NaiveDate::from_num_days_from_ce_opt(anchor).expect("in range"),
        };
        let after = utc_from(after);
        let run = next_run_after(&s, after);
        prop_assert!(run > after || run == DateTime::<Utc>::MAX_UTC);
        let runs = runs_between(&s, after, DateTime::<Utc>::MAX_UTC, limit);
        prop_assert!(runs.len() <= limit);
        prop_assert!(runs.windows(2).all(|w| w[0] < w[1]));
        prop_assert!(runs.iter().all(|r| *r > after));
        let anchor = first_anchor(s.time, zone, after);
        prop_assert!((anchor - after.date_naive()).num_days().abs() <= 2);
    }
}
