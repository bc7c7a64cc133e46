//! Transport security and access control: TLS and mutual TLS with certificates made here (rcgen),
//! certificate reload, the role table (every RPC × no credentials / wrong role / right role),
//! quotas, the refusal to listen beyond loopback unprotected, model administration over gRPC,
//! and the CLI client over TLS with a token.

use crate::helpers::{self, publish, user, Dirs, TestServer};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tiering::pb::tiering_client::TieringClient;
use tiering::pb::{self as proto};
use tiering::serve::auth::keys::{new_token, token_hash, IdentityEntry, KeyEntry, KeysFile};
use tiering::serve::auth::Role;
use tiering::serve::ServeConfig;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

/// A certificate authority for the tests.
struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    fn pem(&self) -> String {
        self.0.pem()
    }

    /// A leaf certificate for `names` (SANs; the first is also the CN): (cert PEM, key PEM).
    fn leaf(&self, names: &[&str], expired: bool) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.0).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Server certificate files for `localhost` signed by `ca`, written into `dir`.
fn server_files(dir: &Path, ca: &Ca) -> (PathBuf, PathBuf) {
    let (cert, key) = ca.leaf(&["localhost", "127.0.0.1"], false);
    (
        write(dir, "server.pem", &cert),
        write(dir, "server.key", &key),
    )
}

/// A TLS channel to `addr` trusting `ca_pem`, with an optional client identity.
async fn tls_channel(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .tls_config(tls)?
        .connect()
        .await
}

type Client = TieringClient<
    InterceptedService<
        Channel,
        Box<
            dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>
                + Send
                + Sync,
        >,
    >,
>;

/// A client sending `token` (when given) as a bearer token.
fn authed(channel: Channel, token: Option<&str>) -> Client {
    let value: Option<tonic::metadata::AsciiMetadataValue> =
        token.map(|t| format!("Bearer {t}").parse().unwrap());
    TieringClient::with_interceptor(
        channel,
        Box::new(move |mut req: tonic::Request<()>| {
            if let Some(v) = &value {
                req.metadata_mut().insert("authorization", v.clone());
            }
            Ok(req)
        }),
    )
}

async fn plain_channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap()
}

/// Waits (bounded) until GetModelInfo answers through `client` with anything but UNAVAILABLE.
async fn until_model(client: &mut Client) {
    for _ in 0..200 {
        match client.get_model_info(proto::GetModelInfoRequest {}).await {
            Err(s) if s.code() == Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(25)).await
            }
            _ => return,
        }
    }
    panic!("no model became live");
}

/// A key to create: name, roles, and its own quota (rate, burst).
type KeySpec<'a> = (&'a str, &'a [Role], Option<(f64, u32)>);

/// A keys file (mode 0600) with one token per given role set; returns the tokens in order.
fn keys_file(path: &Path, keys: &[KeySpec], identities: &[(&str, &[Role])]) -> Vec<String> {
    let mut file = KeysFile::default();
    let mut tokens = Vec::new();
    for (name, roles, quota) in keys {
        let token = new_token();
        file.keys.push(KeyEntry {
            name: name.to_string(),
            sha256: hex::encode(token_hash(&token)),
            roles: roles.to_vec(),
            rate: quota.map(|q| q.0),
            burst: quota.map(|q| q.1),
        });
        tokens.push(token);
    }
    for (name, roles) in identities {
        file.identities.push(IdentityEntry {
            name: name.to_string(),
            roles: roles.to_vec(),
            rate: None,
            burst: None,
        });
    }
    file.write(path).unwrap();
    tokens
}

/// Calls `rpc` once; the gRPC code of the answer.
async fn call(client: &mut Client, rpc: &str) -> Code {
    let code = |r: Result<_, tonic::Status>| r.err().map_or(Code::Ok, |s: tonic::Status| s.code());
    match rpc {
        "GetUserTier" => code(
            client
                .get_user_tier(proto::GetUserTierRequest { user_id: user(1) })
                .await
                .map(|_| ()),
        ),
        "BatchGetUserTiers" => code(
            client
                .batch_get_user_tiers(proto::BatchGetUserTiersRequest {
                    user_ids: vec![user(1)],
                })
                .await
                .map(|_| ()),
        ),
        "ScoreUser" => code(
            client
                .score_user(proto::ScoreUserRequest::default())
                .await
                .map(|_| ()),
        ),
        "RecordEvents" => code(
            client
                .record_events(proto::RecordEventsRequest::default())
                .await
                .map(|_| ()),
        ),
        "ListAtRiskUsers" => {
            let r = client
                .list_at_risk_users(proto::ListAtRiskUsersRequest {
                    min_churn_probability: 0.0,
                    limit: 5,
                    ..Default::default()
                })
                .await;
            match r {
                Err(s) => s.code(),
                Ok(resp) => {
                    let mut stream = resp.into_inner();
                    match stream.message().await {
                        Err(s) => s.code(),
                        Ok(_) => Code::Ok,
                    }
                }
            }
        }
        "GetModelInfo" => code(
            client
                .get_model_info(proto::GetModelInfoRequest {})
                .await
                .map(|_| ()),
        ),
        "ListModels" => code(
            client
                .list_models(proto::ListModelsRequest {})
                .await
                .map(|_| ()),
        ),
        "PromoteModel" => code(
            client
                .promote_model(proto::PromoteModelRequest {
                    version: "v1".into(),
                })
                .await
                .map(|_| ()),
        ),
        "RollbackModel" => code(
            client
                .rollback_model(proto::RollbackModelRequest {})
                .await
                .map(|_| ()),
        ),
        "EraseUser" => code(
            client
                .erase_user(proto::EraseUserRequest { user_id: user(150) })
                .await
                .map(|_| ()),
        ),
        "ExportUser" => code(
            client
                .export_user(proto::ExportUserRequest { user_id: user(2) })
                .await
                .map(|_| ()),
        ),
        "SetProfilingObjection" => code(
            client
                .set_profiling_objection(proto::SetProfilingObjectionRequest {
                    user_id: user(151),
                    objected: true,
                })
                .await
                .map(|_| ()),
        ),
        other => panic!("no call for {other}"),
    }
}

/// The documented table: RPC, the role it needs, and what the right role gets here (a model is
/// live, `user-001` exists, v1 is the only bundle).
const MATRIX: &[(&str, Role, Code)] = &[
    ("GetUserTier", Role::Reader, Code::Ok),
    ("BatchGetUserTiers", Role::Reader, Code::Ok),
    ("ScoreUser", Role::Reader, Code::InvalidArgument), // no events: it reached the handler
    ("GetModelInfo", Role::Reader, Code::Ok),
    ("ListAtRiskUsers", Role::Retention, Code::Ok),
    ("RecordEvents", Role::Writer, Code::Ok),
    ("ListModels", Role::Admin, Code::Ok),
    ("PromoteModel", Role::Admin, Code::Ok),
    ("RollbackModel", Role::Admin, Code::FailedPrecondition),
    ("EraseUser", Role::Admin, Code::Ok),
    ("ExportUser", Role::Admin, Code::Ok),
    ("SetProfilingObjection", Role::Admin, Code::Ok),
];

const ROLES: [Role; 4] = [Role::Reader, Role::Retention, Role::Writer, Role::Admin];

#[test]
fn every_rpc_in_the_proto_has_a_row_in_the_matrix() {
    let proto = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/tiering/v1/tiering.proto"),
    )
    .unwrap();
    let rpcs: Vec<&str> = proto
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .filter_map(|l| l.split('(').next())
        .map(str::trim)
        .collect();
    assert!(rpcs.len() >= 9, "{rpcs:?}");
    for rpc in rpcs {
        assert!(
            MATRIX.iter().any(|(name, _, _)| *name == rpc),
            "{rpc} has no row in the access matrix: add one (and to the server's table)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_unauthenticated_permission_denied_or_its_code_by_the_role_table() {
    let dirs = Dirs::new();
    let mut config = dirs.config();
    publish(&config.models, "v1", 1.0);
    let keys = dirs.root.path().join("keys.toml");
    let specs: Vec<(String, Vec<Role>)> = ROLES
        .iter()
        .map(|r| (format!("{r:?}-only"), vec![*r]))
        .collect();
    let spec_refs: Vec<KeySpec> = specs
        .iter()
        .map(|(n, r)| (n.as_str(), r.as_slice(), None))
        .collect();
    let tokens = keys_file(&keys, &spec_refs, &[]);
    config.keys_file = Some(keys);
    let server = TestServer::start(config).await;
    let channel = plain_channel(server.addr).await;
    let token_of = |role: Role| tokens[ROLES.iter().position(|r| *r == role).unwrap()].as_str();
    until_model(&mut authed(channel.clone(), Some(token_of(Role::Reader)))).await;

    let mut failures = Vec::new();
    for (rpc, role, right_code) in MATRIX {
        let wrong = if *role == Role::Reader {
            Role::Writer
        } else {
            Role::Reader
        };
        let cases = [
            (
                "no credentials",
                authed(channel.clone(), None),
                Code::Unauthenticated,
            ),
            (
                "an unknown token",
                authed(channel.clone(), Some(&new_token())),
                Code::Unauthenticated,
            ),
            (
                "the wrong role",
                authed(channel.clone(), Some(token_of(wrong))),
                Code::PermissionDenied,
            ),
            (
                "the right role",
                authed(channel.clone(), Some(token_of(*role))),
                *right_code,
            ),
        ];
        for (what, mut client, expected) in cases {
            let got = call(&mut client, rpc).await;
            if got != expected {
                failures.push(format!(
                    "{rpc} with {what}: expected {expected:?}, got {got:?}"
                ));
            }
        }
    }
    // Health stays open.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    assert!(health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new()
        })
        .await
        .is_ok());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_beyond_its_quota_is_refused_with_resource_exhausted() {
    let dirs = Dirs::new();
    let mut config = dirs.config();
    publish(&config.models, "v1", 1.0);
    let keys = dirs.root.path().join("keys.toml");
    let tokens = keys_file(
        &keys,
        &[
            ("slow", &[Role::Reader], Some((0.01, 3))),
            ("other", &[Role::Reader], None),
        ],
        &[],
    );
    config.keys_file = Some(keys);
    let server = TestServer::start(config).await;
    let channel = plain_channel(server.addr).await;
    let mut other = authed(channel.clone(), Some(&tokens[1]));
    until_model(&mut other).await;
    let mut slow = authed(channel.clone(), Some(&tokens[0]));
    let codes: Vec<Code> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(call(&mut slow, "GetModelInfo").await);
        }
        v
    };
    assert_eq!(
        codes,
        [Code::Ok, Code::Ok, Code::Ok, Code::ResourceExhausted]
    );
    assert_eq!(
        call(&mut other, "GetModelInfo").await,
        Code::Ok,
        "quotas are per key"
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_file_others_can_read_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dirs = Dirs::new();
    let mut config = dirs.config();
    let keys = dirs.root.path().join("keys.toml");
    keys_file(&keys, &[("a", &[Role::Reader], None)], &[]);
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).unwrap();
    config.keys_file = Some(keys);
    let e = helpers::start_error(config).await;
    assert!(e.to_string().contains("chmod 600"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_without_tls_or_auth_the_server_refuses_to_start_unless_insecure() {
    let dirs = Dirs::new();
    let config = dirs.config();
    let run = |config: ServeConfig| async move {
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(tiering::serve::run_with_metrics(
            config.check().unwrap(),
            listener,
            None,
            async {
                let _ = rx.await;
            },
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        if task.is_finished() {
            Some(task.await.unwrap())
        } else {
            let _ = tx.send(());
            task.await.unwrap().unwrap();
            None
        }
    };
    let refused = run(config.clone()).await.expect("it must not start");
    let text = refused.unwrap_err().to_string();
    assert!(text.contains("without TLS and authentication"), "{text}");
    let insecure = ServeConfig {
        insecure: true,
        ..config
    };
    assert!(run(insecure).await.is_none(), "with insecure it serves");
}

/// A server with TLS (and mutual TLS when `client_ca` is given) and a keys file.
struct TlsSetup {
    dirs: Dirs,
    ca: Ca,
    config: ServeConfig,
}

fn tls_setup(client_ca: Option<&Ca>, identities: &[(&str, &[Role])]) -> (TlsSetup, Vec<String>) {
    let dirs = Dirs::new();
    let mut config = dirs.config();
    publish(&config.models, "v1", 1.0);
    let ca = Ca::new("server CA");
    let (cert, key) = server_files(dirs.root.path(), &ca);
    config.tls_cert = Some(cert);
    config.tls_key = Some(key);
    config.tls_reload_secs = 1;
    if let Some(c) = client_ca {
        config.tls_client_ca = Some(write(dirs.root.path(), "client-ca.pem", &c.pem()));
    }
    let keys = dirs.root.path().join("keys.toml");
    let tokens = keys_file(&keys, &[("reader", &[Role::Reader], None)], identities);
    config.keys_file = Some(keys);
    (TlsSetup { dirs, ca, config }, tokens)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_with_a_token_gets_answers_and_a_plaintext_client_does_not() {
    let (setup, tokens) = tls_setup(None, &[]);
    let server = TestServer::start(setup.config.clone()).await;
    let channel = tls_channel(server.addr, &setup.ca.pem(), None)
        .await
        .unwrap();
    let mut client = authed(channel, Some(&tokens[0]));
    until_model(&mut client).await;
    assert_eq!(call(&mut client, "GetUserTier").await, Code::Ok);
    // Plaintext against the TLS port fails.
    let plain = Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(ch) = plain {
        let mut c = authed(ch, Some(&tokens[0]));
        assert_ne!(call(&mut c, "GetUserTier").await, Code::Ok);
    }
    drop(setup.dirs);
    server.stop().await.unwrap();
}

/// `GetUserTier` through a fresh mTLS connection with `identity`: Ok, or the failure.
async fn mtls_call(addr: SocketAddr, ca: &Ca, identity: &(String, String)) -> Result<Code, String> {
    let channel = tls_channel(addr, &ca.pem(), Some(identity))
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut client = authed(channel, None);
    let code = call(&mut client, "GetUserTier").await;
    Ok(code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_accepts_a_known_client_and_refuses_another_ca_and_an_expired_certificate() {
    let client_ca = Ca::new("client CA");
    let (setup, _) = tls_setup(Some(&client_ca), &[("recsys.internal", &[Role::Reader])]);
    let server = TestServer::start(setup.config.clone()).await;
    let good = client_ca.leaf(&["recsys.internal"], false);
    let mut ok = Err(String::new());
    for _ in 0..200 {
        ok = mtls_call(server.addr, &setup.ca, &good).await;
        if ok != Ok(Code::Unavailable) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        ok,
        Ok(Code::Ok),
        "a client certificate from the client CA, mapped to reader"
    );

    let unmapped = client_ca.leaf(&["stranger.internal"], false);
    assert_eq!(
        mtls_call(server.addr, &setup.ca, &unmapped).await,
        Ok(Code::Unauthenticated),
        "a valid certificate without an [[identity]] entry has no roles"
    );
    let foreign = Ca::new("another CA").leaf(&["recsys.internal"], false);
    let r = mtls_call(server.addr, &setup.ca, &foreign).await;
    assert!(
        !matches!(
            r,
            Ok(Code::Ok) | Ok(Code::Unauthenticated) | Ok(Code::PermissionDenied)
        ),
        "a certificate from another CA must fail the handshake: {r:?}"
    );
    let expired = client_ca.leaf(&["recsys.internal"], true);
    let r = mtls_call(server.addr, &setup.ca, &expired).await;
    assert!(
        !matches!(
            r,
            Ok(Code::Ok) | Ok(Code::Unauthenticated) | Ok(Code::PermissionDenied)
        ),
        "an expired certificate must fail the handshake: {r:?}"
    );
    // No certificate at all: the handshake fails too.
    let none = tls_channel(server.addr, &setup.ca.pem(), None).await;
    if let Ok(ch) = none {
        let mut c = authed(ch, None);
        let code = call(&mut c, "GetUserTier").await;
        assert!(
            !matches!(code, Code::Ok | Code::Unauthenticated),
            "{code:?}"
        );
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_serves_new_connections_while_open_ones_keep_working() {
    let (setup, tokens) = tls_setup(None, &[]);
    let server = TestServer::start(setup.config.clone()).await;
    let old = tls_channel(server.addr, &setup.ca.pem(), None)
        .await
        .unwrap();
    let mut old_client = authed(old, Some(&tokens[0]));
    until_model(&mut old_client).await;
    assert_eq!(call(&mut old_client, "GetUserTier").await, Code::Ok);

    // A bad replacement (garbage) is refused: the old certificate keeps serving.
    let cert_path = setup.config.tls_cert.clone().unwrap();
    let key_path = setup.config.tls_key.clone().unwrap();
    let original = std::fs::read(&cert_path).unwrap();
    std::fs::write(&cert_path, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let still = tls_channel(server.addr, &setup.ca.pem(), None).await;
    assert!(
        still.is_ok(),
        "after a bad replacement the old certificate serves"
    );
    std::fs::write(&cert_path, &original).unwrap();

    // A good replacement from a new CA: new connections see it within the poll.
    let new_ca = Ca::new("renewed CA");
    let (cert, key) = new_ca.leaf(&["localhost"], false);
    std::fs::write(&key_path, key).unwrap();
    std::fs::write(&cert_path, cert).unwrap();
    let mut switched = false;
    for _ in 0..100 {
        if let Ok(ch) = tls_channel(server.addr, &new_ca.pem(), None).await {
            let mut c = authed(ch, Some(&tokens[0]));
            if call(&mut c, "GetUserTier").await == Code::Ok {
                switched = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(switched, "a new connection never saw the new certificate");
    assert_eq!(
        call(&mut old_client, "GetUserTier").await,
        Code::Ok,
        "the connection opened before the reload keeps working"
    );
    let stale = tls_channel(server.addr, &setup.ca.pem(), None).await;
    if let Ok(ch) = stale {
        let mut c = authed(ch, Some(&tokens[0]));
        assert_ne!(
            call(&mut c, "GetUserTier").await,
            Code::Ok,
            "the old CA no longer verifies"
        );
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_and_rollback_over_grpc_refuse_what_tiering_models_refuses_and_work_for_admins() {
    let dirs = Dirs::new();
    let mut config = dirs.config();
    let models = config.models.clone();
    publish(&models, "v1", 1.0);
    publish(&models, "v2", 2.0);
    // v3: written but damaged after commit (never promoted).
    {
        let store = tiering::bundle::BundleStore::new(&models);
        let s = helpers::scorer(3.0);
        store
            .begin("v3")
            .unwrap()
            .commit(helpers::manifest("v3", &s), &s, &helpers::snapshot())
            .unwrap();
        let model = models.join("v3").join("model.json");
        let mut bytes = std::fs::read(&model).unwrap();
        bytes[10] ^= 0x5a;
        std::fs::write(&model, bytes).unwrap();
    }
    let keys = dirs.root.path().join("keys.toml");
    let tokens = keys_file(&keys, &[("ops", &[Role::Admin, Role::Reader], None)], &[]);
    config.keys_file = Some(keys);
    let server = TestServer::start(config).await;
    let mut admin = authed(plain_channel(server.addr).await, Some(&tokens[0]));
    until_model(&mut admin).await;

    let listed = admin
        .list_models(proto::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.current, "v2");
    let v3 = listed.models.iter().find(|m| m.version == "v3").unwrap();
    assert!(
        !v3.problem.is_empty(),
        "the damaged bundle is listed as broken"
    );

    let refused = admin
        .promote_model(proto::PromoteModelRequest {
            version: "v3".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let (ok, text) = helpers::tiering_cli(&[
        "models".as_ref(),
        "--models".as_ref(),
        models.as_os_str(),
        "promote".as_ref(),
        "v3".as_ref(),
    ]);
    assert!(!ok, "tiering models refuses it too: {text}");
    let unknown = admin
        .promote_model(proto::PromoteModelRequest {
            version: "v9".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let traversal = admin
        .promote_model(proto::PromoteModelRequest {
            version: "../x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(traversal.code(), Code::InvalidArgument);
    assert_eq!(
        std::fs::read_to_string(models.join("CURRENT"))
            .unwrap()
            .trim(),
        "v2"
    );

    let back = admin
        .rollback_model(proto::RollbackModelRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (back.version.as_str(), back.previous.as_str()),
        ("v1", "v2")
    );
    let again = admin
        .promote_model(proto::PromoteModelRequest {
            version: "v2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (again.version.as_str(), again.previous.as_str()),
        ("v2", "v1")
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_user_command_speaks_tls_with_a_token_from_a_file_made_by_keys_add_token() {
    let (setup, _) = tls_setup(None, &[]);
    let root = setup.dirs.root.path();
    let keys = setup.config.keys_file.clone().unwrap();
    let (ok, text) = helpers::tiering_cli(&[
        "keys".as_ref(),
        "add-token".as_ref(),
        "--name".as_ref(),
        "cli".as_ref(),
        "--roles".as_ref(),
        "reader,admin".as_ref(),
        "--keys-file".as_ref(),
        keys.as_os_str(),
    ]);
    assert!(ok, "{text}");
    let token = text
        .lines()
        .find(|l| l.starts_with("tk_"))
        .unwrap_or_else(|| panic!("no token printed: {text}"))
        .to_string();
    assert!(
        !std::fs::read_to_string(&keys).unwrap().contains(&token),
        "only the hash is stored"
    );
    let token_file = write(root, "token", &token);
    let ca_file = write(root, "ca.pem", &setup.ca.pem());
    let server = TestServer::start(setup.config.clone()).await;
    let url = format!("https://{}", server.addr);
    let args = |cmd: &[&str]| {
        let mut a: Vec<std::ffi::OsString> = cmd.iter().map(|s| s.into()).collect();
        for (flag, v) in [
            ("--server", url.as_str().as_ref()),
            ("--tls-ca", ca_file.as_os_str()),
            ("--tls-server-name", "localhost".as_ref()),
            ("--token-file", token_file.as_os_str()),
        ] {
            a.push(flag.into());
            a.push(v.to_os_string());
        }
        a
    };
    let mut last = String::new();
    for _ in 0..100 {
        let a = args(&["user", &user(1), "--format", "json"]);
        let refs: Vec<&std::ffi::OsStr> = a.iter().map(|s| s.as_os_str()).collect();
        let (ok, text) = helpers::tiering_cli(&refs);
        if ok {
            assert!(text.contains(&user(1)), "{text}");
            last.clear();
            break;
        }
        last = text;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(last.is_empty(), "tiering user over TLS failed: {last}");
    let a = args(&["models", "list"]);
    let refs: Vec<&std::ffi::OsStr> = a.iter().map(|s| s.as_os_str()).collect();
    let (ok, text) = helpers::tiering_cli(&refs);
    assert!(
        ok && text.contains("v1") && text.contains("CURRENT"),
        "{text}"
    );
    // Without the token: UNAUTHENTICATED, named.
    let (ok, text) = helpers::tiering_cli(&[
        "user".as_ref(),
        user(1).as_ref(),
        "--server".as_ref(),
        url.as_ref(),
        "--tls-ca".as_ref(),
        ca_file.as_os_str(),
        "--tls-server-name".as_ref(),
        "localhost".as_ref(),
    ]);
    assert!(!ok && text.contains("UNAUTHENTICATED"), "{text}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_added_to_the_keys_file_works_without_a_restart_and_a_bad_file_keeps_the_old_keys() {
    use std::os::unix::fs::PermissionsExt;
    let dirs = Dirs::new();
    let mut config = dirs.config();
    publish(&config.models, "v1", 1.0);
    config.tls_reload_secs = 1;
    let keys = dirs.root.path().join("keys.toml");
    let first = keys_file(&keys, &[("first", &[Role::Reader], None)], &[]);
    config.keys_file = Some(keys.clone());
    let server = TestServer::start(config).await;
    let channel = plain_channel(server.addr).await;
    until_model(&mut authed(channel.clone(), Some(&first[0]))).await;

    let both = keys_file(
        &keys,
        &[
            ("first", &[Role::Reader], None),
            ("second", &[Role::Reader], None),
        ],
        &[],
    );
    let mut second = authed(channel.clone(), Some(&both[1]));
    let mut seen = false;
    for _ in 0..100 {
        if call(&mut second, "GetModelInfo").await == Code::Ok {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "the new key was never accepted");
    // A file others can read is refused at reload: the keys loaded before stay in force.
    std::fs::write(&keys, "[[key]]\nname = \"x\"\n").unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(call(&mut second, "GetModelInfo").await, Code::Ok);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_speaks_tls_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls;
    let (setup, _) = tls_setup(None, &[]);
    let server = TestServer::start(setup.config.clone()).await;
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from(setup.ca.0.der().to_vec());
    roots.add(ca).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(server.metrics_addr)
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    let _ = tls.read_to_string(&mut out).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("tiering_refused_total") || out.contains("tiering_"),
        "{out}"
    );
    // Plain HTTP on the same port gets no metrics.
    let plain = server.metrics().await;
    assert!(!plain.contains("HTTP/1.1 200"), "{plain}");
    server.stop().await.unwrap();
}

/// True if a fresh TLS connection trusting `ca_pem` gets GetUserTier answered.
async fn served_with(addr: SocketAddr, ca_pem: &str) -> bool {
    match tls_channel(addr, ca_pem, None).await {
        Ok(ch) => call(&mut authed(ch, None), "GetUserTier").await == Code::Ok,
        Err(_) => false,
    }
}

/// SIGHUP, not the poll: the server process polls its TLS files only hourly here, so the new
/// certificate can only come from the signal. New connections then get it; a connection opened
/// before keeps working, and the process is still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_replaced_certificate_files_without_dropping_open_connections() {
    let dirs = Dirs::new();
    publish(&dirs.models(), "v1", 1.0);
    let ca = Ca::new("server CA");
    let (cert_path, key_path) = server_files(dirs.root.path(), &ca);
    let env = [
        ("TIERING__TLS_CERT", cert_path.to_str().unwrap()),
        ("TIERING__TLS_KEY", key_path.to_str().unwrap()),
        ("TIERING__TLS_RELOAD_SECS", "3600"),
    ];
    let mut server = helpers::ServerProcess::spawn(&dirs, &env);
    let addr: SocketAddr = server.addr.parse().unwrap();
    let old = tls_channel(addr, &ca.pem(), None).await.unwrap();
    let mut old_client = authed(old, None);
    until_model(&mut old_client).await;
    assert_eq!(call(&mut old_client, "GetUserTier").await, Code::Ok);

    let new_ca = Ca::new("renewed CA");
    let (cert, key) = new_ca.leaf(&["localhost"], false);
    std::fs::write(&key_path, key).unwrap();
    std::fs::write(&cert_path, cert).unwrap();
    // Without the signal nothing changes (the poll is an hour away).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !served_with(addr, &new_ca.pem()).await,
        "the new certificate served before SIGHUP"
    );
    assert!(served_with(addr, &ca.pem()).await);

    let pid = i32::try_from(server.child.id()).unwrap();
    // SAFETY: kill(2) on the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let mut switched = false;
    for _ in 0..100 {
        if served_with(addr, &new_ca.pem()).await {
            switched = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        switched,
        "no new connection got the new certificate after SIGHUP"
    );
    assert_eq!(
        call(&mut old_client, "GetUserTier").await,
        Code::Ok,
        "the connection opened before SIGHUP keeps working"
    );
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "SIGHUP must not stop the server"
    );
    assert!(
        !served_with(addr, &ca.pem()).await,
        "new connections no longer get the old certificate"
    );
}
