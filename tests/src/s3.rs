//! A real local S3-compatible server for the object-storage tests:
//! [s3s-fs](https://crates.io/crates/s3s-fs) 0.14.1, which tests/run.sh
//! installs and names in `BACKUP_TEST_S3S_FS`.
//!
//! s3s-fs keeps each bucket as a directory under its root and each object
//! as a plain file in it (its metadata in hidden `.bucket-*` files beside
//! the buckets), checks every request's SigV4 signature against one fixed
//! key pair, and honours `If-None-Match: *` on PutObject, so
//! `PutMode::Create` of an existing key fails. That check runs before the
//! body is read and the file is renamed into place afterwards, so two
//! creates of one key in flight at the same moment can both succeed.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The access key id s3s-fs accepts (with [`SECRET_ACCESS_KEY`]).
pub const ACCESS_KEY_ID: &str = "backup-test-access-key";
/// The secret key requests must be signed with.
pub const SECRET_ACCESS_KEY: &str = "backup-test-secret-key";
/// The region clients sign for: s3s-fs takes whichever the signature names.
pub const REGION: &str = "us-east-1";
/// The one bucket [`S3Server::start`] creates.
const BUCKET: &str = "backup-test";

/// What s3s-fs logs (at info) once it has bound its port.
const READY: &str = "server is running at http://";

/// A running s3s-fs over its own temporary root; SIGKILLed on drop.
pub struct S3Server {
    child: Child,
    /// Holds `root/` and `s3s-fs.log` (its output); removed on drop.
    dir: tempfile::TempDir,
    root: PathBuf,
    addr: SocketAddr,
}

impl S3Server {
    /// Starts s3s-fs on 127.0.0.1 on a free port, over a fresh temporary
    /// root directory, with one bucket created, and waits until it answers.
    ///
    /// Panics if `BACKUP_TEST_S3S_FS` does not name the binary (run
    /// tests/run.sh), or with the server's output if it is not listening
    /// within 10 s.
    pub fn start() -> S3Server {
        let bin = s3s_fs_bin();
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        // A bucket is a directory under the root: CreateBucket only makes it.
        std::fs::create_dir_all(root.join(BUCKET)).expect("create the bucket directory");
        let log_path = dir.path().join("s3s-fs.log");
        let log = File::create(&log_path).expect("create the s3s-fs log");
        // Port 0: the kernel picks a free port as s3s-fs binds it, so no other
        // process can take it first; s3s-fs logs the address it got.
        let mut child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args([
                "--access-key",
                ACCESS_KEY_ID,
                "--secret-key",
                SECRET_ACCESS_KEY,
            ])
            .arg(&root)
            // Its ready line, and errors (every refused request is one).
            .env("RUST_LOG", "s3s_fs=info,warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));

        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(addr) = ready_addr(&text) {
                break addr;
            }
            if let Some(status) = child.try_wait().expect("poll s3s-fs") {
                panic!("s3s-fs exited ({status}) before listening:\n{text}");
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("s3s-fs did not start listening within 10 s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let server = S3Server {
            child,
            dir,
            root,
            addr,
        };
        if let Err(e) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            panic!("s3s-fs does not answer on {addr}: {e}\n{}", server.log());
        }
        server
    }

    /// The base URL, e.g. `http://127.0.0.1:PORT` (path-style requests).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bucket [`S3Server::start`] created.
    pub fn bucket(&self) -> &str {
        BUCKET
    }

    /// The directory s3s-fs serves: buckets are its subdirectories.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file holding object `key` of the bucket, for tests that damage
    /// or remove an object behind the server's back.
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.root.join(BUCKET).join(key)
    }

    /// The AWS_* environment a process (or object_store's
    /// `AmazonS3Builder::from_env`) needs to reach this server; the bucket
    /// is [`S3Server::bucket`], passed separately.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_REGION", REGION.to_owned()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.to_owned()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// SIGKILL, as in a crash of the store: connections are refused from
    /// then on. The root stays until the server is dropped.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything s3s-fs has printed so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("s3s-fs.log")).unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The s3s-fs binary named by `BACKUP_TEST_S3S_FS`.
fn s3s_fs_bin() -> PathBuf {
    let Some(path) = std::env::var_os("BACKUP_TEST_S3S_FS") else {
        panic!(
            "BACKUP_TEST_S3S_FS is not set: run tests/run.sh, which installs \
             s3s-fs 0.14.1 and sets it to the binary"
        );
    };
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "BACKUP_TEST_S3S_FS={} is not a file: run tests/run.sh, which installs \
         s3s-fs 0.14.1 and sets it to the binary",
        path.display()
    );
    path
}

/// The address in s3s-fs's ready line, once it is in `log`.
fn ready_addr(log: &str) -> Option<SocketAddr> {
    let rest = &log[log.find(READY)? + READY.len()..];
    rest.split_whitespace().next()?.parse().ok()
}
