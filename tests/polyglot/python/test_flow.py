"""Python client for backup.v1, proven against a real backup-server: one
with the default storage and one with --repository. Downloads are checked
against both SHA-256 digests and, where the server fills it, the BLAKE3 one
(the `blake3` package).

Stubs are generated from proto/ with grpcio-tools at test time (never
committed). The server binary is $BACKUP_SERVER_BIN, by default the debug
build under the repository's target/ directory.
"""

import contextlib
import hashlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import blake3
import grpc
import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
SERVER_BIN = Path(
    os.environ.get("BACKUP_SERVER_BIN", REPO_ROOT / "target" / "debug" / "backup-server")
)
READY_TIMEOUT_S = 30
CALL_TIMEOUT_S = 30


@pytest.fixture(scope="session")
def stubs(tmp_path_factory):
    """Generates the Python stubs from proto/ and puts them on sys.path."""
    out = tmp_path_factory.mktemp("stubs")
    protos = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "proto").rglob("*.proto"))
    assert protos, "no .proto files under proto/"
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", "-I", "proto",
            f"--python_out={out}", f"--grpc_python_out={out}", *protos,
        ],
        cwd=REPO_ROOT,
        check=True,
    )
    sys.path.insert(0, str(out))
    yield out
    sys.path.remove(str(out))


class Server:
    """A running backup-server: its address, an admin token and a non-admin
    token (user 2)."""

    def __init__(self, address, token, user_token):
        self.address = address
        self.token = token
        self.user_token = user_token


@contextlib.contextmanager
def start_server(data, extra_flags=()):
    """Starts a real backup-server on an ephemeral port with its state in
    `data`: a context manager giving a Server, stopped on exit.
    `extra_flags` go to every invocation (init-demo, token create, the
    server), as --data-dir does."""
    assert SERVER_BIN.is_file(), f"{SERVER_BIN} is missing: run `cargo build -p backup-server`"
    base = [str(SERVER_BIN), "--data-dir", str(data), *extra_flags]
    subprocess.run([*base, "init-demo"], check=True, capture_output=True)

    def mint(*flags):
        minted = subprocess.run(
            [*base, "token", "create", *flags], check=True, capture_output=True, text=True,
        ).stdout.strip()
        assert minted, "`token create` printed no token"
        return minted

    token = mint("--user-id", "1", "--admin")
    user_token = mint("--user-id", "2")

    log = open(data / "server.log", "wb")
    proc = subprocess.Popen(
        [*base, "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=log, text=True,
    )
    lines = queue.Queue()
    threading.Thread(target=lambda: lines.put(proc.stdout.readline()), daemon=True).start()
    try:
        line = lines.get(timeout=READY_TIMEOUT_S)
    except queue.Empty:
        line = ""
    if not line.startswith("listening on "):
        proc.kill()
        proc.wait()
        log.close()
        pytest.fail(
            f"server did not get ready (stdout {line!r}); log:\n"
            + (data / "server.log").read_text(errors="replace")
        )
    address = line.removeprefix("listening on ").strip()
    try:
        yield Server(address, token, user_token)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def server(stubs, tmp_path_factory):
    """A real backup-server keeping full copies in a directory
    (`--full-copies`, the storage that fills `Backup.sha256`): yields
    (address, admin token)."""
    with start_server(tmp_path_factory.mktemp("data"), ["--full-copies"]) as running:
        yield running.address, running.token


@pytest.fixture(scope="session")
def repo_server(stubs, tmp_path_factory):
    """A real backup-server keeping its backups in a repository
    (`--repository DATA/repository`, a local path), the storage that fills
    `Backup.blake3` alone: yields a Server."""
    data = tmp_path_factory.mktemp("repo-data")
    with start_server(data, ["--repository", str(data / "repository")]) as running:
        yield running


HEX64 = re.compile(r"[0-9a-f]{64}")


def download_checked(backups, filename, metadata):
    """Downloads a backup and checks every digest a client can: the SHA-256
    of the bytes received against the last message's `sha256` (always sent,
    on the last message only, whose chunk is empty) and the first message's
    `backup.sha256`, and their BLAKE3 against `backup.blake3`, each where the
    server filled it (full copies fill `sha256`, a repository `blake3`).
    Returns (the first message's backup, the bytes)."""
    from backup.v1 import backup_files_pb2 as files

    sha256 = hashlib.sha256()
    b3 = blake3.blake3()
    data = bytearray()
    messages = 0
    first = last = None
    for message in backups.DownloadBackup(
        files.DownloadBackupRequest(filename=filename),
        metadata=metadata, timeout=CALL_TIMEOUT_S,
    ):
        if last is not None:
            assert not last.sha256, "only the last message carries the streamed sha256"
        if first is None:
            first = message
            assert message.HasField("backup"), "the first message carries the metadata"
        else:
            assert not message.HasField("backup"), "only the first message carries metadata"
        sha256.update(message.chunk)
        b3.update(message.chunk)
        data += message.chunk
        messages += 1
        last = message
    assert first is not None, "DownloadBackup sent no message"
    backup = first.backup
    assert backup.filename == filename
    assert len(data) == backup.size_bytes

    received = sha256.hexdigest()
    assert backup.sha256 or backup.blake3, "the backup has no digest to check"
    if backup.sha256:
        assert HEX64.fullmatch(backup.sha256), f"backup.sha256 {backup.sha256!r}"
        assert received == backup.sha256, "the bytes received do not match backup.sha256"
    assert last.sha256, f"the last of {messages} messages carries no sha256"
    assert last.chunk == b"", "the message carrying the streamed sha256 has no chunk"
    assert received == last.sha256, "the bytes received do not match the streamed sha256"

    if backup.blake3:
        assert HEX64.fullmatch(backup.blake3), f"backup.blake3 {backup.blake3!r}"
        assert b3.hexdigest() == backup.blake3, "the bytes received do not match backup.blake3"
    return backup, bytes(data)


def test_readme_snippet(server, capsys):
    address, token = server

    # README snippet
    import grpc
    from backup.v1 import backup_files_pb2 as files
    from backup.v1 import backup_files_pb2_grpc as files_grpc

    # address = "127.0.0.1:50051"; token = the output of `backup-server token create`
    channel = grpc.insecure_channel(address)
    auth = [("authorization", f"Bearer {token}")]
    backups = files_grpc.BackupFilesStub(channel)

    created = backups.CreateBackup(
        files.CreateBackupRequest(custom_filename="from-python"), metadata=auth
    )
    print("created", created.backup.filename, created.backup.size_bytes, "bytes")

    for backup in backups.ListBackups(files.ListBackupsRequest(), metadata=auth).backups:
        print(backup.filename, backup.size_bytes, backup.blake3 or backup.sha256)
    # end README snippet

    channel.close()
    out = capsys.readouterr().out
    assert created.backup.filename == "from-python.db"
    assert "created from-python.db" in out
    digest = created.backup.blake3 or created.backup.sha256
    assert f"from-python.db {created.backup.size_bytes} {digest}" in out


def test_call_without_token_is_unauthenticated(server):
    from backup.v1 import backup_files_pb2 as files
    from backup.v1 import backup_files_pb2_grpc as files_grpc

    address, _ = server
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            files_grpc.BackupFilesStub(channel).ListBackups(
                files.ListBackupsRequest(), timeout=CALL_TIMEOUT_S
            )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value


def test_a_huge_value_is_invalid_argument_with_a_short_message(server):
    """A 10 KB value must come back as INVALID_ARGUMENT: were it echoed whole,
    the status would overflow grpcio's 8 KB metadata limit and the client
    would see RESOURCE_EXHAUSTED instead."""
    from backup.v1 import backup_scheduler_pb2 as scheduler
    from backup.v1 import backup_scheduler_pb2_grpc as scheduler_grpc

    address, token = server
    auth = [("authorization", f"Bearer {token}")]
    huge = "x" * 10240
    with grpc.insecure_channel(address) as channel:
        stub = scheduler_grpc.BackupSchedulerStub(channel)
        for field in ("timezone", "backup_time"):
            with pytest.raises(grpc.RpcError) as err:
                stub.UpdateBackupSettings(
                    scheduler.UpdateBackupSettingsRequest(user_id=0, **{field: huge}),
                    metadata=auth, timeout=CALL_TIMEOUT_S,
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, err.value)
            details = err.value.details()
            assert f'"{"x" * 64}…" (10240 bytes)' in details, (field, details)
            assert len(details) < 400, (field, len(details))
            # The BadRequest details travel in metadata too.
            trailers = dict(err.value.trailing_metadata() or ())
            assert 0 < len(trailers.get("grpc-status-details-bin", b"")) < 400, field


class AuditWatch:
    """Reads SubscribeAuditEvents on a thread until `want` (event_type,
    resource_id) pairs have all been seen, the stream ends or fails."""

    def __init__(self, stub, request, metadata, want):
        self.want = set(want)
        self.seen = []
        self.error = None
        self.done = threading.Event()
        self.call = stub.SubscribeAuditEvents(request, metadata=metadata, timeout=CALL_TIMEOUT_S)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for message in self.call:
                event = message.event
                self.seen.append(event)
                self.want.discard((event.event_type, event.resource_id))
                if not self.want:
                    break
        except grpc.RpcError as e:
            self.error = e
        finally:
            self.done.set()
            self.call.cancel()

    def wait(self):
        self.done.wait(CALL_TIMEOUT_S + 5)
        self.thread.join(timeout=5)


def test_flow(server):
    from backup.v1 import audit_log_pb2 as audit
    from backup.v1 import audit_log_pb2_grpc as audit_grpc
    from backup.v1 import backup_files_pb2 as files
    from backup.v1 import backup_files_pb2_grpc as files_grpc
    from backup.v1 import backup_scheduler_pb2 as scheduler
    from backup.v1 import backup_scheduler_pb2_grpc as scheduler_grpc

    address, token = server
    auth = [("authorization", f"Bearer {token}")]
    name = "python-flow.db"
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=CALL_TIMEOUT_S)
        backups = files_grpc.BackupFilesStub(channel)
        settings_stub = scheduler_grpc.BackupSchedulerStub(channel)

        # Watch the audit stream from the start (after_id=0 replays every
        # stored event, then streams live ones) while the flow runs.
        watch = AuditWatch(
            audit_grpc.AuditLogStub(channel),
            audit.SubscribeAuditEventsRequest(after_id=0, event_type_prefix="backup_files."),
            auth,
            want={("backup_files.create", name), ("backup_files.delete", name)},
        )

        settings = settings_stub.UpdateBackupSettings(
            scheduler.UpdateBackupSettingsRequest(
                user_id=0,
                enabled=True,
                frequency=scheduler.FREQUENCY_WEEKLY,
                backup_time="03:30",
                keep_count=5,
                timezone="Europe/London",
            ),
            metadata=auth, timeout=CALL_TIMEOUT_S,
        ).settings
        assert settings.user_id == 1
        assert settings.enabled
        assert settings.frequency == scheduler.FREQUENCY_WEEKLY
        assert settings.backup_time == "03:30"
        assert settings.keep_count == 5
        assert settings.timezone == "Europe/London"
        assert settings.HasField("next_backup_at")

        created = backups.CreateBackup(
            files.CreateBackupRequest(custom_filename="python-flow"),
            metadata=auth, timeout=CALL_TIMEOUT_S,
        ).backup
        assert created.filename == name
        assert created.kind == files.BACKUP_KIND_MANUAL
        assert created.owner_user_id == 1
        assert created.size_bytes > 0
        assert len(created.sha256) == 64

        listed = backups.ListBackups(
            files.ListBackupsRequest(), metadata=auth, timeout=CALL_TIMEOUT_S
        ).backups
        assert name in [b.filename for b in listed]

        downloaded, data = download_checked(backups, name, auth)
        assert len(data) == created.size_bytes
        assert downloaded.sha256 == created.sha256
        assert downloaded.blake3 == created.blake3

        backups.DeleteBackup(
            files.DeleteBackupRequest(filename=name), metadata=auth, timeout=CALL_TIMEOUT_S
        )
        listed = backups.ListBackups(
            files.ListBackupsRequest(), metadata=auth, timeout=CALL_TIMEOUT_S
        ).backups
        assert name not in [b.filename for b in listed]
        with pytest.raises(grpc.RpcError) as err:
            backups.GetBackup(
                files.GetBackupRequest(filename=name), metadata=auth, timeout=CALL_TIMEOUT_S
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        watch.wait()
        assert watch.error is None, (
            f"SubscribeAuditEvents failed: {watch.error.code()} {watch.error.details()}"
        )
        assert not watch.want, f"audit stream never delivered {sorted(watch.want)}"
        ids = [e.id for e in watch.seen]
        assert ids == sorted(set(ids)), f"audit ids not strictly increasing: {ids}"
        assert all(e.event_type.startswith("backup_files.") for e in watch.seen)
        by_type = {e.event_type: e for e in watch.seen if e.resource_id == name}
        assert by_type["backup_files.create"].user_id == 1
        assert by_type["backup_files.create"].success
        assert by_type["backup_files.delete"].success
        assert by_type["backup_files.create"].id < by_type["backup_files.delete"].id


def test_repository_download_blake3_and_stats(repo_server):
    """On the repository storage a backup has a BLAKE3 digest: a download
    matches it (and the SHA-256 its last message carries), and GetRepositoryStats (admin only)
    counts what the repository holds."""
    from backup.v1 import backup_files_pb2 as files
    from backup.v1 import backup_files_pb2_grpc as files_grpc

    auth = [("authorization", f"Bearer {repo_server.token}")]
    user_auth = [("authorization", f"Bearer {repo_server.user_token}")]
    name = "python-repository.db"
    with grpc.insecure_channel(repo_server.address) as channel:
        backups = files_grpc.BackupFilesStub(channel)

        created = backups.CreateBackup(
            files.CreateBackupRequest(custom_filename="python-repository"),
            metadata=auth, timeout=CALL_TIMEOUT_S,
        ).backup
        assert created.filename == name
        assert created.size_bytes > 0
        assert created.sha256 == "", "the repository computes BLAKE3 alone"
        assert HEX64.fullmatch(created.blake3), (
            f"the repository storage left blake3 {created.blake3!r}"
        )

        downloaded, data = download_checked(backups, name, auth)
        assert downloaded.blake3 == created.blake3
        assert downloaded.sha256 == created.sha256
        assert blake3.blake3(data).hexdigest() == created.blake3
        assert len(data) == created.size_bytes

        stats = backups.GetRepositoryStats(
            files.GetRepositoryStatsRequest(), metadata=auth, timeout=CALL_TIMEOUT_S
        )
        assert stats.backups >= 1, stats
        assert stats.stored_bytes > 0, stats
        assert stats.logical_bytes > 0, stats

        with pytest.raises(grpc.RpcError) as err:
            backups.GetRepositoryStats(
                files.GetRepositoryStatsRequest(), metadata=user_auth, timeout=CALL_TIMEOUT_S
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value
