//! Signed bundles (issue 11, item 4): `tiering keys generate`, `tiering train --sign-key`,
//! `tiering serve --verify-key` / `verify_key`, `tiering models --verify-key`.
//!
//! The attack from the issue: a bundle whose model was replaced and whose manifest checksums
//! (unkeyed sha256) were recomputed loads without a verify key, and is refused with one, at
//! start and at reload, while the old model keeps serving.

use crate::helpers::{
    manifest, scorer, snapshot, tiering_cli, Dirs, ServerProcess, SpawnOptions, TestServer,
};
use sha2::{Digest, Sha256};
use std::ffi::OsStr;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tiering::bundle::signature::{generate_key_pair, KeyPairFiles};
use tiering::bundle::{
    BundleError, BundleSigner, BundleStore, Manifest, SignatureError, VerifyKeys, MANIFEST,
    MANIFEST_SIG, MODEL,
};
use tiering::pb::tiering_client::TieringClient;
use tiering::pb::GetModelInfoRequest;
use tonic::transport::Channel;

async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(90), f)
        .await
        .expect("test finished within 90 s");
}

/// Two key pairs, `a` and `b`, in their own directories (`root/a/`, `root/b/`).
struct Keys {
    root: tempfile::TempDir,
    a: KeyPairFiles,
    b: KeyPairFiles,
}

impl Keys {
    fn new() -> Keys {
        let root = tempfile::tempdir().unwrap();
        let a = generate_key_pair(&root.path().join("a"), "a").unwrap();
        let b = generate_key_pair(&root.path().join("b"), "b").unwrap();
        Keys { root, a, b }
    }
    fn signer(pair: &KeyPairFiles) -> BundleSigner {
        BundleSigner::from_file(&pair.private).unwrap()
    }
    fn verify(pairs: &[&KeyPairFiles]) -> Option<Arc<VerifyKeys>> {
        let paths: Vec<PathBuf> = pairs.iter().map(|p| p.public.clone()).collect();
        Some(Arc::new(VerifyKeys::load(&paths).unwrap()))
    }
}

/// Writes bundle `version` (recency weight `w`), signed by `signer` when given.
fn write(models: &Path, version: &str, w: f64, signer: Option<&BundleSigner>) -> PathBuf {
    let s = scorer(w);
    BundleStore::new(models)
        .begin(version)
        .unwrap()
        .commit_signed(manifest(version, &s), &s, &snapshot(), signer)
        .unwrap()
}

/// [`write`], then promoted (verified against `signer`'s own key).
fn publish(models: &Path, version: &str, w: f64, signer: &BundleSigner) {
    write(models, version, w, Some(signer));
    let own = VerifyKeys::new([signer.verifying_key()]).unwrap();
    BundleStore::new(models)
        .with_verify_keys(Some(Arc::new(own)))
        .promote(version)
        .unwrap();
}

/// Points CURRENT at `version` by hand (as a botched or malicious deploy would).
fn point_current(models: &Path, version: &str) {
    std::fs::write(models.join("CURRENT.tmp"), format!("{version}\n")).unwrap();
    std::fs::rename(models.join("CURRENT.tmp"), models.join("CURRENT")).unwrap();
}

/// The attack: replaces the bundle's model with another valid one, recomputes the manifest's
/// sha256 of it and `manifest.sha256`, and leaves `manifest.sig` as it was.
fn swap_model_and_recompute_checksums(dir: &Path) {
    let other = serde_json::to_vec_pretty(&scorer(9.0)).unwrap();
    std::fs::write(dir.join(MODEL), &other).unwrap();
    let mut m: Manifest =
        serde_json::from_slice(&std::fs::read(dir.join(MANIFEST)).unwrap()).unwrap();
    m.files
        .insert(MODEL.into(), hex::encode(Sha256::digest(&other)));
    let bytes = serde_json::to_vec_pretty(&m).unwrap();
    std::fs::write(dir.join(MANIFEST), &bytes).unwrap();
    std::fs::write(
        dir.join("manifest.sha256"),
        format!("{}\n", hex::encode(Sha256::digest(&bytes))),
    )
    .unwrap();
}

fn signature_error(e: BundleError) -> SignatureError {
    match e {
        BundleError::Signature(s) => s,
        other => panic!("expected a signature error, got {other}"),
    }
}

async fn version(client: &mut TieringClient<Channel>) -> String {
    client
        .get_model_info(GetModelInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .version
}

/// Waits until the server's metrics count `n` refused reloads.
async fn refused(server: &TestServer, n: u32) {
    let want = format!("tiering_model_reloads_total{{outcome=\"refused\"}} {n}");
    for _ in 0..200 {
        if server.metrics().await.contains(&want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never saw {want}");
}

#[test]
fn a_signed_bundle_verifies_and_names_its_key_and_an_unsigned_one_is_refused_with_a_key() {
    let (dirs, keys) = (Dirs::new(), Keys::new());
    let a = Keys::signer(&keys.a);
    let dir = write(&dirs.models(), "v1", 1.0, Some(&a));
    write(&dirs.models(), "v2", 1.0, None);
    assert!(dir.join(MANIFEST_SIG).is_file());

    let store = BundleStore::new(dirs.models()).with_verify_keys(Keys::verify(&[&keys.a]));
    assert_eq!(store.load("v1").unwrap().version(), "v1");
    let e = signature_error(store.load("v2").unwrap_err());
    assert!(matches!(e, SignatureError::Unsigned { .. }), "{e}");
    assert!(
        e.to_string().contains("v2: the bundle is not signed"),
        "{e}"
    );
    // Without verify keys, both load, as before.
    assert!(BundleStore::new(dirs.models()).load("v2").is_ok());

    let list = store.list().unwrap();
    assert_eq!(list[0].signed_by.as_deref(), Some(keys.a.key_id.as_str()));
    assert_eq!(list[1].signed_by, None);
    assert!(list[1].problem.as_deref().unwrap().contains("not signed"));
}

#[test]
fn a_model_changed_after_signing_is_refused_even_with_recomputed_checksums() {
    let (dirs, keys) = (Dirs::new(), Keys::new());
    let a = Keys::signer(&keys.a);
    let dir = write(&dirs.models(), "v1", 1.0, Some(&a));
    let store = BundleStore::new(dirs.models()).with_verify_keys(Keys::verify(&[&keys.a]));

    // One byte changed: the manifest's checksum catches it, with or without keys.
    let model = std::fs::read(dir.join(MODEL)).unwrap();
    let mut flipped = model.clone();
    flipped[30] ^= 0x01;
    std::fs::write(dir.join(MODEL), &flipped).unwrap();
    assert!(matches!(
        store.load("v1"),
        Err(BundleError::Checksum { .. })
    ));
    std::fs::write(dir.join(MODEL), &model).unwrap();
    store.load("v1").unwrap();

    // The attack: another model with freshly computed sums. Unkeyed checksums accept
    // it; the signature does not.
    swap_model_and_recompute_checksums(&dir);
    assert!(
        BundleStore::new(dirs.models()).load("v1").is_ok(),
        "recomputed sha256 sums pass the checksum checks alone"
    );
    let e = signature_error(store.load("v1").unwrap_err());
    assert!(matches!(e, SignatureError::Invalid { .. }), "{e}");
    assert!(e.to_string().contains("changed after it was signed"), "{e}");
}

#[test]
fn a_bundle_signed_by_another_key_is_refused_and_two_verify_keys_accept_either() {
    let (dirs, keys) = (Dirs::new(), Keys::new());
    write(&dirs.models(), "va", 1.0, Some(&Keys::signer(&keys.a)));
    write(&dirs.models(), "vb", 1.0, Some(&Keys::signer(&keys.b)));

    let only_a = BundleStore::new(dirs.models()).with_verify_keys(Keys::verify(&[&keys.a]));
    only_a.load("va").unwrap();
    let e = signature_error(only_a.load("vb").unwrap_err());
    assert!(matches!(e, SignatureError::UnknownKey { .. }), "{e}");
    assert!(e.to_string().contains(&keys.b.key_id), "{e}");

    // Rotation: both keys, as two files or as a directory holding both public keys.
    let both = BundleStore::new(dirs.models()).with_verify_keys(Keys::verify(&[&keys.a, &keys.b]));
    both.load("va").unwrap();
    both.load("vb").unwrap();
    let pubs = keys.root.path().join("pubs");
    std::fs::create_dir(&pubs).unwrap();
    for p in [&keys.a.public, &keys.b.public] {
        std::fs::copy(p, pubs.join(p.file_name().unwrap())).unwrap();
    }
    let dir_keys = VerifyKeys::load(&[pubs]).unwrap();
    assert_eq!(dir_keys.key_ids().len(), 2);
    let from_dir = BundleStore::new(dirs.models()).with_verify_keys(Some(Arc::new(dir_keys)));
    from_dir.load("va").unwrap();
    from_dir.load("vb").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_reload_a_tampered_or_foreign_bundle_is_refused_while_the_old_model_keeps_serving() {
    bounded(async {
        let (dirs, keys) = (Dirs::new(), Keys::new());
        let (a, b) = (Keys::signer(&keys.a), Keys::signer(&keys.b));
        publish(&dirs.models(), "v1", 1.0, &a);
        let mut config = dirs.config();
        config.verify_key = vec![keys.a.public.clone()];
        let server = TestServer::start(config).await;
        server.ready().await;
        let mut client = server.client().await;
        assert_eq!(version(&mut client).await, "v1");

        // Signed by a key the server does not trust.
        write(&dirs.models(), "v2-other-key", 1.5, Some(&b));
        point_current(&dirs.models(), "v2-other-key");
        refused(&server, 1).await;
        assert_eq!(version(&mut client).await, "v1");

        // Signed by the right key, then its model swapped and the sums recomputed.
        let dir = write(&dirs.models(), "v3-tampered", 1.5, Some(&a));
        swap_model_and_recompute_checksums(&dir);
        point_current(&dirs.models(), "v3-tampered");
        refused(&server, 2).await;
        assert_eq!(version(&mut client).await, "v1");

        // Unsigned.
        write(&dirs.models(), "v4-unsigned", 1.5, None);
        point_current(&dirs.models(), "v4-unsigned");
        refused(&server, 3).await;
        assert_eq!(version(&mut client).await, "v1");

        // A properly signed bundle is taken.
        publish(&dirs.models(), "v5", 1.5, &a);
        for _ in 0..200 {
            if version(&mut client).await == "v5" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(version(&mut client).await, "v5");
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_start_a_tampered_current_bundle_is_refused_by_name_and_the_signed_earlier_one_serves() {
    bounded(async {
        let (dirs, keys) = (Dirs::new(), Keys::new());
        let a = Keys::signer(&keys.a);
        publish(&dirs.models(), "v1", 1.0, &a);
        let dir = write(&dirs.models(), "v2-tampered", 1.5, Some(&a));
        swap_model_and_recompute_checksums(&dir);
        point_current(&dirs.models(), "v2-tampered");

        let log = Arc::new(Mutex::new(Vec::new()));
        let key = keys.a.public.to_str().unwrap().to_string();
        let server = ServerProcess::spawn_with(
            &dirs,
            &[("TIERING__VERIFY_KEY", key.as_str())],
            SpawnOptions {
                log: Some(log.clone()),
                ..SpawnOptions::default()
            },
        );
        let mut client = server.client().await;
        let info = client
            .get_model_info(GetModelInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.version, "v1", "the earlier signed bundle serves");
        assert!(
            info.warnings
                .iter()
                .any(|w| w.contains("v2-tampered") && w.contains("changed after it was signed")),
            "{:?}",
            info.warnings
        );
        let text = log.lock().unwrap().join("\n");
        assert!(
            text.contains("refusing model bundle") && text.contains("v2-tampered"),
            "{text}"
        );
        assert!(!text.contains("NOT verified"), "{text}");
        server.kill();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_verify_key_the_server_serves_as_before_and_warns_at_start() {
    bounded(async {
        let dirs = Dirs::new();
        let s = scorer(1.0);
        let store = BundleStore::new(dirs.models());
        store
            .begin("v1")
            .unwrap()
            .commit(manifest("v1", &s), &s, &snapshot())
            .unwrap();
        store.promote("v1").unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let server = ServerProcess::spawn_with(
            &dirs,
            &[],
            SpawnOptions {
                log: Some(log.clone()),
                ..SpawnOptions::default()
            },
        );
        let mut client = server.client().await;
        assert_eq!(version(&mut client).await, "v1");
        let text = log.lock().unwrap().join("\n");
        assert!(text.contains("model bundles are NOT verified"), "{text}");
        server.kill();
    })
    .await;
}

fn cli(args: &[&OsStr]) -> (bool, String) {
    tiering_cli(args)
}

#[test]
fn keys_generate_writes_an_owner_only_private_key_and_train_refuses_a_readable_one() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keys");
    let (ok, text) = cli(&[
        OsStr::new("keys"),
        OsStr::new("generate"),
        OsStr::new("--out"),
        out.as_os_str(),
    ]);
    assert!(ok, "{text}");
    let private = out.join("bundle-signing.key");
    let public = out.join("bundle-signing.pub");
    let mode = std::fs::metadata(&private).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let pem = std::fs::read_to_string(&public).unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    let id = VerifyKeys::load(&[public]).unwrap().key_ids()[0].to_string();
    assert!(text.contains(&id), "{text}");
    // A second run does not overwrite the key.
    let (ok, text) = cli(&[
        OsStr::new("keys"),
        OsStr::new("generate"),
        OsStr::new("--out"),
        out.as_os_str(),
    ]);
    assert!(!ok && text.contains("already exists"), "{text}");

    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, text) = cli(&[
        OsStr::new("train"),
        OsStr::new("--data"),
        dir.path().join("no-data").as_os_str(),
        OsStr::new("--models"),
        dir.path().join("models").as_os_str(),
        OsStr::new("--sign-key"),
        private.as_os_str(),
    ]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("readable by group or others") && text.contains("chmod 600"),
        "{text}"
    );
}

#[test]
fn models_promote_with_a_verify_key_refuses_unsigned_and_foreign_bundles_and_list_shows_key_ids() {
    let (dirs, keys) = (Dirs::new(), Keys::new());
    let models = dirs.models();
    publish(&models, "v1", 1.0, &Keys::signer(&keys.a));
    write(&models, "v2-unsigned", 1.0, None);
    write(&models, "v3-other", 1.0, Some(&Keys::signer(&keys.b)));
    let promote = |v: &str| {
        cli(&[
            OsStr::new("models"),
            OsStr::new("--models"),
            models.as_os_str(),
            OsStr::new("--verify-key"),
            keys.a.public.as_os_str(),
            OsStr::new("promote"),
            OsStr::new(v),
        ])
    };
    let (ok, text) = promote("v2-unsigned");
    assert!(!ok && text.contains("not signed"), "{text}");
    let (ok, text) = promote("v3-other");
    assert!(!ok && text.contains("not a verify key"), "{text}");
    assert_eq!(
        std::fs::read_to_string(models.join("CURRENT"))
            .unwrap()
            .trim(),
        "v1"
    );

    let (ok, text) = cli(&[
        OsStr::new("models"),
        OsStr::new("--models"),
        models.as_os_str(),
        OsStr::new("list"),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("SIGNED_BY"), "{text}");
    let line = |v: &str| text.lines().find(|l| l.starts_with(v)).unwrap().to_string();
    assert!(line("v1").contains(&keys.a.key_id), "{text}");
    assert!(line("v2-unsigned").contains("unsigned"), "{text}");
    assert!(line("v3-other").contains(&keys.b.key_id), "{text}");
    assert!(text.contains("signatures not verified"), "{text}");

    // Without a verify key, promote works as before.
    let (ok, text) = cli(&[
        OsStr::new("models"),
        OsStr::new("--models"),
        models.as_os_str(),
        OsStr::new("promote"),
        OsStr::new("v2-unsigned"),
    ]);
    assert!(ok, "{text}");
}

#[test]
fn train_with_a_sign_key_writes_a_bundle_that_a_verify_key_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let (data, models, keys) = (
        dir.path().join("data"),
        dir.path().join("models"),
        dir.path().join("keys"),
    );
    let (ok, text) = cli(&[
        OsStr::new("generate"),
        OsStr::new("--users"),
        OsStr::new("600"),
        OsStr::new("--days"),
        OsStr::new("150"),
        OsStr::new("--seed"),
        OsStr::new("5"),
        OsStr::new("--end"),
        OsStr::new("2026-06-30"),
        OsStr::new("--out"),
        data.as_os_str(),
    ]);
    assert!(ok, "{text}");
    let pair = generate_key_pair(&keys, "k").unwrap();
    let (ok, text) = cli(&[
        OsStr::new("train"),
        OsStr::new("--data"),
        data.as_os_str(),
        OsStr::new("--models"),
        models.as_os_str(),
        OsStr::new("--k"),
        OsStr::new("4"),
        OsStr::new("--sign-key"),
        pair.private.as_os_str(),
    ]);
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("signed by key {}", pair.key_id)),
        "{text}"
    );
    let store = BundleStore::new(&models).with_verify_keys(Keys::verify(&[&pair]));
    let current = store.current().unwrap().unwrap();
    store.load(&current).unwrap().load_snapshot().unwrap();
    let (ok, text) = cli(&[
        OsStr::new("models"),
        OsStr::new("--models"),
        models.as_os_str(),
        OsStr::new("--verify-key"),
        keys.as_os_str(),
        OsStr::new("list"),
    ]);
    assert!(ok && !text.contains("BROKEN"), "{text}");
    assert!(text.contains(&pair.key_id), "{text}");
}
