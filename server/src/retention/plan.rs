//! The retention rule, pure: which of one owner's backups a policy keeps
//! and why ([`plan`]), and how the newest backup that passes verification
//! is kept whatever the policy says ([`OwnerPlan::secure`]).

use crate::backup::SYSTEM_OWNER;
use crate::model::backup::{BackupKind, Entry};

/// Why a backup is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepReason {
    /// One of its owner's newest `keep_count` regular backups.
    NewestN,
    /// A protected backup (or one whose kind retention does not manage).
    Protected,
    /// Its owner's newest backup that passes verification, kept because the
    /// newer ones do not.
    NewestVerified,
    /// A system backup, outside every user's policy.
    System,
    /// No regular backup of its owner passes verification, so retention
    /// deletes none of them.
    NoVerifiedBackup,
    /// Marked damaged: counted towards no `keep_count`, left for an
    /// operator to inspect or delete.
    Damaged,
}

/// A backup that stays (by its name among its owner's), and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    pub name: String,
    pub reason: KeepReason,
}

/// What a policy does to one owner's backups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerPlan {
    pub owner: i64,
    /// The owner's backups.
    pub total: usize,
    /// Of those, the ones retention never deletes by policy.
    pub protected: usize,
    /// Kept backups with their reasons: newest first, then any kept by
    /// [`OwnerPlan::secure`].
    pub keep: Vec<Kept>,
    /// Names of the backups to delete, newest first.
    pub delete: Vec<String>,
}

/// Newest first: by recorded creation time, then file name, descending.
/// File modification times play no part.
fn newest_first(a: &Entry, b: &Entry) -> std::cmp::Ordering {
    b.created_at
        .cmp(&a.created_at)
        .then_with(|| b.filename.cmp(&a.filename))
}

/// Regular backups are the ones a policy manages: AUTO and MANUAL, not
/// protected. Anything else (including a kind this code does not know) is
/// treated as protected.
fn is_regular(backup: &Entry) -> bool {
    !backup.is_protected && matches!(backup.kind, Some(BackupKind::Auto | BackupKind::Manual))
}

/// Plans `keep_count` for `owner`: the owner's newest `keep_count` regular
/// backups stay, older regular ones go; protected backups stay; a system
/// owner's backups all stay. Rows of any other owner are ignored, so a plan
/// can only ever delete its own owner's backups.
pub fn plan(owner: i64, rows: &[Entry], keep_count: usize) -> OwnerPlan {
    let mut mine: Vec<&Entry> = rows.iter().filter(|b| b.owner_user_id == owner).collect();
    mine.sort_by(|a, b| newest_first(a, b));
    let mut plan = OwnerPlan {
        owner,
        total: mine.len(),
        protected: 0,
        keep: Vec::new(),
        delete: Vec::new(),
    };
    let mut regular_kept = 0;
    for backup in mine {
        let reason = if !is_regular(backup) {
            plan.protected += 1;
            if backup.damaged {
                KeepReason::Damaged
            } else {
                KeepReason::Protected
            }
        } else if backup.damaged {
            KeepReason::Damaged
        } else if owner == SYSTEM_OWNER {
            KeepReason::System
        } else if regular_kept < keep_count {
            regular_kept += 1;
            KeepReason::NewestN
        } else {
            plan.delete.push(backup.name.clone());
            continue;
        };
        plan.keep.push(Kept {
            name: backup.name.clone(),
            reason,
        });
    }
    plan
}

/// What [`OwnerPlan::secure`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Safety {
    /// Nothing to delete, so nothing was verified.
    NotNeeded,
    /// `verified`, one of the newest N, passes; `failed` are newer ones of
    /// the newest N that do not.
    Verified {
        verified: String,
        failed: Vec<String>,
    },
    /// None of the newest N passes; `verified`, the newest that does, was
    /// planned for deletion and is kept instead.
    Rescued {
        verified: String,
        failed: Vec<String>,
    },
    /// No regular backup passes; none is deleted.
    NoneVerified { failed: Vec<String> },
}

impl Safety {
    /// Whether a deletion was refused for safety (`backup_retention.safety_check`).
    pub fn refused(&self) -> bool {
        matches!(self, Self::Rescued { .. } | Self::NoneVerified { .. })
    }

    /// The backups that failed verification, newest first.
    pub fn failed(&self) -> &[String] {
        match self {
            Self::NotNeeded => &[],
            Self::Verified { failed, .. }
            | Self::Rescued { failed, .. }
            | Self::NoneVerified { failed } => failed,
        }
    }
}

impl OwnerPlan {
    /// The backups [`OwnerPlan::secure`] asks about, in the order it asks,
    /// until one passes.
    pub fn verification_order(&self) -> impl Iterator<Item = &str> {
        let asks = !self.delete.is_empty();
        self.keep
            .iter()
            .filter(move |k| asks && k.reason == KeepReason::NewestN)
            .map(|k| k.name.as_str())
            .chain(self.delete.iter().map(String::as_str))
    }

    /// Makes sure the owner's newest backup that passes verification is
    /// kept. `passes` is asked about the newest N in order until one passes;
    /// if none does, about the ones planned for deletion, the first that
    /// passes being kept instead; if no backup passes at all, nothing is
    /// deleted. Nothing is verified when nothing would be deleted.
    pub fn secure(&mut self, mut passes: impl FnMut(&str) -> bool) -> Safety {
        if self.delete.is_empty() {
            return Safety::NotNeeded;
        }
        let mut failed = Vec::new();
        let newest: Vec<String> = self
            .keep
            .iter()
            .filter(|k| k.reason == KeepReason::NewestN)
            .map(|k| k.name.clone())
            .collect();
        for name in newest {
            if passes(&name) {
                return Safety::Verified {
                    verified: name,
                    failed,
                };
            }
            failed.push(name);
        }
        for i in 0..self.delete.len() {
            if passes(&self.delete[i]) {
                let verified = self.delete.remove(i);
                self.keep.push(Kept {
                    name: verified.clone(),
                    reason: KeepReason::NewestVerified,
                });
                return Safety::Rescued { verified, failed };
            }
            failed.push(self.delete[i].clone());
        }
        for name in self.delete.drain(..) {
            self.keep.push(Kept {
                name,
                reason: KeepReason::NoVerifiedBackup,
            });
        }
        Safety::NoneVerified { failed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, TimeZone, Utc};

    fn at(second: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + second, 0).unwrap()
    }

    fn row(name: &str, owner: i64, kind: BackupKind, second: i64) -> Entry {
        Entry {
            filename: format!("file-of-{name}"),
            name: name.into(),
            damaged: false,
            owner_user_id: owner,
            kind: Some(kind),
            is_protected: kind.is_protected(),
            created_at: at(second),
        }
    }

    fn names(kept: &[Kept], reason: KeepReason) -> Vec<&str> {
        kept.iter()
            .filter(|k| k.reason == reason)
            .map(|k| k.name.as_str())
            .collect()
    }

    #[test]
    fn keeps_the_newest_n_regular_backups_and_deletes_the_rest_newest_first() {
        let rows = vec![
            row("a", 7, BackupKind::Auto, 1),
            row("b", 7, BackupKind::Manual, 2),
            row("c", 7, BackupKind::Auto, 3),
            row("d", 7, BackupKind::Auto, 4),
        ];
        let p = plan(7, &rows, 2);
        assert_eq!(names(&p.keep, KeepReason::NewestN), ["d", "c"]);
        assert_eq!(p.delete, ["b", "a"]);
        assert_eq!((p.total, p.protected), (4, 0));
    }

    #[test]
    fn order_is_by_created_at_then_filename_never_input_order() {
        // Same creation time: the file name breaks the tie, descending.
        let rows = vec![
            row("x-2", 1, BackupKind::Manual, 5),
            row("x-1", 1, BackupKind::Manual, 5),
            row("x-3", 1, BackupKind::Manual, 5),
            row("z-old", 1, BackupKind::Manual, 0),
        ];
        let mut reversed = rows.clone();
        reversed.reverse();
        for rows in [rows, reversed] {
            let p = plan(1, &rows, 2);
            assert_eq!(names(&p.keep, KeepReason::NewestN), ["x-3", "x-2"]);
            assert_eq!(p.delete, ["x-1", "z-old"]);
        }
    }

    #[test]
    fn protected_backups_are_never_deleted_whatever_keep_count() {
        let mut rows = vec![
            row("pre_restore_backup_1.db", 3, BackupKind::PreRestore, 0),
            row("pre_migration_1.db", 3, BackupKind::PreMigration, 1),
        ];
        let mut odd = row("odd", 3, BackupKind::Manual, 2);
        odd.kind = None;
        rows.push(odd);
        let mut flagged = row("flagged", 3, BackupKind::Manual, 3);
        flagged.is_protected = true;
        rows.push(flagged);
        rows.extend((10..15).map(|i| row(&format!("r{i}"), 3, BackupKind::Auto, i)));
        for keep in 1..=30 {
            let p = plan(3, &rows, keep);
            assert_eq!(p.protected, 4);
            for name in [
                "pre_restore_backup_1.db",
                "pre_migration_1.db",
                "odd",
                "flagged",
            ] {
                assert!(!p.delete.iter().any(|d| d == name), "{name} at keep {keep}");
                assert!(names(&p.keep, KeepReason::Protected).contains(&name));
            }
            assert_eq!(p.delete.len(), 5usize.saturating_sub(keep));
        }
    }

    #[test]
    fn a_plan_never_touches_another_owner_or_the_system() {
        let rows = vec![
            row("mine-1", 2, BackupKind::Auto, 1),
            row("mine-2", 2, BackupKind::Auto, 2),
            row("theirs-1", 3, BackupKind::Auto, 0),
            row("theirs-2", 3, BackupKind::Auto, 3),
            row("system", 0, BackupKind::Manual, 0),
        ];
        let p = plan(2, &rows, 1);
        assert_eq!(p.delete, ["mine-1"]);
        assert_eq!(p.total, 2);
        let system = plan(0, &rows, 1);
        assert!(system.delete.is_empty());
        assert_eq!(names(&system.keep, KeepReason::System), ["system"]);
    }

    #[test]
    fn damaged_backups_count_towards_nothing_and_are_never_deleted() {
        let mut rows: Vec<Entry> = (0..4)
            .map(|i| row(&format!("b{i}"), 1, BackupKind::Auto, i))
            .collect();
        rows[3].damaged = true; // the newest
        rows[0].damaged = true; // the oldest
        let mut p = plan(1, &rows, 1);
        assert_eq!(names(&p.keep, KeepReason::NewestN), ["b2"]);
        assert_eq!(names(&p.keep, KeepReason::Damaged), ["b3", "b0"]);
        assert_eq!(p.delete, ["b1"]);
        let order: Vec<&str> = p.verification_order().collect();
        assert_eq!(order, ["b2", "b1"]);
        assert!(!p.secure(|name| name == "b2").refused());
        assert_eq!(p.delete, ["b1"]);
    }

    #[test]
    fn nothing_to_verify_when_nothing_goes() {
        let rows = vec![row("a", 1, BackupKind::Auto, 1)];
        assert_eq!(plan(1, &rows, 3).verification_order().count(), 0);
    }

    #[test]
    fn nothing_to_delete_needs_no_verification() {
        let rows = vec![row("a", 1, BackupKind::Auto, 1)];
        let mut p = plan(1, &rows, 3);
        let safety = p.secure(|_| panic!("verified without need"));
        assert_eq!(safety, Safety::NotNeeded);
    }

    #[test]
    fn the_newest_passing_kept_backup_is_enough() {
        let rows: Vec<Entry> = (0..5)
            .map(|i| row(&format!("b{i}"), 1, BackupKind::Auto, i))
            .collect();
        let mut p = plan(1, &rows, 2);
        let mut asked = Vec::new();
        let safety = p.secure(|name| {
            asked.push(name.to_owned());
            name != "b4"
        });
        assert_eq!(asked, ["b4", "b3"]);
        assert_eq!(
            safety,
            Safety::Verified {
                verified: "b3".into(),
                failed: vec!["b4".into()]
            }
        );
        assert!(!safety.refused());
        assert_eq!(p.delete, ["b2", "b1", "b0"]);
    }

    #[test]
    fn when_no_kept_backup_passes_the_newest_passing_one_is_kept_too() {
        let rows: Vec<Entry> = (0..5)
            .map(|i| row(&format!("b{i}"), 1, BackupKind::Auto, i))
            .collect();
        let mut p = plan(1, &rows, 2);
        let safety = p.secure(|name| name == "b2" || name == "b0");
        assert_eq!(
            safety,
            Safety::Rescued {
                verified: "b2".into(),
                failed: vec!["b4".into(), "b3".into()]
            }
        );
        assert!(safety.refused());
        assert_eq!(p.delete, ["b1", "b0"]);
        assert_eq!(names(&p.keep, KeepReason::NewestVerified), ["b2"]);
        assert_eq!(names(&p.keep, KeepReason::NewestN), ["b4", "b3"]);
    }

    #[test]
    fn when_nothing_passes_nothing_is_deleted() {
        let rows: Vec<Entry> = (0..4)
            .map(|i| row(&format!("b{i}"), 1, BackupKind::Auto, i))
            .collect();
        let mut p = plan(1, &rows, 1);
        let safety = p.secure(|_| false);
        assert!(matches!(safety, Safety::NoneVerified { ref failed } if failed.len() == 4));
        assert!(p.delete.is_empty());
        assert_eq!(
            names(&p.keep, KeepReason::NoVerifiedBackup),
            ["b2", "b1", "b0"]
        );
    }
}
