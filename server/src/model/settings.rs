//! A user's backup settings and the values they are made of.

use chrono::{DateTime, Duration, NaiveDate, NaiveTime, Utc};
use chrono_tz::Tz;

use crate::error::FieldViolation;

/// How often a schedule runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frequency {
    Daily,
    Weekly,
    Monthly,
}

impl Frequency {
    pub const ALL: [Self; 3] = [Self::Daily, Self::Weekly, Self::Monthly];

    /// The name the state store keeps.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Daily => "daily",
            Self::Weekly => "weekly",
            Self::Monthly => "monthly",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// The longest gap between two runs.
    pub fn max_interval(self) -> Duration {
        match self {
            Self::Daily => Duration::days(1),
            Self::Weekly => Duration::days(7),
            Self::Monthly => Duration::days(31),
        }
    }
}

const BACKUP_TIME_ERROR: &str = "must be HH:MM with hours 00-23 and minutes 00-59";

/// Parses `HH:MM` exactly: two ASCII digits for hours 00-23, a colon, two for minutes 00-59.
///
/// Strict on purpose: a stored schedule must round-trip through [`format_backup_time`], so
/// no padding, signs, seconds or non-ASCII digits are accepted.
pub fn parse_backup_time(s: &str) -> Result<NaiveTime, &'static str> {
    let two_digits = |tens: u8, units: u8| {
        (tens.is_ascii_digit() && units.is_ascii_digit())
            .then(|| u32::from(tens - b'0') * 10 + u32::from(units - b'0'))
    };
    match *s.as_bytes() {
        [h1, h2, b':', m1, m2] => two_digits(h1, h2)
            .zip(two_digits(m1, m2))
            .and_then(|(hour, minute)| NaiveTime::from_hms_opt(hour, minute, 0))
            .ok_or(BACKUP_TIME_ERROR),
        _ => Err(BACKUP_TIME_ERROR),
    }
}

/// Formats as `HH:MM`, the form [`parse_backup_time`] accepts.
pub fn format_backup_time(t: NaiveTime) -> String {
    t.format("%H:%M").to_string()
}

/// How late a user's last successful backup may be, beyond one interval,
/// before the user counts as overdue.
pub const OVERDUE_GRACE: Duration = Duration::hours(1);

/// How many of an owner's newest backups a policy keeps: 1 to 30. The one
/// place that rule is written, for settings and retention requests alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeepCount(u8);

impl KeepCount {
    pub const MIN: u32 = 1;
    pub const MAX: u32 = 30;
    /// What new settings keep.
    pub const DEFAULT: Self = Self(7);

    /// `n` as a keep count, or what is wrong with it (for field `field`).
    pub fn new(n: i64, field: &str) -> Result<Self, FieldViolation> {
        u8::try_from(n)
            .ok()
            .filter(|k| (Self::MIN..=Self::MAX).contains(&u32::from(*k)))
            .map(Self)
            .ok_or_else(|| {
                FieldViolation::new(
                    field,
                    format!("must be between {} and {}; got {n}", Self::MIN, Self::MAX),
                )
            })
    }

    pub fn get(self) -> u32 {
        u32::from(self.0)
    }
}

/// As the wire and the state store carry it; at most 30, so always exact.
impl From<KeepCount> for i32 {
    fn from(k: KeepCount) -> Self {
        i32::from(k.0)
    }
}

/// A user's automatic backup settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub user_id: i64,
    pub enabled: bool,
    pub frequency: Frequency,
    /// Local time of day, minute precision, in `timezone`.
    pub backup_time: NaiveTime,
    pub keep_count: KeepCount,
    pub timezone: Tz,
    /// Local date of the first run: weekly schedules keep its weekday,
    /// monthly ones its day of the month. `None` for rows from before
    /// anchors were kept.
    pub anchor_date: Option<NaiveDate>,
    pub last_backup_at: Option<DateTime<Utc>>,
    /// The next slot; `None` while disabled.
    pub next_backup_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A partial update: `None` leaves a field as it is (or at its default on
/// creation). Every value is already valid.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SettingsUpdate {
    pub enabled: Option<bool>,
    pub frequency: Option<Frequency>,
    pub backup_time: Option<NaiveTime>,
    pub keep_count: Option<KeepCount>,
    pub timezone: Option<Tz>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_counts_are_one_to_thirty() {
        assert_eq!(KeepCount::new(1, "keep_count").unwrap().get(), 1);
        assert_eq!(KeepCount::new(30, "keep_count").unwrap().get(), 30);
        for bad in [0, -1, 31, i64::MAX, i64::MIN] {
            let violation = KeepCount::new(bad, "policy.keep_count").unwrap_err();
            assert_eq!(violation.field, "policy.keep_count");
            assert!(
                violation.description.contains(&bad.to_string()),
                "{violation}"
            );
        }
    }

    #[test]
    fn frequencies_round_trip_through_their_stored_names() {
        for f in Frequency::ALL {
            assert_eq!(Frequency::parse(f.as_str()), Some(f));
        }
        assert_eq!(Frequency::parse("hourly"), None);
    }
}
