// Node client for backup.v1 (@grpc/grpc-js + @grpc/proto-loader, loading
// ../../../proto at run time), proven against a real backup-server: one with
// the default storage and one with --repository. Downloads are checked
// against both SHA-256 digests and, where the server fills it, the BLAKE3
// one (@noble/hashes).
//
// The server binary is $BACKUP_SERVER_BIN, by default the debug build under
// the repository's target/ directory. Field names are lowerCamelCase
// (proto-loader's default, keepCase: false) throughout.

import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, openSync, closeSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import { blake3 } from "@noble/hashes/blake3.js";
import { bytesToHex } from "@noble/hashes/utils.js";

const repoRoot = fileURLToPath(new URL("../../../", import.meta.url));
const protoDir = join(repoRoot, "proto");
const serverBin =
  process.env.BACKUP_SERVER_BIN ?? join(repoRoot, "target", "debug", "backup-server");
const READY_TIMEOUT_MS = 30_000;
const CALL_TIMEOUT_MS = 30_000;

const loaderOptions = {
  includeDirs: [protoDir],
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
};
const protoFiles = readdirSync(join(protoDir, "backup", "v1"))
  .filter((f) => f.endsWith(".proto"))
  .map((f) => `backup/v1/${f}`);
const backupV1 = grpc.loadPackageDefinition(protoLoader.loadSync(protoFiles, loaderOptions))
  .backup.v1;

// A real backup-server on an ephemeral port with its state in a new
// temporary directory; `extraArgs` go to every invocation (init-demo, token
// create, the server), as --data-dir does, and may name paths inside the
// data directory through `(dataDir) => [...]`. Resolves with the server's
// address, an admin token (user 1), a non-admin token (user 2) and stop().
async function startServer(extraArgs = () => []) {
  const dataDir = mkdtempSync(join(tmpdir(), "backup-polyglot-node-"));
  const base = ["--data-dir", dataDir, ...extraArgs(dataDir)];
  const mint = (...flags) => {
    const minted = execFileSync(serverBin, [...base, "token", "create", ...flags], {
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
    }).trim();
    assert.ok(minted, "`token create` printed no token");
    return minted;
  };
  let serverProc;
  let serverLog;
  const stop = async () => {
    if (serverProc && serverProc.exitCode === null && serverProc.signalCode === null) {
      const exited = new Promise((resolve) => serverProc.once("exit", resolve));
      serverProc.kill("SIGTERM");
      const timer = setTimeout(() => serverProc.kill("SIGKILL"), 20_000);
      await exited;
      clearTimeout(timer);
    }
    if (serverLog !== undefined) closeSync(serverLog);
    serverLog = undefined;
    rmSync(dataDir, { recursive: true, force: true });
  };
  try {
    execFileSync(serverBin, [...base, "init-demo"], { stdio: ["ignore", "ignore", "pipe"] });
    const token = mint("--user-id", "1", "--admin");
    const userToken = mint("--user-id", "2");

    serverLog = openSync(join(dataDir, "server.log"), "w");
    serverProc = spawn(serverBin, [...base, "--listen", "127.0.0.1:0"], {
      stdio: ["ignore", "pipe", serverLog],
    });
    const line = await new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error("no `listening on` line in time")),
        READY_TIMEOUT_MS,
      );
      const lines = createInterface({ input: serverProc.stdout });
      lines.once("line", (l) => {
        clearTimeout(timer);
        resolve(l);
      });
      serverProc.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`server exited with ${code} before it was ready`));
      });
    }).catch((e) => {
      serverProc.kill("SIGKILL");
      throw new Error(`${e.message}; log:\n${readFileSync(join(dataDir, "server.log"), "utf8")}`);
    });
    assert.match(line, /^listening on \S+$/);
    return { address: line.slice("listening on ".length), token, userToken, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}

// Full copies in a directory (`--full-copies`, the storage that fills
// Backup.sha256), and a repository (`--repository DATA/repository`, a local
// path): the storage that fills Backup.blake3 alone.
let server;
let repoServer;
let address;
let token;

before(async () => {
  const started = await Promise.allSettled([
    startServer(() => ["--full-copies"]),
    startServer((dataDir) => ["--repository", join(dataDir, "repository")]),
  ]);
  const failed = started.find((s) => s.status === "rejected");
  if (failed) {
    // Stop the one that did start before failing.
    await Promise.all(started.map((s) => s.status === "fulfilled" && s.value.stop()));
    throw failed.reason;
  }
  [server, repoServer] = started.map((s) => s.value);
  ({ address, token } = server);
});

after(async () => {
  await Promise.all([server?.stop(), repoServer?.stop()]);
});

function metadataFor(bearer) {
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${bearer}`);
  return md;
}

function unary(client, method, request, metadata = new grpc.Metadata()) {
  return new Promise((resolve, reject) =>
    client[method](request, metadata, { deadline: Date.now() + CALL_TIMEOUT_MS }, (err, res) =>
      err ? reject(err) : resolve(res),
    ),
  );
}

const HEX64 = /^[0-9a-f]{64}$/;

// Downloads a backup and checks every digest a client can: the SHA-256 of
// the bytes received against the last message's sha256 (always sent, on the
// last message only, whose chunk is empty) and the first message's
// backup.sha256, and their BLAKE3 against backup.blake3, each where the
// server filled it (full copies fill sha256, a repository blake3). Resolves
// with the first message's backup and the bytes.
async function downloadChecked(client, filename, metadata) {
  const messages = await new Promise((resolve, reject) => {
    const got = [];
    const stream = client.downloadBackup({ filename }, metadata, {
      deadline: Date.now() + CALL_TIMEOUT_MS,
    });
    stream.on("data", (m) => got.push(m));
    stream.on("error", reject);
    stream.on("end", () => resolve(got));
  });
  assert.ok(messages.length > 0, "DownloadBackup sent no message");
  const [first, ...rest] = messages;
  const last = messages[messages.length - 1];
  assert.ok(first.backup, "the first message carries the metadata");
  assert.ok(rest.every((m) => m.backup === null), "only the first message carries metadata");
  assert.ok(
    messages.slice(0, -1).every((m) => m.sha256 === ""),
    "only the last message carries the streamed sha256",
  );

  const sha256 = createHash("sha256");
  const b3 = blake3.create();
  for (const m of messages) {
    sha256.update(m.chunk);
    b3.update(m.chunk);
  }
  const data = Buffer.concat(messages.map((m) => m.chunk));
  const { backup } = first;
  assert.equal(backup.filename, filename);
  assert.equal(data.length, backup.sizeBytes);

  const received = sha256.digest("hex");
  assert.ok(backup.sha256 !== "" || backup.blake3 !== "", "the backup has no digest to check");
  if (backup.sha256 !== "") {
    assert.match(backup.sha256, HEX64);
    assert.equal(received, backup.sha256, "the bytes received do not match backup.sha256");
  }
  assert.notEqual(last.sha256, "", `the last of ${messages.length} messages carries no sha256`);
  assert.equal(last.chunk.length, 0, "the message carrying the streamed sha256 has no chunk");
  assert.equal(received, last.sha256, "the bytes received do not match the streamed sha256");

  if (backup.blake3 !== "") {
    assert.match(backup.blake3, HEX64);
    const b3hex = bytesToHex(b3.digest());
    assert.equal(b3hex, backup.blake3, "the bytes received do not match backup.blake3");
  }
  return { backup, data };
}

test("README snippet", async () => {
  const logged = [];
  const console = { log: (...args) => logged.push(args.join(" ")) };

  // README snippet
  const grpc = await import("@grpc/grpc-js");
  const protoLoader = await import("@grpc/proto-loader");

  // address = "127.0.0.1:50051"; token = the output of `backup-server token create`;
  // protoDir = the repository's proto/ directory
  const definition = protoLoader.loadSync("backup/v1/backup_files.proto", {
    includeDirs: [protoDir],
    longs: Number, // int64 fields (sizes, ids) as JS numbers
  });
  const { BackupFiles } = grpc.loadPackageDefinition(definition).backup.v1;
  const client = new BackupFiles(address, grpc.credentials.createInsecure());
  const auth = new grpc.Metadata();
  auth.set("authorization", `Bearer ${token}`);
  const call = (method, request) =>
    new Promise((resolve, reject) =>
      client[method](request, auth, (err, res) => (err ? reject(err) : resolve(res))),
    );

  const { backup } = await call("createBackup", { customFilename: "from-node" });
  console.log("created", backup.filename, backup.sizeBytes, "bytes");

  const { backups } = await call("listBackups", {});
  for (const b of backups) console.log(b.filename, b.sizeBytes, b.blake3 || b.sha256);
  // end README snippet

  client.close();
  assert.equal(backup.filename, "from-node.db");
  assert.ok(logged.includes(`created from-node.db ${backup.sizeBytes} bytes`), logged.join("\n"));
  const digest = backup.blake3 || backup.sha256;
  assert.ok(logged.includes(`from-node.db ${backup.sizeBytes} ${digest}`), logged.join("\n"));
});

test("a call without a token fails with UNAUTHENTICATED", async () => {
  const client = new backupV1.BackupFiles(address, grpc.credentials.createInsecure());
  try {
    await assert.rejects(unary(client, "listBackups", {}), (err) => {
      assert.equal(err.code, grpc.status.UNAUTHENTICATED, `${err.code} ${err.details}`);
      return true;
    });
  } finally {
    client.close();
  }
});

// Reads SubscribeAuditEvents until every wanted (eventType, resourceId) pair
// has been seen; resolves with every event seen, rejects if the stream fails
// or ends first.
function watchAudit(client, request, metadata, want) {
  const missing = new Set(want.map(([type, id]) => `${type} ${id}`));
  const seen = [];
  const stream = client.subscribeAuditEvents(request, metadata, {
    deadline: Date.now() + CALL_TIMEOUT_MS,
  });
  const done = new Promise((resolve, reject) => {
    stream.on("data", ({ event }) => {
      seen.push(event);
      missing.delete(`${event.eventType} ${event.resourceId}`);
      if (missing.size === 0) {
        resolve(seen);
        stream.cancel();
      }
    });
    stream.on("error", (err) => {
      if (missing.size > 0) {
        reject(new Error(`SubscribeAuditEvents failed: ${grpc.status[err.code]} ${err.details}`));
      }
    });
    stream.on("end", () =>
      reject(new Error(`audit stream ended without ${[...missing].join(", ")}`)),
    );
  });
  done.catch(() => {}); // awaited later; don't report as unhandled meanwhile
  return { done, missing };
}

test("flow: settings, create, list, download, delete, audit watch", async () => {
  const credentials = grpc.credentials.createInsecure();
  const files = new backupV1.BackupFiles(address, credentials);
  const scheduler = new backupV1.BackupScheduler(address, credentials);
  const audit = new backupV1.AuditLog(address, credentials);
  const auth = metadataFor(token);
  const name = "node-flow.db";
  try {
    // Watch the audit stream from the start (afterId 0 replays every stored
    // event, then streams live ones) while the flow runs.
    const watch = watchAudit(
      audit,
      { afterId: 0, eventTypePrefix: "backup_files." },
      auth,
      [
        ["backup_files.create", name],
        ["backup_files.delete", name],
      ],
    );

    const { settings } = await unary(
      scheduler,
      "updateBackupSettings",
      {
        userId: 0,
        enabled: true,
        frequency: "FREQUENCY_WEEKLY",
        backupTime: "03:30",
        keepCount: 5,
        timezone: "Europe/London",
      },
      auth,
    );
    assert.equal(settings.userId, 1);
    assert.equal(settings.enabled, true);
    assert.equal(settings.frequency, "FREQUENCY_WEEKLY");
    assert.equal(settings.backupTime, "03:30");
    assert.equal(settings.keepCount, 5);
    assert.equal(settings.timezone, "Europe/London");
    assert.ok(settings.nextBackupAt, "enabled settings have a next run");

    const { backup: created } = await unary(files, "createBackup", { customFilename: "node-flow" }, auth);
    assert.equal(created.filename, name);
    assert.equal(created.kind, "BACKUP_KIND_MANUAL");
    assert.equal(created.ownerUserId, 1);
    assert.ok(created.sizeBytes > 0);
    assert.match(created.sha256, /^[0-9a-f]{64}$/);

    const listed = await unary(files, "listBackups", {}, auth);
    assert.ok(listed.backups.some((b) => b.filename === name), "the new backup is listed");

    const { backup: downloaded, data } = await downloadChecked(files, name, auth);
    assert.equal(data.length, created.sizeBytes);
    assert.equal(downloaded.sha256, created.sha256);
    assert.equal(downloaded.blake3, created.blake3);

    await unary(files, "deleteBackup", { filename: name }, auth);
    const after = await unary(files, "listBackups", {}, auth);
    assert.ok(!after.backups.some((b) => b.filename === name), "the deleted backup is not listed");
    await assert.rejects(unary(files, "getBackup", { filename: name }, auth), (err) => {
      assert.equal(err.code, grpc.status.NOT_FOUND);
      return true;
    });

    const seen = await watch.done;
    const ids = seen.map((e) => e.id);
    assert.deepEqual(ids, [...new Set(ids)].sort((a, b) => a - b), "audit ids strictly increase");
    assert.ok(seen.every((e) => e.eventType.startsWith("backup_files.")));
    const ours = Object.fromEntries(
      seen.filter((e) => e.resourceId === name).map((e) => [e.eventType, e]),
    );
    assert.equal(ours["backup_files.create"].userId, 1);
    assert.equal(ours["backup_files.create"].success, true);
    assert.equal(ours["backup_files.delete"].success, true);
    assert.ok(ours["backup_files.create"].id < ours["backup_files.delete"].id);
  } finally {
    files.close();
    scheduler.close();
    audit.close();
  }
});

test("repository: a download matches blake3; GetRepositoryStats is admin only", async () => {
  const files = new backupV1.BackupFiles(repoServer.address, grpc.credentials.createInsecure());
  const auth = metadataFor(repoServer.token);
  const name = "node-repository.db";
  try {
    const { backup: created } = await unary(
      files,
      "createBackup",
      { customFilename: "node-repository" },
      auth,
    );
    assert.equal(created.filename, name);
    assert.ok(created.sizeBytes > 0);
    assert.equal(created.sha256, "", "the repository computes BLAKE3 alone");
    assert.match(created.blake3, HEX64, "the repository storage fills blake3");

    const { backup: downloaded, data } = await downloadChecked(files, name, auth);
    assert.equal(downloaded.blake3, created.blake3);
    assert.equal(downloaded.sha256, created.sha256);
    assert.equal(bytesToHex(blake3(data)), created.blake3);
    assert.equal(data.length, created.sizeBytes);

    const stats = await unary(files, "getRepositoryStats", {}, auth);
    assert.ok(stats.backups >= 1, JSON.stringify(stats));
    assert.ok(stats.storedBytes > 0, JSON.stringify(stats));
    assert.ok(stats.logicalBytes > 0, JSON.stringify(stats));

    await assert.rejects(
      unary(files, "getRepositoryStats", {}, metadataFor(repoServer.userToken)),
      (err) => {
        assert.equal(err.code, grpc.status.PERMISSION_DENIED, `${err.code} ${err.details}`);
        return true;
      },
    );
  } finally {
    files.close();
  }
});
