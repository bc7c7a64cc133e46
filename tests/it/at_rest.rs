//! Data at rest and pseudonyms (issue 11, items 6 and 7): owner-only state and bundle files, a
//! warning for open ones, the state encrypted with `--state-key-file` (refused in the wrong mode
//! or with another key, damage and tampering named by file and offset, `tiering state` working
//! with the key), and user ids replaced by a keyed hash in training and in the server.

use crate::helpers::{
    publish, state_cli, wal_segments, Dirs, ServerProcess, SpawnOptions, TestServer, NOW,
};
use crate::storage_faults::{held, ids};
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tiering::pb::{
    self as proto, BatchGetUserTiersRequest, GetUserTierRequest, RecordEventsRequest,
};
use tiering::serve::ServeConfig;

async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .expect("test finished within 120 s");
}

/// Writes a key file (hex of `byte` × 32) with mode 0600 and returns its path.
fn key_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    writeln!(f, "{}", hex::encode([byte; 32])).unwrap();
    path
}

fn order(user_id: &str, ts: i64) -> proto::Event {
    proto::Event {
        user_id: user_id.into(),
        ts: Some(prost_types::Timestamp {
            seconds: ts,
            nanos: 0,
        }),
        kind: "order".into(),
        amount: 5.0,
        ..Default::default()
    }
}

fn encrypted(dirs: &Dirs, key: &Path) -> ServeConfig {
    ServeConfig {
        state_key_file: Some(key.to_path_buf()),
        ..dirs.config()
    }
}

async fn record(server: &TestServer, prefix: &str, n: usize) {
    let mut client = server.client().await;
    for id in ids(prefix, n) {
        client
            .record_events(RecordEventsRequest {
                events: vec![order(&id, NOW - 60)],
            })
            .await
            .unwrap();
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Every file under `dir` (two levels), with its bytes.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_state_is_owner_only_holds_no_readable_ids_and_survives_a_restart() {
    bounded(async {
        let dirs = Dirs::new();
        let key = key_file(dirs.root.path(), "state.key", 1);
        publish(&dirs.models(), "v1", 1.0);
        let server = TestServer::start(encrypted(&dirs, &key)).await;
        server.ready().await;
        record(&server, "secret", 20).await;
        server.kill().await; // the events are in the log only
        assert_eq!(mode(&dirs.state()), 0o700);
        for (path, bytes) in files_under(&dirs.state()) {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
            assert!(
                !contains(&bytes, "secret-1"),
                "{} shows an id",
                path.display()
            );
            assert!(
                !contains(&bytes, "user-001"),
                "{} shows an id",
                path.display()
            );
        }
        assert_eq!(held(encrypted(&dirs, &key), ids("secret", 20)).await, 20);
        // After the clean stop the snapshot holds them, sealed.
        let snap = std::fs::read(dirs.state().join("state.bin")).unwrap();
        assert!(snap.starts_with(b"TIERSE01") && !contains(&snap, "secret-1"));
        let (ok, out) = state_cli(
            "check",
            &dirs.state(),
            &["--state-key-file", key.to_str().unwrap()],
        );
        assert!(ok, "{out}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_or_the_other_mode_is_refused_at_start_with_a_clear_error() {
    bounded(async {
        let dirs = Dirs::new();
        let key = key_file(dirs.root.path(), "state.key", 1);
        let other = key_file(dirs.root.path(), "other.key", 2);
        publish(&dirs.models(), "v1", 1.0);
        let server = TestServer::start(encrypted(&dirs, &key)).await;
        server.ready().await;
        record(&server, "acked", 3).await;
        server.kill().await;

        let e = crate::helpers::start_error(encrypted(&dirs, &other))
            .await
            .to_string();
        assert!(
            e.contains("encrypted with another key") && e.contains("state.bin"),
            "{e}"
        );
        let e = crate::helpers::start_error(dirs.config()).await.to_string();
        assert!(
            e.contains("is encrypted") && e.contains("--state-key-file"),
            "{e}"
        );
        let (ok, out) = state_cli("check", &dirs.state(), &[]);
        assert!(!ok && out.contains("is encrypted"), "{out}");

        // The reverse: a plaintext state opened with a key.
        let plain = Dirs::new();
        publish(&plain.models(), "v1", 1.0);
        let server = TestServer::start(plain.config()).await;
        server.ready().await;
        server.stop().await.unwrap();
        let e = crate::helpers::start_error(encrypted(&plain, &key))
            .await
            .to_string();
        assert!(
            e.contains("not encrypted") && e.contains("state.bin"),
            "{e}"
        );
        // A key file others may read is refused before anything is opened.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = crate::helpers::start_error(encrypted(&dirs, &key))
            .await
            .to_string();
        assert!(
            e.contains("state_key_file") && e.contains("chmod 600"),
            "{e}"
        );
    })
    .await;
}

/// The encrypted variant of storage_faults' flipped length byte: the start stops naming the
/// segment and offset, check says the same, and repair --salvage (with the key) keeps the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_encrypted_frame_stops_the_start_and_salvage_keeps_every_other_event() {
    bounded(async {
        let dirs = Dirs::new();
        let key = key_file(dirs.root.path(), "state.key", 1);
        let key_arg = key.to_str().unwrap().to_string();
        publish(&dirs.models(), "v1", 1.0);
        let server = TestServer::start(encrypted(&dirs, &key)).await;
        server.ready().await;
        record(&server, "acked", 20).await;
        server.kill().await;
        let segs = wal_segments(&dirs.state());
        assert_eq!(segs.len(), 1);
        let mut log = std::fs::read(&segs[0]).unwrap();
        log[3] ^= 0x40; // the first frame's length
        std::fs::write(&segs[0], &log).unwrap();

        let e = crate::helpers::start_error(encrypted(&dirs, &key))
            .await
            .to_string();
        let name = segs[0].file_name().unwrap().to_string_lossy().to_string();
        assert!(e.contains(&name) && e.contains("at byte 0"), "{e}");
        assert_eq!(
            std::fs::read(&segs[0]).unwrap(),
            log,
            "the file is left as it was"
        );
        let (ok, out) = state_cli("check", &dirs.state(), &["--state-key-file", &key_arg]);
        assert!(!ok && out.contains("at byte 0"), "{out}");
        let (ok, out) = state_cli(
            "repair",
            &dirs.state(),
            &["--salvage", "--state-key-file", &key_arg],
        );
        assert!(ok, "{out}");
        assert_eq!(held(encrypted(&dirs, &key), ids("acked", 20)).await, 19);
    })
    .await;
}

/// A frame whose ciphertext was changed and whose CRC was recomputed passes every check but the
/// tag: refused as tampering with the file and offset; repair cuts the log there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_encrypted_frame_is_refused_as_tampering_and_repair_cuts_it() {
    bounded(async {
        let dirs = Dirs::new();
        let key = key_file(dirs.root.path(), "state.key", 1);
        let key_arg = key.to_str().unwrap().to_string();
        publish(&dirs.models(), "v1", 1.0);
        let server = TestServer::start(encrypted(&dirs, &key)).await;
        server.ready().await;
        record(&server, "acked", 10).await;
        server.kill().await;
        let segs = wal_segments(&dirs.state());
        let mut log = std::fs::read(&segs[0]).unwrap();
        let frame_len = |at: usize| {
            8 + (u32::from_le_bytes([log[at], log[at + 1], log[at + 2], log[at + 3]]) & !(1 << 31))
                as usize
        };
        let third = frame_len(0) + frame_len(frame_len(0));
        let end = third + frame_len(third);
        log[end - 1] ^= 0x01; // the tag's last byte
        let crc = crc32fast::hash(&log[third + 8..end]);
        log[third + 4..third + 8].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&segs[0], &log).unwrap();

        let e = crate::helpers::start_error(encrypted(&dirs, &key))
            .await
            .to_string();
        assert!(
            e.contains("fails authentication") && e.contains(&format!("at byte {third}")),
            "{e}"
        );
        let (ok, out) = state_cli("repair", &dirs.state(), &["--state-key-file", &key_arg]);
        assert!(ok && out.contains(".broken"), "{out}");
        assert_eq!(held(encrypted(&dirs, &key), ids("acked", 10)).await, 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_creates_owner_only_state_files_and_warns_about_open_ones() {
    bounded(async {
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        for (path, _) in files_under(&dirs.models().join("v1")) {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
        assert_eq!(mode(&dirs.models().join("v1")), 0o700);
        let server = ServerProcess::spawn(&dirs, &[]);
        server.client().await;
        drop(server);
        assert_eq!(mode(&dirs.state()), 0o700);
        for (path, _) in files_under(&dirs.state()) {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
        let snap = dirs.state().join("state.bin");
        std::fs::set_permissions(&snap, std::fs::Permissions::from_mode(0o644)).unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let opts = SpawnOptions {
            log: Some(log.clone()),
            ..SpawnOptions::default()
        };
        let server = ServerProcess::spawn_with(&dirs, &[], opts);
        server.client().await;
        drop(server);
        let lines = log.lock().unwrap().join("\n");
        assert!(
            lines.contains("state.bin is accessible to group or others (mode 644)"),
            "{lines}"
        );
    })
    .await;
}

fn tiering(args: &[&std::ffi::OsStr]) -> String {
    let (ok, out) = crate::helpers::tiering_cli(args);
    assert!(ok, "{args:?}: {out}");
    out
}

/// User ids of a generated data set's events table.
fn raw_ids(events_csv: &Path) -> Vec<String> {
    let mut r = csv::Reader::from_path(events_csv).unwrap();
    let col = r
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "user_id")
        .unwrap();
    let mut ids: Vec<String> = r
        .records()
        .map(|rec| rec.unwrap()[col].to_string())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_and_serving_with_one_pseudonym_key_agree_and_raw_ids_are_stored_nowhere() {
    bounded(async {
        use std::ffi::OsStr;
        let dirs = Dirs::new();
        let data = dirs.root.path().join("data");
        let key = key_file(dirs.root.path(), "pseudonym.key", 9);
        let other = key_file(dirs.root.path(), "other.key", 10);
        tiering(&[
            OsStr::new("generate"),
            OsStr::new("--users"),
            OsStr::new("600"),
            OsStr::new("--days"),
            OsStr::new("120"),
            OsStr::new("--seed"),
            OsStr::new("3"),
            OsStr::new("--end"),
            OsStr::new("2026-06-30"),
            OsStr::new("--out"),
            data.as_os_str(),
        ]);
        tiering(&[
            OsStr::new("train"),
            OsStr::new("--data"),
            data.as_os_str(),
            OsStr::new("--models"),
            dirs.models().as_os_str(),
            OsStr::new("--pseudonymize-key-file"),
            key.as_os_str(),
        ]);
        let raw = raw_ids(&data.join("events.csv"));
        assert!(raw.len() > 100);
        let pseudo = tiering::io::read::pseudonym::PseudonymKey::from_bytes(&[9u8; 32]).unwrap();
        // The bundle: owner-only, pseudonyms only.
        let store = tiering::bundle::BundleStore::new(dirs.models());
        let bundle = store.load_current().unwrap();
        let snap = bundle.load_snapshot().unwrap();
        assert!(snap
            .user_ids
            .iter()
            .all(|id| id.len() == 32 && !raw.contains(id)));
        assert!(snap.user_ids.contains(&pseudo.pseudonym(&raw[0])));
        for (path, bytes) in files_under(&dirs.models()) {
            if path.parent() != Some(dirs.models().as_path()) {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
            }
            for id in raw.iter().take(40) {
                assert!(
                    !contains(&bytes, id),
                    "{} holds raw id {id}",
                    path.display()
                );
            }
        }

        let config = ServeConfig {
            pseudonymize_key_file: Some(key.clone()),
            now: Some("2026-06-30T12:00:00Z".into()),
            ..dirs.config()
        };
        let server = TestServer::start(config.clone()).await;
        server.ready().await;
        let mut client = server.client().await;
        let found = client
            .get_user_tier(GetUserTierRequest {
                user_id: raw[0].clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            found.user_id,
            pseudo.pseudonym(&raw[0]),
            "the answer carries the pseudonym"
        );
        let ts = tiering::features::parse_instant("2026-06-30T11:00:00Z").unwrap();
        client
            .record_events(RecordEventsRequest {
                events: vec![order("newcomer-7", ts)],
            })
            .await
            .unwrap();
        let batch = client
            .batch_get_user_tiers(BatchGetUserTiersRequest {
                user_ids: vec!["newcomer-7".into(), raw[1].clone()],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(batch.users.len(), 2, "{batch:?}");
        assert!(batch
            .users
            .iter()
            .any(|u| u.user_id == pseudo.pseudonym("newcomer-7")));
        server.stop().await.unwrap();
        for (path, bytes) in files_under(&dirs.state()) {
            for id in raw
                .iter()
                .take(40)
                .chain(std::iter::once(&"newcomer-7".to_string()))
            {
                assert!(
                    !contains(&bytes, id),
                    "{} holds raw id {id}",
                    path.display()
                );
            }
        }

        // Another key finds nobody.
        let server = TestServer::start(ServeConfig {
            pseudonymize_key_file: Some(other),
            ..config
        })
        .await;
        server.ready().await;
        let e = server
            .client()
            .await
            .get_user_tier(GetUserTierRequest {
                user_id: raw[0].clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        server.stop().await.unwrap();
    })
    .await;
}
