//! Backup names and file names: validation of custom names, generated
//! names, where a backup's bytes are stored, and the kind, owner and name a
//! file implies (also for files other tools drop in).
//!
//! Names are unique per owner: users 2 and 3 may each have `nightly.db`. A
//! backup's file is named after the backup; a user's manual backup whose
//! name another owner's file already has is stored as `u<owner>~<name>`
//! instead (`~` is never in a custom name). Automatic backups carry the
//! owner in their name, and system backups' names are unique, so neither
//! ever needs that. Backups catalogued before names were per owner keep
//! their file name as their name.

use chrono::{DateTime, Utc};

use crate::model::backup::BackupKind;

/// Longest custom file name, in bytes, `.db` included.
pub const MAX_FILENAME_BYTES: usize = 128;

/// Prefixes only the service itself may use.
const RESERVED_PREFIXES: [&str; 3] = ["auto_backup_", "pre_restore_", "pre_migration_"];

/// Checks a custom file name and appends `.db` when missing.
///
/// One path component of ASCII letters, digits, `.`, `_` and `-`, not
/// starting with `.`, at most 128 bytes, without a reserved prefix. The error
/// says what is allowed.
pub fn validate_custom_filename(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "contains {bad:?}; only ASCII letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    if name.starts_with('.') {
        return Err("must not start with '.'".into());
    }
    if let Some(prefix) = RESERVED_PREFIXES.iter().find(|p| name.starts_with(*p)) {
        return Err(format!("the prefix {prefix:?} is reserved for the service"));
    }
    let name = if name.ends_with(".db") {
        name.to_owned()
    } else {
        format!("{name}.db")
    };
    if name.len() > MAX_FILENAME_BYTES {
        return Err(format!(
            "is {} bytes with .db; at most {MAX_FILENAME_BYTES} are allowed",
            name.len()
        ));
    }
    Ok(name)
}

/// Whether `name` can name a file in the backups directory at all: one
/// path component, no hidden or temporary files. Lookups of anything else
/// are simply "not found".
pub fn is_backup_filename(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
}

/// Separates the owner from the name in a user's manual backup's file name.
const OWNER_SEPARATOR: char = '~';

/// The file name of `owner`'s manual backup `name` when another owner's
/// file has the plain name.
pub fn owner_qualified(owner: i64, name: &str) -> String {
    format!("u{owner}{OWNER_SEPARATOR}{name}")
}

fn stamp(at: DateTime<Utc>) -> String {
    at.format("%Y%m%dT%H%M%S%.6fZ").to_string()
}

/// `backup_<UTC timestamp>.db`, for a manual backup without a custom name.
pub fn manual_filename(at: DateTime<Utc>) -> String {
    format!("backup_{}.db", stamp(at))
}

/// `auto_backup_user<N>_<YYYY-MM-DDTHH-MM-SS>.db`, from the scheduled slot
/// time, so a slot always maps to the same name.
pub fn auto_filename(user_id: i64, slot: DateTime<Utc>) -> String {
    format!(
        "auto_backup_user{user_id}_{}.db",
        slot.format("%Y-%m-%dT%H-%M-%S")
    )
}

/// `pre_restore_backup_<UTC timestamp>.db`.
pub fn pre_restore_filename(at: DateTime<Utc>) -> String {
    format!("pre_restore_backup_{}.db", stamp(at))
}

/// `pre_migration_<UTC timestamp>.db`.
pub fn pre_migration_filename(at: DateTime<Utc>) -> String {
    format!("pre_migration_{}.db", stamp(at))
}

/// What a file found in the backups directory is, from its file name
/// alone: its kind, its owner (the user id in an automatic or a user's
/// manual backup's file name, else 0 for the system) and its name.
pub fn classify(filename: &str) -> (BackupKind, i64, &str) {
    if filename.starts_with("pre_restore_") {
        (BackupKind::PreRestore, 0, filename)
    } else if filename.starts_with("pre_migration_") {
        (BackupKind::PreMigration, 0, filename)
    } else if let Some(owner) = filename
        .strip_prefix("auto_backup_user")
        .and_then(|rest| rest.split('_').next())
        .and_then(|id| id.parse::<i64>().ok())
    {
        (BackupKind::Auto, owner, filename)
    } else if let Some((owner, name)) = filename
        .strip_prefix('u')
        .and_then(|rest| rest.split_once(OWNER_SEPARATOR))
        .and_then(|(id, name)| Some((id.parse::<i64>().ok().filter(|&o| o > 0)?, name)))
        .filter(|(_, name)| is_backup_filename(name))
    {
        (BackupKind::Manual, owner, name)
    } else {
        (BackupKind::Manual, 0, filename)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names_and_appends_db() {
        assert_eq!(
            validate_custom_filename("nightly").as_deref(),
            Ok("nightly.db")
        );
        assert_eq!(
            validate_custom_filename("a-b_c.1.db").as_deref(),
            Ok("a-b_c.1.db")
        );
        let longest = format!("{}.db", "a".repeat(125));
        assert_eq!(validate_custom_filename(&longest), Ok(longest.clone()));
    }

    #[test]
    fn rejects_everything_else() {
        let too_long = "a".repeat(126);
        for bad in [
            "",
            "../etc",
            "..",
            "/abs.db",
            "a/b.db",
            "a\\b.db",
            "nul\0.db",
            ".hidden",
            "sp ace.db",
            "caf\u{e9}.db",
            "\u{ff41}.db", // fullwidth 'a', a lookalike
            "auto_backup_user1_x.db",
            "pre_restore_x",
            "pre_migration_x",
            too_long.as_str(),
        ] {
            assert!(
                validate_custom_filename(bad).is_err(),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn classifies_by_prefix() {
        assert_eq!(
            classify("pre_restore_backup_1.db"),
            (BackupKind::PreRestore, 0, "pre_restore_backup_1.db")
        );
        assert_eq!(
            classify("pre_migration_x.db"),
            (BackupKind::PreMigration, 0, "pre_migration_x.db")
        );
        let auto = auto_filename(42, DateTime::UNIX_EPOCH);
        assert_eq!(auto, "auto_backup_user42_1970-01-01T00-00-00.db");
        assert_eq!(classify(&auto), (BackupKind::Auto, 42, auto.as_str()));
        assert_eq!(
            classify("auto_backup_userX_1.db"),
            (BackupKind::Manual, 0, "auto_backup_userX_1.db")
        );
        assert_eq!(classify("mine.db"), (BackupKind::Manual, 0, "mine.db"));
    }

    #[test]
    fn owner_qualified_names_keep_their_owner() {
        let stored = owner_qualified(7, "nightly.db");
        assert_eq!(stored, "u7~nightly.db");
        assert_ne!(stored, owner_qualified(8, "nightly.db"));
        assert_eq!(classify(&stored), (BackupKind::Manual, 7, "nightly.db"));
        assert!(is_backup_filename(&stored));
        for odd in ["u0~x.db", "u-1~x.db", "ux~y.db", "u7~", "u7~.hidden"] {
            assert_eq!(classify(odd).1, 0, "{odd}");
        }
        // No custom name can look like a stored one.
        assert!(validate_custom_filename("u7~nightly").is_err());
    }

    #[test]
    fn generated_names_pass_the_lookup_check() {
        let now = Utc::now();
        for name in [
            manual_filename(now),
            pre_restore_filename(now),
            pre_migration_filename(now),
        ] {
            assert!(is_backup_filename(&name), "{name}");
        }
        assert!(!is_backup_filename(".tmp-x"));
        assert!(!is_backup_filename("a/b"));
    }
}
