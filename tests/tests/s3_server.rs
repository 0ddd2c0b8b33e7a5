//! The local S3 server of the object-storage tests (`backup_tests::s3`):
//! signed requests, objects as plain files under its root, and the
//! conditional create (`If-None-Match: *`) the object store relies on.

use backup_tests::s3::{self, S3Server};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload, RetryConfig};

/// A client of `server` signing with `secret`, retrying nothing (so a
/// refusal is seen at once).
fn store(server: &S3Server, secret: &str) -> AmazonS3 {
    install_tls_provider();
    AmazonS3Builder::new()
        .with_endpoint(server.endpoint())
        .with_bucket_name(server.bucket())
        .with_region(s3::REGION)
        .with_access_key_id(s3::ACCESS_KEY_ID)
        .with_secret_access_key(secret)
        .with_allow_http(true)
        // The default, named: PutMode::Create sends If-None-Match: *.
        .with_conditional_put(S3ConditionalPut::ETagMatch)
        .with_retry(RetryConfig {
            max_retries: 0,
            ..Default::default()
        })
        .build()
        .expect("build the S3 client")
}

/// The S3 client's rustls provider, ring, as the server installs it
/// (object_store's client is built without a provider of its own).
fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

async fn read(store: &AmazonS3, key: &Path) -> Vec<u8> {
    store
        .get(key)
        .await
        .expect("get")
        .bytes()
        .await
        .expect("read the body")
        .to_vec()
}

#[tokio::test]
async fn put_get_and_create_only_if_absent() {
    let server = S3Server::start();
    let store = store(&server, s3::SECRET_ACCESS_KEY);
    let key = Path::from("backups/one.db");

    store
        .put(&key, PutPayload::from_static(b"first"))
        .await
        .expect("put");
    assert_eq!(read(&store, &key).await, b"first");
    // The object is a plain file where tests can damage it.
    assert_eq!(
        std::fs::read(server.object_path("backups/one.db")).unwrap(),
        b"first"
    );

    let err = store
        .put_opts(
            &key,
            PutPayload::from_static(b"second"),
            PutMode::Create.into(),
        )
        .await
        .expect_err("a create over an existing object");
    assert!(
        matches!(err, object_store::Error::AlreadyExists { .. }),
        "{err:?}"
    );
    assert_eq!(read(&store, &key).await, b"first");

    // A create of a new key goes through.
    let fresh = Path::from("backups/two.db");
    store
        .put_opts(
            &fresh,
            PutPayload::from_static(b"two"),
            PutMode::Create.into(),
        )
        .await
        .expect("create a new object");
    assert_eq!(read(&store, &fresh).await, b"two");
}

#[tokio::test]
async fn env_reaches_it_and_signatures_are_checked() {
    let server = S3Server::start();
    // What AmazonS3Builder::from_env makes of env(), without setting this
    // process's environment.
    install_tls_provider();
    let mut builder = AmazonS3Builder::new().with_bucket_name(server.bucket());
    for (name, value) in server.env() {
        let key: AmazonS3ConfigKey = name.to_ascii_lowercase().parse().expect(&name);
        builder = builder.with_config(key, value);
    }
    let from_env = builder.build().expect("build from env()");
    let key = Path::from("env.txt");
    from_env
        .put(&key, PutPayload::from_static(b"env"))
        .await
        .expect("put with env()");

    let wrong = store(&server, "not-the-secret");
    let err = wrong.get(&key).await.expect_err("a wrongly signed get");
    assert!(
        !matches!(err, object_store::Error::NotFound { .. }),
        "{err:?}"
    );
    assert!(format!("{err}").contains("403"), "{err}");
}

#[tokio::test]
async fn killed_server_refuses_connections() {
    let mut server = S3Server::start();
    let addr = server.endpoint().trim_start_matches("http://").to_owned();
    std::net::TcpStream::connect(&addr).expect("connect while it runs");
    server.kill();
    std::net::TcpStream::connect(&addr).expect_err("connect after the kill");
    assert!(server.root().join(server.bucket()).is_dir());
}
