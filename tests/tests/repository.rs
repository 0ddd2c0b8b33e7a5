//! The backup repository (`--repository`): round trips through the
//! service and the offline `repo` commands, encrypted and not;
//! deduplication across owners and days; damaged packs and indexes as
//! DATA_LOSS for exactly the backups they hold, found by the scrub and
//! never counted by retention; SIGKILL mid-backup.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;

use backup_tests::*;

/// A data directory whose server keeps backups in a repository.
struct Repo {
    data: DataDir,
    /// The key file, if encrypted.
    key: Option<PathBuf>,
    /// The S3 server holding the repository; `None`: on local disk.
    s3: Option<s3::S3Server>,
}

impl Repo {
    fn new(encrypted: bool) -> Self {
        Self::with_data(DataDir::new(), encrypted)
    }

    /// A repository in a bucket of a fresh local S3 server.
    fn on_s3(encrypted: bool) -> Self {
        Self {
            s3: Some(s3::S3Server::start()),
            ..Self::new(encrypted)
        }
    }

    fn with_data(data: DataDir, encrypted: bool) -> Self {
        let key = encrypted.then(|| {
            let key = data.path().join("repository.key");
            let out = data
                .command()
                .args(["repo", "init-key"])
                .arg(&key)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            key
        });
        Self {
            data,
            key,
            s3: None,
        }
    }

    /// Where the repository's objects are on disk (for S3, in the
    /// server's bucket directory, under the prefix).
    fn dir(&self) -> PathBuf {
        match &self.s3 {
            Some(s3) => s3.object_path("team/backups"),
            None => self.data.path().join("repository"),
        }
    }

    fn url(&self) -> String {
        match &self.s3 {
            Some(s3) => format!("s3://{}/team/backups", s3.bucket()),
            None => self.dir().display().to_string(),
        }
    }

    /// The environment of its processes: the repository, not full copies,
    /// and what reaches the S3 server, if any.
    fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![("BACKUP_FULL_COPIES".to_owned(), "false".to_owned())];
        env.extend(self.s3.as_ref().map(s3::S3Server::env).unwrap_or_default());
        env
    }

    /// The flags naming the repository.
    fn flags(&self) -> Vec<String> {
        let mut flags = vec!["--repository".into(), self.url()];
        match &self.key {
            Some(key) => flags.extend(["--repository-key-file".into(), key.display().to_string()]),
            None if self.s3.is_some() => flags.push("--allow-unencrypted-remote".into()),
            None => {}
        }
        flags
    }

    fn start(&self) -> Server {
        let mut args = self.flags();
        args.push("--no-scheduler".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.data
            .try_start_with(&args, &self.env())
            .unwrap_or_else(|line| panic!("server did not start: {line:?}"))
    }

    /// `backup-server repo ARGS` on the repository alone.
    fn repo(&self, args: &[&str]) -> Output {
        self.data
            .command()
            .envs(self.env())
            .args(self.flags())
            .arg("repo")
            .args(args)
            .output()
            .unwrap()
    }

    /// `repo list` given the repository's URL and nothing else (no key,
    /// no permission for an unencrypted remote).
    fn list_with_url_alone(&self) -> Output {
        self.data
            .command()
            .envs(self.env())
            .args(["--repository", &self.url(), "repo", "list"])
            .output()
            .unwrap()
    }

    /// `repo list`, parsed.
    fn listed(&self) -> Vec<serde_json::Value> {
        let out = self.repo(&["list"]);
        assert!(out.status.success(), "{out:?}");
        json_lines(&out.stdout)
    }

    fn stored_bytes(&self, name: &str) -> u64 {
        self.listed()
            .iter()
            .find(|m| m["name"] == name)
            .and_then(|m| m["stored_bytes"].as_u64())
            .unwrap_or_else(|| panic!("{name} is not listed"))
    }

    /// Every object file under `dir` of the repository (`data`, `index`).
    fn objects(&self, dir: &str) -> BTreeSet<PathBuf> {
        fn walk(dir: &Path, out: &mut BTreeSet<PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.insert(path);
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(&self.dir().join(dir), &mut out);
        out
    }

    /// Adds pages to the source that no backup holds (a new table of
    /// random blobs), creates backup `name` and returns the pack it added,
    /// which holds nothing any other backup needs.
    async fn create_with_own_pack(
        &self,
        backups: &mut backup_client::Backups,
        name: &str,
    ) -> PathBuf {
        let packs = self.objects("data");
        open(&self.data.source())
            .execute_batch(&format!(
                "CREATE TABLE \"only {name}\" (b BLOB); \
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40) \
                 INSERT INTO \"only {name}\" SELECT randomblob(3000) FROM n;"
            ))
            .unwrap();
        backups.create(Some(name)).await.unwrap();
        let added = self.objects("data").difference(&packs).next().cloned();
        added.expect("a pack of the new backup's own")
    }
}

/// A raw download of `filename`: its bytes and the SHA-256 its last
/// message carries.
async fn streamed_sha256(
    backups: &mut backup_client::Backups,
    filename: &str,
) -> (Vec<u8>, String) {
    let request = proto::DownloadBackupRequest {
        filename: filename.into(),
        owner_user_id: None,
    };
    let mut stream = backups
        .raw()
        .download_backup(request)
        .await
        .unwrap()
        .into_inner();
    let (mut bytes, mut sha256) = (Vec::new(), String::new());
    while let Some(message) = stream.message().await.unwrap() {
        bytes.extend(message.chunk);
        sha256 = message.sha256;
    }
    (bytes, sha256)
}

fn code_of<T: std::fmt::Debug>(result: Result<T, Error>) -> (Code, String) {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(Error::Status { code, message, .. }) => (code, message),
        Err(e) => panic!("not a status: {e}"),
    }
}

#[tokio::test]
async fn backups_round_trip_through_the_service_and_the_offline_tools() {
    for (encrypted, on_s3) in [(false, false), (true, false), (true, true), (false, true)] {
        let repo = if on_s3 {
            Repo::on_s3(encrypted)
        } else {
            Repo::new(encrypted)
        };
        if on_s3 && !encrypted {
            let refused = repo.list_with_url_alone();
            let said = String::from_utf8_lossy(&refused.stderr);
            assert!(
                !refused.status.success() && said.contains("--allow-unencrypted-remote"),
                "{said}"
            );
        }
        let server = repo.start();
        let mut backups = server.client(&repo.data.token(1, true)).await.backups();
        let created = backups.create(Some("first")).await.unwrap();
        let expected_rows = orders(&repo.data.source());

        let downloaded = repo.data.path().join("downloaded.db");
        backups
            .download_to("first.db", &downloaded, |_, _| {})
            .await
            .unwrap();
        let bytes = std::fs::read(&downloaded).unwrap();
        // The repository computes BLAKE3 alone; the download's last
        // message carries the SHA-256 of what it streamed.
        assert_eq!(created.sha256, "", "encrypted {encrypted}");
        assert_eq!(created.blake3, blake3::hash(&bytes).to_hex().as_str());
        let (streamed, sha256) = streamed_sha256(&mut backups, "first.db").await;
        assert!(streamed == bytes, "the raw download differs");
        assert_eq!(sha256, sha256_hex(&bytes));
        assert!(created.stored_bytes > 0);
        assert_eq!(bytes.len() as i64, created.size_bytes);
        assert_eq!(orders(&downloaded), expected_rows);
        assert!(!backups.verify("first.db").await.unwrap().damaged);

        grow_source(&repo.data, 50);
        let (restored, pre) = backups.restore("first.db").await.unwrap();
        assert_eq!(restored.filename, "first.db");
        assert_eq!(orders(&repo.data.source()), expected_rows);
        assert!(pre.is_protected);
        drop(server);

        // With the server stopped, from the repository alone.
        let names: BTreeSet<String> = repo
            .listed()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_owned())
            .collect();
        assert!(
            names.contains("first.db") && names.contains(&pre.filename),
            "{names:?}"
        );
        let offline = repo.data.path().join("offline.db");
        let out = repo.repo(&["restore", "first.db", "--to", offline.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            blake3::hash(&std::fs::read(&offline).unwrap())
                .to_hex()
                .as_str(),
            created.blake3
        );
        assert!(integrity_ok(&offline));
        let again = repo.repo(&["restore", "first.db", "--to", offline.to_str().unwrap()]);
        assert!(!again.status.success(), "never over an existing file");
        let out = repo.repo(&["check", "--read-data"]);
        assert!(out.status.success(), "{out:?}");
        assert!(
            !repo.objects("data").is_empty(),
            "packs are stored in {}",
            repo.url()
        );
        if encrypted {
            for object in repo.objects("data").iter().chain(&repo.objects("index")) {
                let stored = std::fs::read(object).unwrap();
                assert!(
                    !stored.windows(9).any(|w| w == b"CREATE TA"),
                    "{} holds plaintext",
                    object.display()
                );
            }
            let without_key = repo.list_with_url_alone();
            assert!(!without_key.status.success());
            let said = String::from_utf8_lossy(&without_key.stderr);
            assert!(said.contains("encrypted"), "{said}");
            rotated_keys_open_it_and_old_ones_do_not(repo);
        }
    }
}

/// `repo rotate-key`: afterwards only the new key file opens `repo`.
fn rotated_keys_open_it_and_old_ones_do_not(mut repo: Repo) {
    let new_key = repo.data.path().join("new.key");
    let made = repo
        .data
        .command()
        .args(["repo", "init-key"])
        .arg(&new_key)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let rotated = repo.repo(&["rotate-key", "--new-key-file", new_key.to_str().unwrap()]);
    assert!(rotated.status.success(), "{rotated:?}");
    let old = repo.repo(&["list"]);
    let said = String::from_utf8_lossy(&old.stderr);
    assert!(
        !old.status.success() && said.contains("opens none"),
        "{said}"
    );
    repo.key = Some(new_key);
    let out = repo.repo(&["check", "--read-data"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!repo.listed().is_empty());
}

#[tokio::test]
async fn identical_pages_are_stored_once_across_owners_and_days() {
    let repo = Repo::with_data(DataDir::with_rows(20_000), false);
    let source_size = std::fs::metadata(repo.data.source()).unwrap().len();
    let server = repo.start();
    create_users(&repo.data, [2]);
    let mut admin = server.client(&repo.data.token(1, true)).await.backups();
    let mut user = server.client(&repo.data.token(2, false)).await.backups();
    admin.create(Some("day-1")).await.unwrap();
    let same = user.create(Some("user-2-day-1")).await.unwrap();
    assert_eq!(same.stored_bytes, 0, "the service reports no new bytes");
    append_text_rows(&repo.data, 200);
    admin.create(Some("day-2")).await.unwrap();

    let first = repo.stored_bytes("day-1.db");
    let other_owner = repo.stored_bytes("user-2-day-1.db");
    let next_day = repo.stored_bytes("day-2.db");
    assert!(
        first > 0 && first < source_size,
        "compressed: {first} of {source_size}"
    );
    assert_eq!(
        other_owner, 0,
        "the same pages under another owner add nothing"
    );
    assert!(
        next_day * 10 < first,
        "a day of appends adds a fraction: {next_day} after {first}"
    );
}

/// Appends `rows` rows of text-like data, as an application's day might.
fn append_text_rows(data: &DataDir, rows: u32) {
    open(&data.source())
        .execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS notes (t TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
             INSERT INTO notes SELECT printf('note %d: customer asked about order %d', i, i * 7) FROM n;"
        ))
        .unwrap();
}

/// Flips one bit in the middle of a file.
fn flip_a_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    FlippedByteInAPack,
    DeletedPack,
    TruncatedIndex,
}

#[tokio::test]
async fn damaged_packs_and_indexes_are_data_loss_for_exactly_their_backups() {
    for how in [
        Damage::FlippedByteInAPack,
        Damage::DeletedPack,
        Damage::TruncatedIndex,
    ] {
        let repo = Repo::new(true);
        let server = repo.start();
        let mut backups = server.client(&repo.data.token(1, true)).await.backups();
        backups.create(Some("before")).await.unwrap();
        let indexes = repo.objects("index");
        let new_pack = repo.create_with_own_pack(&mut backups, "after").await;
        let new_index = repo
            .objects("index")
            .difference(&indexes)
            .next()
            .cloned()
            .unwrap();
        match how {
            Damage::FlippedByteInAPack => flip_a_byte(&new_pack),
            Damage::DeletedPack => std::fs::remove_file(&new_pack).unwrap(),
            Damage::TruncatedIndex => {
                let bytes = std::fs::read(&new_index).unwrap();
                std::fs::write(&new_index, &bytes[..bytes.len() / 2]).unwrap();
            }
        }

        let (code, message) = code_of(backups.verify("after.db").await);
        assert_eq!(code, Code::DataLoss, "{how:?}: {message}");
        assert!(message.contains("after.db"), "{how:?}: {message}");
        let dest = repo.data.path().join("downloaded.db");
        let (code, _) = code_of(backups.download_to("after.db", &dest, |_, _| {}).await);
        assert_eq!(code, Code::DataLoss, "{how:?}");
        assert!(!dest.exists());
        let source_before = std::fs::read(repo.data.source()).unwrap();
        let (code, _) = code_of(backups.restore("after.db").await);
        assert_eq!(code, Code::DataLoss, "{how:?}");
        assert_eq!(std::fs::read(repo.data.source()).unwrap(), source_before);
        assert_eq!(
            backups.list_all().await.unwrap().len(),
            2,
            "{how:?}: no pre-restore backup for a refused restore"
        );
        assert!(backups.get("after.db").await.unwrap().damaged);

        assert!(
            !backups.verify("before.db").await.unwrap().damaged,
            "{how:?}"
        );
        drop(server);
        let out = repo.repo(&["check", "--read-data"]);
        assert!(!out.status.success(), "{how:?}");
        let damaged = String::from_utf8(out.stdout).unwrap();
        assert!(damaged.contains("damaged: after.db"), "{how:?}: {damaged}");
        assert!(!damaged.contains("before.db"), "{how:?}: {damaged}");
    }
}

/// Retention checks the newest backups it keeps: one whose only pack is
/// damaged counts for nothing, and the newest intact one is kept instead.
#[tokio::test]
async fn retention_never_counts_a_backup_whose_pack_is_damaged() {
    let repo = Repo::new(true);
    let server = repo.start();
    let user = server.client(&repo.data.token(2, false)).await;
    let mut backups = user.backups();
    for name in ["a", "b"] {
        backups.create(Some(name)).await.unwrap();
    }
    // The newest backup's own pages, damaged.
    flip_a_byte(&repo.create_with_own_pack(&mut backups, "c").await);

    let mut retention = user.retention();
    let summary = retention
        .summary(1, backup_client::Owners::Caller)
        .await
        .unwrap();
    assert_eq!(summary.filenames_to_delete, ["a.db"]);
    let reason = |name| kept_reason(&summary, name);
    assert_eq!(reason("c.db"), Some(proto::KeepReason::Damaged));
    assert_eq!(reason("b.db"), Some(proto::KeepReason::NewestN));
    let deleted = retention
        .apply(1, backup_client::Owners::Caller)
        .await
        .unwrap();
    assert_eq!(deleted, ["a.db"]);
    assert_eq!(listed(&mut backups).await, ["c.db", "b.db"]);
    assert!(backups.get("c.db").await.unwrap().damaged);
    assert!(!backups.verify("b.db").await.unwrap().damaged);
    assert_audited(&repo.data, "backup_files.verify", false, "retention");
}

#[tokio::test]
async fn a_backup_killed_midway_leaves_the_repository_whole() {
    let repo = Repo::with_data(DataDir::with_rows(20_000), true);
    let mut server = repo.start();
    let token = repo.data.token(1, true);
    server
        .client(&token)
        .await
        .backups()
        .create(Some("kept"))
        .await
        .unwrap();
    grow_source(&repo.data, 5_000);
    for delay_ms in [0, 30, 120, 400] {
        let (url, creator) = (server.url.clone(), token.clone());
        let create = tokio::spawn(async move {
            let mut backups = Client::connect(&url, &creator).await.unwrap().backups();
            backups.create(None).await
        });
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        server.kill();
        let _ = create.await;
        let out = repo.repo(&["check", "--read-data"]);
        assert!(
            out.status.success(),
            "after a kill at {delay_ms} ms: {out:?}"
        );
        server = repo.start();
        let mut backups = server.client(&token).await.backups();
        for backup in backups.list_all().await.unwrap() {
            let verified = backups.verify(&backup.filename).await.unwrap();
            assert!(!verified.damaged, "{}", backup.filename);
        }
    }
    assert!(
        file_names(&repo.data.backups_dir())
            .iter()
            .all(|n| !n.starts_with(".tmp-")),
        "no scratch file outlives the restart"
    );
}

#[tokio::test]
async fn a_prune_reclaims_deleted_backups_and_races_no_backup() {
    let repo = Repo::with_data(DataDir::with_rows(5_000), true);
    let server = repo.start();
    let mut backups = server.client(&repo.data.token(1, true)).await.backups();
    for day in 1..=3 {
        open(&repo.data.source())
            .execute_batch(&format!(
                "UPDATE orders SET amount_cents = amount_cents + {day}"
            ))
            .unwrap();
        backups.create(Some(&format!("day-{day}"))).await.unwrap();
    }
    let before = backups.repository_stats().await.unwrap();
    assert_eq!(before.backups, 3);
    assert!(
        before.deduplication_ratio > 0.0 && before.compression_ratio > 1.0,
        "{before:?}"
    );
    for day in 1..=2 {
        backups
            .delete(&format!("day-{day}.db"), false)
            .await
            .unwrap();
    }
    let pruned = backups.prune_repository().await.unwrap();
    assert!(
        pruned.stored_bytes_after < pruned.stored_bytes_before && pruned.packs_deleted > 0,
        "{pruned:?}"
    );
    let after = backups.repository_stats().await.unwrap();
    assert!(after.stored_bytes < before.stored_bytes && after.last_prune_at.is_some());
    assert!(!backups.verify("day-3.db").await.unwrap().damaged);
    let mut user = server.client(&repo.data.token(2, false)).await.backups();
    assert_eq!(
        code_of(user.prune_repository().await).0,
        Code::PermissionDenied
    );
    assert_eq!(
        code_of(user.repository_stats().await).0,
        Code::PermissionDenied
    );

    // Four backups while prunes run: each must reference only what stays.
    let token = repo.data.token(1, true);
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (url, token) = (server.url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let mut backups = Client::connect(&url, &token).await.unwrap().backups();
            backups.create(Some(&format!("racing-{i}"))).await.unwrap()
        }));
    }
    for _ in 0..4 {
        backups.prune_repository().await.unwrap();
    }
    for task in tasks {
        task.await.unwrap();
    }
    backups.prune_repository().await.unwrap();
    for backup in backups.list_all().await.unwrap() {
        assert!(
            !backups.verify(&backup.filename).await.unwrap().damaged,
            "{}",
            backup.filename
        );
    }
    drop(server);
    let out = repo.repo(&["check", "--read-data"]);
    assert!(out.status.success(), "{out:?}");
}

/// Full copies from before the repository, and files other tools drop in,
/// with one damaged: what a server given `--repository` finds.
struct Legacy {
    created: Vec<proto::Backup>,
    damaged: String,
}

async fn legacy_backups(data: &DataDir) -> Legacy {
    let server = data.start(&["--no-scheduler"]);
    create_users(data, [2]);
    let mut admin = server.client(&data.token(1, true)).await.backups();
    let mut user = server.client(&data.token(2, false)).await.backups();
    let mut created = vec![admin.create(Some("old-admin")).await.unwrap()];
    created.push(user.create(Some("old-user")).await.unwrap());
    open(&data.source())
        .execute_batch("CREATE TABLE marked (b BLOB); INSERT INTO marked VALUES (zeroblob(3000) || 'MARK-123456');")
        .unwrap();
    let damaged = admin.create(Some("old-damaged")).await.unwrap();
    drop(server);
    let path = data.backups_dir().join(&damaged.filename);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.windows(11).position(|w| w == b"MARK-123456").unwrap();
    bytes[at + 5] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    // Dropped in by the application, and a file that is not SQLite.
    std::fs::copy(
        data.source(),
        data.backups_dir().join("pre_migration_20261130T000000Z.db"),
    )
    .unwrap();
    std::fs::write(data.backups_dir().join("notes.db"), "not a database").unwrap();
    Legacy {
        created,
        damaged: damaged.filename,
    }
}

#[tokio::test]
async fn full_copies_in_the_backups_directory_are_imported_with_their_names_and_marks() {
    let repo = Repo::with_data(DataDir::new().keeping_full_copies(), true);
    let legacy = legacy_backups(&repo.data).await;
    let server = repo.start();
    let mut admin = server.client(&repo.data.token(1, true)).await.backups();
    let listed = admin.list_all().await.unwrap();
    for old in &legacy.created {
        let now = listed
            .iter()
            .find(|b| b.filename == old.filename && b.owner_user_id == old.owner_user_id);
        let now = now.unwrap_or_else(|| panic!("{} is not listed", old.filename));
        assert_eq!(
            (now.created_at, now.kind, now.sha256.as_str()),
            (old.created_at, old.kind, old.sha256.as_str())
        );
        assert!(!now.blake3.is_empty() && !now.damaged, "{now:?}");
    }
    let damaged = listed
        .iter()
        .find(|b| b.filename == legacy.damaged)
        .unwrap();
    assert!(
        damaged.damaged,
        "the damaged copy keeps its mark: {damaged:?}"
    );
    assert_eq!(
        code_of(admin.verify(&legacy.damaged).await).0,
        Code::DataLoss
    );
    let adopted = listed
        .iter()
        .find(|b| b.filename.starts_with("pre_migration_"))
        .unwrap();
    assert!(adopted.is_protected && adopted.owner_user_id == 0);

    let mut user = server.client(&repo.data.token(2, false)).await.backups();
    assert!(!user.verify("old-user.db").await.unwrap().damaged);
    let old_user = &legacy.created[1];
    let dest = repo.data.path().join("old-user.db");
    let got = server
        .client(&repo.data.token(1, true))
        .await
        .backups()
        .owned_by(2)
        .download_to(&old_user.filename, &dest, |_, _| {})
        .await
        .unwrap();
    assert_eq!(got.sha256, old_user.sha256);
    assert_eq!(sha256_hex(&std::fs::read(&dest).unwrap()), old_user.sha256);

    let left = file_names(&repo.data.backups_dir());
    assert!(left.contains(&"notes.db".to_string()), "{left:?}");
    assert!(
        left.iter().all(|n| n == "notes.db" || n.starts_with('.')),
        "every imported file is gone once its copy verified: {left:?}"
    );
    drop(server);
    let out = repo.repo(&["check", "--read-data"]);
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test]
async fn an_import_killed_midway_resumes_and_loses_nothing() {
    let repo = Repo::with_data(DataDir::with_rows(2_000).keeping_full_copies(), false);
    grow_source(&repo.data, 3_000);
    let server = repo.data.start(&["--no-scheduler"]);
    let token = repo.data.token(1, true);
    let mut backups = server.client(&token).await.backups();
    let mut created = Vec::new();
    for i in 0..3 {
        append_text_rows(&repo.data, 500);
        created.push(backups.create(Some(&format!("old-{i}"))).await.unwrap());
    }
    drop(server);
    for delay_ms in [20, 150, 400, 900] {
        let mut importing = repo
            .data
            .command()
            .envs(repo.env())
            .args(repo.flags())
            .args(["--listen", "127.0.0.1:0", "--no-scheduler"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        importing.kill().unwrap();
        importing.wait().unwrap();
        let out = repo.repo(&["check", "--read-data"]);
        assert!(
            out.status.success(),
            "after a kill at {delay_ms} ms: {out:?}"
        );
    }
    let server = repo.start();
    let mut backups = server.client(&token).await.backups();
    let listed = backups.list_all().await.unwrap();
    for old in &created {
        let now = listed.iter().find(|b| b.filename == old.filename).unwrap();
        assert_eq!(now.sha256, old.sha256);
        assert!(!backups.verify(&old.filename).await.unwrap().damaged);
    }
    let left = file_names(&repo.data.backups_dir());
    assert!(left.iter().all(|n| n.starts_with('.')), "{left:?}");
}

// CleanupEmptyBackups removes a file dropped beside the repository in two
// steps: a rename to `.deleting-<name>`, then the unlink. A SIGKILL between
// them leaves the file for the next cleanup: nothing of it is stored, so
// the import at start-up puts it back under its name. The window is a few
// microseconds, too narrow for a timed kill to hit, so the server is
// SIGKILLed and the rename it would have made is made by hand.
#[tokio::test]
async fn a_cleanup_killed_between_rename_and_unlink_leaves_the_file_for_the_next() {
    let repo = Repo::new(false);
    let token = repo.data.token(1, true);
    let mut server = repo.start();
    let client = server.client(&token).await;
    let good = client.backups().create(Some("good")).await.unwrap();
    let dir = repo.data.backups_dir();
    std::fs::write(dir.join("notes.db"), b"not a database at all").unwrap();
    std::fs::write(dir.join("empty.db"), b"").unwrap();
    server.kill();
    std::fs::rename(dir.join("notes.db"), dir.join(".deleting-notes.db")).unwrap();

    let server = repo.start();
    let names = file_names(&dir);
    assert!(
        names.contains(&"notes.db".to_owned())
            && !names.iter().any(|n| n.starts_with(".deleting-")),
        "{names:?}"
    );
    let client = server.client(&token).await;
    let listed: Vec<String> = client
        .backups()
        .list_all()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.filename)
        .collect();
    assert_eq!(listed, ["good.db"]);
    let mut deleted = client.retention().cleanup_empty().await.unwrap();
    deleted.sort();
    assert_eq!(deleted, ["empty.db", "notes.db"]);
    let left = file_names(&dir);
    assert!(left.iter().all(|n| n.starts_with('.')), "{left:?}");
    let verified = client.backups().verify(&good.filename).await.unwrap();
    assert!(!verified.damaged);
    let out = repo.repo(&["check", "--read-data"]);
    assert!(out.status.success(), "{out:?}");
}

/// SIGKILLs the server `delays_ms` after `call` starts, each time on a
/// fresh server, checking the repository whole after each kill.
async fn kill_during<F, Fut>(repo: &Repo, token: &str, delays_ms: &[u64], call: F)
where
    F: Fn(backup_client::Backups) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    for &delay_ms in delays_ms {
        let mut server = repo.start();
        let backups = server.client(token).await.backups();
        let running = tokio::spawn(call(backups));
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        server.kill();
        let _ = running.await;
        let out = repo.repo(&["check", "--read-data"]);
        assert!(
            out.status.success(),
            "after a kill at {delay_ms} ms: {out:?}"
        );
    }
}

#[tokio::test]
async fn a_prune_or_restore_killed_midway_leaves_every_backup_whole() {
    let repo = Repo::with_data(DataDir::with_rows(2_000), true);
    let token = repo.data.token(1, true);
    let server = repo.start();
    let mut backups = server.client(&token).await.backups();
    grow_source(&repo.data, 2_000);
    for day in 0..6 {
        open(&repo.data.source())
            .execute_batch(&format!(
                "UPDATE blobs SET b = randomblob(4000) WHERE rowid % 6 = {day}"
            ))
            .unwrap();
        backups.create(Some(&format!("day-{day}"))).await.unwrap();
    }
    for day in 0..5 {
        backups
            .delete(&format!("day-{day}.db"), false)
            .await
            .unwrap();
    }
    let kept = backups.get("day-5.db").await.unwrap();
    drop(server);

    kill_during(
        &repo,
        &token,
        &[5, 40, 120, 300],
        |mut backups| async move {
            let _ = backups.prune_repository().await;
        },
    )
    .await;
    kill_during(
        &repo,
        &token,
        &[5, 60, 200, 500],
        |mut backups| async move {
            let _ = backups.restore("day-5.db").await;
        },
    )
    .await;

    let server = repo.start();
    let mut backups = server.client(&token).await.backups();
    backups.prune_repository().await.unwrap();
    for backup in backups.list_all().await.unwrap() {
        let verified = backups.verify(&backup.filename).await.unwrap();
        assert!(!verified.damaged, "{}", backup.filename);
    }
    assert_eq!(backups.get("day-5.db").await.unwrap().blake3, kept.blake3);
    assert!(integrity_ok(&repo.data.source()), "the source is whole");
}

#[tokio::test]
async fn damage_found_in_one_backup_marks_every_backup_sharing_it() {
    let repo = Repo::new(true);
    let server = repo.start();
    create_users(&repo.data, [2]);
    let mut admin = server.client(&repo.data.token(1, true)).await.backups();
    let mut user = server.client(&repo.data.token(2, false)).await.backups();
    admin.create(Some("mine")).await.unwrap();
    user.create(Some("theirs")).await.unwrap();
    let packs = repo.objects("data");
    assert_eq!(packs.len(), 1, "the second backup shares every chunk");
    let pack = packs.into_iter().next().unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[10] ^= 0x08;
    std::fs::write(&pack, bytes).unwrap();

    assert_eq!(code_of(admin.verify("mine.db").await).0, Code::DataLoss);
    // Never verified by anyone: the sweep finds the shared chunk.
    let mut owned = server
        .client(&repo.data.token(1, true))
        .await
        .backups()
        .owned_by(2);
    let mut marked = false;
    for _ in 0..100 {
        if owned.get("theirs.db").await.unwrap().damaged {
            marked = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(marked, "the backup sharing the damaged chunk is marked");
    assert_audited(&repo.data, "backup_files.verify", false, "shared");
}

#[tokio::test]
async fn by_default_backups_go_to_a_repository_in_the_backups_directory() {
    let data = DataDir::new().keeping_full_copies();
    let legacy = data.start(&["--no-scheduler"]);
    let token = data.token(1, true);
    let old = legacy
        .client(&token)
        .await
        .backups()
        .create(Some("old"))
        .await
        .unwrap();
    drop(legacy);
    let default_storage = [("BACKUP_FULL_COPIES".to_owned(), "false".to_owned())];
    let server = data
        .try_start_with(&["--no-scheduler"], &default_storage)
        .unwrap();
    let mut backups = server.client(&token).await.backups();
    let new = backups.create(Some("new")).await.unwrap();
    assert!(!new.blake3.is_empty(), "a repository backup: {new:?}");
    let moved = backups.get("old.db").await.unwrap();
    assert_eq!(
        (moved.sha256, moved.created_at),
        (old.sha256, old.created_at)
    );
    assert!(data.backups_dir().join("repository/config").is_file());
    let left = file_names(&data.backups_dir());
    assert!(!left.iter().any(|n| n.ends_with(".db")), "{left:?}");
    drop(server);
    let both = data
        .command()
        .env("BACKUP_FULL_COPIES", "true")
        .args(["--repository", "elsewhere", "repo", "list"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&both.stderr);
    assert!(
        !both.status.success() && said.contains("not both"),
        "{said}"
    );
}

/// The repository in a backups directory on its own small file system:
/// a full disk is RESOURCE_EXHAUSTED, a read-only one FAILED_PRECONDITION,
/// and a directory gone (an unmounted volume) FAILED_PRECONDITION too,
/// never recreated nor read as damage; the backups stored before stay
/// whole through all three.
#[tokio::test]
async fn a_full_read_only_or_vanished_backups_directory_is_reported_and_loses_nothing() {
    let data = DataDir::new();
    let vol = data.path().join("vol");
    let tmpfs = Tmpfs::mount(&vol, "8m");
    let backups_dir = vol.join("backups");
    let default_storage = [("BACKUP_FULL_COPIES".to_owned(), "false".to_owned())];
    let flags = [
        "--no-scheduler",
        "--backups-dir",
        backups_dir.to_str().unwrap(),
    ];
    let server = data.try_start_with(&flags, &default_storage).unwrap();
    let mut backups = server.client(&data.token(1, true)).await.backups();
    let before = backups.create(Some("before")).await.unwrap();
    let repository = backups_dir.join("repository");
    let objects_now = || all_files(&repository);
    let stored = objects_now();

    // Full: random rows that compress to more than the space left.
    let filler = vol.join("filler");
    std::fs::write(&filler, vec![0u8; 7 << 20]).unwrap();
    grow_source(&data, 600);
    let (code, message) = code_of(backups.create(Some("full")).await);
    assert_eq!(code, Code::ResourceExhausted, "{message}");
    assert!(message.contains("disk space"), "{message}");
    assert_eq!(backups.list_all().await.unwrap(), vec![before.clone()]);
    let leftovers: Vec<_> = objects_now().difference(&stored).cloned().collect();
    // Only whole packs may stay (no index names them: a prune takes them),
    // each under its own BLAKE3, never a part of one.
    for path in &leftovers {
        let bytes = std::fs::read(repository.join(path)).unwrap();
        let id = blake3::hash(&bytes).to_hex();
        assert_eq!(path, &format!("data/{}/{id}", &id[..2]), "{leftovers:?}");
    }
    std::fs::remove_file(&filler).unwrap();
    let full = backups.create(Some("full")).await.unwrap();

    // Read-only: nothing is written, reading goes on.
    tmpfs.remount("ro");
    let (code, message) = code_of(backups.create(Some("x")).await);
    assert_eq!(code, Code::FailedPrecondition, "{message}");
    assert!(message.contains("not writable"), "{message}");
    let (code, message) = code_of(backups.delete("before.db", false).await);
    assert_eq!(code, Code::FailedPrecondition, "{message}");
    assert!(message.contains("not writable"), "{message}");
    let dest = data.path().join("copy.db");
    backups
        .download_to("before.db", &dest, |_, _| {})
        .await
        .unwrap();
    assert_eq!(
        blake3::hash(&std::fs::read(&dest).unwrap())
            .to_hex()
            .as_str(),
        before.blake3
    );
    tmpfs.remount("rw");
    backups.create(Some("x")).await.unwrap();

    // Gone (moved away, as an unmounted volume would be): every call that
    // needs it says so, and nothing is marked damaged or written elsewhere.
    let away = vol.join("away");
    std::fs::rename(&backups_dir, &away).unwrap();
    let created = backups.create(Some("y")).await.map(drop);
    let verified = backups.verify("full.db").await.map(drop);
    let downloaded = backups
        .download_to("before.db", &dest, |_, _| {})
        .await
        .map(drop);
    let deleted = backups.delete("before.db", false).await;
    for result in [created, verified, downloaded, deleted] {
        let (code, message) = code_of(result);
        assert_eq!(code, Code::FailedPrecondition, "{message}");
        assert!(message.contains("does not exist"), "{message}");
    }
    assert!(
        !backups_dir.exists(),
        "recreated behind the operator's back"
    );
    std::fs::rename(&away, &backups_dir).unwrap();
    for name in ["before.db", "full.db", "x.db"] {
        let verified = backups.verify(name).await.unwrap();
        assert!(!verified.damaged, "{name}: {verified:?}");
    }
    assert_eq!(
        full.size_bytes,
        std::fs::metadata(data.source()).unwrap().len() as i64
    );
}

/// Every file under `dir`, by its path there.
fn all_files(dir: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(at) = dirs.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            match path.is_dir() {
                true => dirs.push(path),
                false => {
                    let name = path.strip_prefix(dir).unwrap();
                    found.insert(name.display().to_string());
                }
            }
        }
    }
    found
}

#[tokio::test]
async fn snapshots_of_a_wal_source_under_a_steady_writer_are_consistent() {
    let repo = Repo::with_data(DataDir::new(), false);
    grow_source(&repo.data, 3000);
    let server = repo.start();
    let mut backups = server.client(&repo.data.token(1, true)).await.backups();
    let writer = start_wal_writer(&repo.data.source());
    let mut counts = Vec::new();
    for i in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let b = backups.create(Some(&format!("live-{i}"))).await.unwrap();
        let path = repo.data.path().join(format!("live-{i}.db"));
        backups
            .download_to(&b.filename, &path, |_, _| {})
            .await
            .unwrap();
        let n = consistent_ledger(&path, 3000);
        counts.push(n);
    }
    drop(writer);
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    assert!(*counts.last().unwrap() > 0, "the writer never wrote");
}

#[tokio::test]
async fn retention_keeps_the_newest_and_the_prune_after_it_frees_the_rest() {
    let repo = Repo::with_data(DataDir::with_rows(3_000), true);
    let server = repo.start();
    let client = server.client(&repo.data.token(1, true)).await;
    let mut backups = client.backups();
    for day in 0..5 {
        open(&repo.data.source())
            .execute_batch(&format!(
                "UPDATE orders SET amount_cents = amount_cents + {day} + 1"
            ))
            .unwrap();
        backups.create(Some(&format!("day-{day}"))).await.unwrap();
    }
    let before = backups.repository_stats().await.unwrap();
    let deleted = client
        .retention()
        .apply(1, backup_client::Owners::Caller)
        .await
        .unwrap();
    assert_eq!(deleted.len(), 4, "{deleted:?}");
    // The prune after retention runs in the background.
    let mut after = backups.repository_stats().await.unwrap();
    for _ in 0..100 {
        if after.last_prune_at.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        after = backups.repository_stats().await.unwrap();
    }
    assert!(after.last_prune_at.is_some(), "a prune followed retention");
    assert!(
        after.stored_bytes < before.stored_bytes,
        "{before:?} then {after:?}"
    );
    assert_eq!(after.backups, 1);
    assert!(!backups.verify("day-4.db").await.unwrap().damaged);
    assert_audited(&repo.data, "backup_files.prune", true, "retention");
}

#[tokio::test]
async fn the_scrub_verifies_every_backup_and_finds_a_damaged_pack() {
    let repo = Repo::new(false);
    let mut args = repo.flags();
    args.extend([
        "--no-scheduler".into(),
        "--verify-interval".into(),
        "2s".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = repo.data.try_start_with(&args, &repo.env()).unwrap();
    let mut backups = server.client(&repo.data.token(1, true)).await.backups();
    for i in 0..3 {
        backups.create(Some(&format!("same-{i}"))).await.unwrap();
    }
    let mut verified = Vec::new();
    for _ in 0..100 {
        verified = backups.list_all().await.unwrap();
        if verified.iter().all(|b| b.last_verified_at.is_some()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        verified
            .iter()
            .all(|b| b.last_verified_at.is_some() && !b.damaged),
        "{verified:?}"
    );
    let scrubbed = audit_events(&repo.data, "backup_files.verify");
    assert!(
        scrubbed
            .iter()
            .filter(|(_, ok, d)| *ok && d["trigger"] == "scrub")
            .count()
            >= 3,
        "{scrubbed:?}"
    );

    // A byte flipped in a pack only a new backup holds: the scrub finds it
    // within its interval, and the others stay intact.
    flip_a_byte(&repo.create_with_own_pack(&mut backups, "doomed").await);
    let mut doomed = backups.get("doomed.db").await.unwrap();
    for _ in 0..300 {
        if doomed.damaged {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        doomed = backups.get("doomed.db").await.unwrap();
    }
    assert!(doomed.damaged, "the scrub did not find the damage in 30 s");
    assert_audited(&repo.data, "backup_files.verify", false, "scrub");
    for i in 0..3 {
        let same = backups.get(&format!("same-{i}.db")).await.unwrap();
        assert!(!same.damaged, "{}", same.filename);
    }
}

#[tokio::test]
async fn an_s3_store_that_is_down_fails_in_seconds_and_names_the_repository() {
    let mut repo = Repo::on_s3(true);
    let server = repo.start();
    let mut backups = server.client(&repo.data.token(1, true)).await.backups();
    backups.create(Some("before")).await.unwrap();
    repo.s3.as_mut().unwrap().kill();
    let started = std::time::Instant::now();
    let (code, message) = code_of(backups.create(Some("during")).await);
    assert_eq!(code, Code::Unavailable, "{message}");
    assert!(message.contains("s3://"), "{message}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    drop(server);
    let out = repo.repo(&["list"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("s3://"), "{said}");
}

#[tokio::test]
async fn a_token_minted_before_the_first_start_leaves_the_repository_to_the_server() {
    // An operator's first command, before the server ever ran with its key.
    let repo = Repo::new(true);
    let out = repo
        .data
        .command()
        .envs(repo.env())
        .args(["token", "create", "--user-id", "1", "--admin"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let default = repo.data.backups_dir().join("repository");
    assert!(
        !default.exists() && !repo.dir().exists(),
        "token create created a repository"
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let server = repo.start();
    let mut backups = server.client(&token).await.backups();
    backups.create(Some("first")).await.unwrap();
    let config = std::fs::read_to_string(repo.dir().join("config")).unwrap();
    assert!(config.contains("\"encrypted\": true"), "{config}");
}
