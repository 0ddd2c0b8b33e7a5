//! The [`BackupStorage`] contract as tests: every implementation runs
//! [`check`] against a fresh, empty storage of its own (see the tests at
//! the end of `directory.rs`).

use std::path::Path;

use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{BackupStorage, ContentFacts};
use crate::backup::sqlite::Content;
use crate::error::Error;

/// Runs every check of the contract against `storage`, which must be
/// empty; `scratch` is a directory for the source databases it snapshots.
pub async fn check(storage: &dyn BackupStorage, scratch: &Path) {
    let source = scratch.join("contract-source.db");
    rusqlite::Connection::open(&source)
        .unwrap()
        .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (randomblob(50000));")
        .unwrap();

    publish_is_create_if_absent(storage, &source).await;
    reads_are_checked(storage).await;
    deletes_are_begun_then_finished_or_undone(storage).await;
    cancelled_staging_keeps_nothing(storage, &source).await;
    bytes_staged_from_a_stream_publish_as_they_came(storage).await;
    a_prune_keeps_what_names_reference(storage).await;
    a_names_stamp_changes_with_the_names(storage, &source).await;
    assert!(
        storage.recover().await.unwrap().is_empty(),
        "nothing left staged"
    );
}

/// Once a stamp is given it must differ after a name comes or goes. A
/// storage may answer `None` for a while after a change: this waits up to
/// 3 s for a stamp, so an implementation that never gives one passes too.
async fn a_names_stamp_changes_with_the_names(storage: &dyn BackupStorage, source: &Path) {
    let settled = || async {
        for _ in 0..30 {
            if let Some(stamp) = storage.names_stamp().await.unwrap() {
                return Some(stamp);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        None
    };
    let Some(before) = settled().await else {
        return;
    };
    assert_eq!(storage.names_stamp().await.unwrap(), Some(before.clone()));
    let staged = storage
        .stage(source, "the source", "stamp", &CancellationToken::new())
        .await
        .unwrap();
    staged.publish("stamped.db").await.unwrap();
    let added = storage.names_stamp().await.unwrap();
    assert_ne!(added, Some(before), "a published name changes the stamp");
    let added = settled().await.expect("a stamp again once settled");
    assert!(storage.begin_delete("stamped.db").await.unwrap());
    storage.finish_delete("stamped.db").await.unwrap();
    assert_ne!(
        storage.names_stamp().await.unwrap(),
        Some(added),
        "a delete changes it"
    );
}

async fn publish_is_create_if_absent(storage: &dyn BackupStorage, source: &Path) {
    let staged = storage
        .stage(source, "the source", "a", &CancellationToken::new())
        .await
        .unwrap();
    assert!(!storage.contains("a.db").await.unwrap());
    staged.publish("a.db").await.unwrap();
    staged.publish("b.db").await.unwrap();
    storage.flush().await.unwrap();
    assert!(storage.contains("a.db").await.unwrap());
    assert!(matches!(
        staged.publish("a.db").await,
        Err(Error::AlreadyExists(_))
    ));
    drop(staged);
    let mut names = storage.list().await.unwrap().names;
    names.sort();
    assert_eq!(
        names,
        ["a.db", "b.db"],
        "a name exists exactly when published"
    );
    let a = storage.describe("a.db").await.unwrap().facts;
    assert_eq!(a, storage.describe("b.db").await.unwrap().facts);
    let verified = storage.verify("a.db", &a).await.unwrap();
    assert_eq!(verified.stamp, storage.stamp("a.db").await.unwrap());
    let sniffed = storage
        .sniff(vec!["a.db".into(), "none.db".into()])
        .await
        .unwrap();
    assert!(matches!(sniffed[..], [Ok(Content::Sqlite), Err(_)]));
}

async fn reads_are_checked(storage: &dyn BackupStorage) {
    let facts = storage.describe("a.db").await.unwrap().facts;
    let mut bytes = Vec::new();
    let mut chunks = storage.open("a.db", &facts, 4096).await.unwrap();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.unwrap();
        assert!(!chunk.is_empty() && chunk.len() <= 4096);
        bytes.extend(chunk);
    }
    assert_eq!(i64::try_from(bytes.len()).ok(), Some(facts.size_bytes));

    let wrong_size = ContentFacts {
        size_bytes: facts.size_bytes + 1,
        ..facts.clone()
    };
    assert!(matches!(
        storage.open("a.db", &wrong_size, 4096).await,
        Err(Error::DataLoss(_))
    ));
    let wrong_digest = wrong_digests(&facts);
    let mut chunks = storage.open("a.db", &wrong_digest, 4096).await.unwrap();
    let mut last = None;
    while let Some(chunk) = chunks.next().await {
        last = Some(chunk);
    }
    assert!(matches!(last, Some(Err(Error::DataLoss(_)))), "{last:?}");
    assert!(matches!(
        storage.verify("a.db", &wrong_digest).await,
        Err(Error::DataLoss(_))
    ));
    assert!(matches!(
        storage.open("none.db", &facts, 4096).await,
        Err(Error::NotFound(_))
    ));
}

async fn deletes_are_begun_then_finished_or_undone(storage: &dyn BackupStorage) {
    let facts = storage.describe("a.db").await.unwrap().facts;
    let _lock = storage.lock().await.unwrap();
    assert!(storage.begin_delete("a.db").await.unwrap());
    assert!(!storage.contains("a.db").await.unwrap());
    let listing = storage.list().await.unwrap();
    assert_eq!(listing.names, ["b.db"]);
    assert_eq!(listing.deleting, ["a.db"]);
    assert!(matches!(
        storage.verify("a.db", &facts).await,
        Err(Error::NotFound(_))
    ));
    storage.undo_delete("a.db").await.unwrap();
    assert!(storage.contains("a.db").await.unwrap());
    assert!(storage.begin_delete("a.db").await.unwrap());
    storage.finish_delete("a.db").await.unwrap();
    assert!(storage.list().await.unwrap().deleting.is_empty());
    assert!(!storage.begin_delete("a.db").await.unwrap());
    assert!(matches!(
        storage.verify("a.db", &facts).await,
        Err(Error::DataLoss(_))
    ));
}

async fn cancelled_staging_keeps_nothing(storage: &dyn BackupStorage, source: &Path) {
    let cancel = CancellationToken::new();
    cancel.cancel();
    let staged = storage.stage(source, "the source", "c", &cancel).await;
    assert!(matches!(staged, Err(Error::Cancelled(_))));
    assert_eq!(storage.list().await.unwrap().names, ["b.db"]);
}

async fn a_prune_keeps_what_names_reference(storage: &dyn BackupStorage) {
    let facts = storage.describe("b.db").await.unwrap().facts;
    storage.prune().await.unwrap();
    storage.verify("b.db", &facts).await.unwrap();
}

async fn bytes_staged_from_a_stream_publish_as_they_came(storage: &dyn BackupStorage) {
    let facts = storage.describe("b.db").await.unwrap().facts;
    let taken_at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
    let bytes = storage.open("b.db", &facts, 1000).await.unwrap();
    let staged = storage.stage_bytes(bytes, taken_at, "copy").await.unwrap();
    assert_eq!(
        (staged.facts.size_bytes, staged.taken_at),
        (facts.size_bytes, taken_at)
    );
    // Every digest both know agrees (bytes moved in may gain a SHA-256).
    for (staged, known) in [
        (&staged.facts.sha256, &facts.sha256),
        (&staged.facts.blake3, &facts.blake3),
    ] {
        assert!(staged.is_none() || known.is_none() || staged == known);
    }
    assert!(
        staged.facts.sha256.is_some(),
        "bytes moved in keep a SHA-256"
    );
    staged.publish("copy.db").await.unwrap();
    storage.verify("copy.db", &facts).await.unwrap();
    // A damaged stream stages nothing.
    let wrong = wrong_digests(&facts);
    let bytes = storage.open("b.db", &wrong, 1000).await.unwrap();
    assert!(matches!(
        storage.stage_bytes(bytes, taken_at, "bad").await,
        Err(Error::DataLoss(_))
    ));
    assert!(storage.begin_delete("copy.db").await.unwrap());
    storage.finish_delete("copy.db").await.unwrap();
}

/// `facts` with every digest it has replaced by another.
fn wrong_digests(facts: &ContentFacts) -> ContentFacts {
    let other = |digest: &Option<String>| digest.as_ref().map(|_| "0".repeat(64));
    ContentFacts {
        size_bytes: facts.size_bytes,
        sha256: other(&facts.sha256),
        blake3: other(&facts.blake3),
    }
}
