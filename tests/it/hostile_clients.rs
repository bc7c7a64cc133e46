//! Hostile or broken clients (issue 9, items 8–12, 14, 15): raw HTTP/2 attacks and malformed
//! input. Each test measures that normal calls from another client still succeed, and that the
//! server's memory stays bounded; every loop is bounded in count and time.

use crate::helpers::{
    publish, publish_snapshot, snapshot_of, user, Dirs, ServerProcess, SpawnOptions, TestServer,
};
use hyper::body::Bytes;
use prost::Message;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tiering::pb::{self as proto, GetUserTierRequest, ListAtRiskUsersRequest};
use tiering::serve::ServeConfig;
use tonic::codegen::http;
use tonic::Code;

async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .expect("test finished within 120 s");
}

async fn started(dirs: &Dirs, config: ServeConfig) -> TestServer {
    publish(&dirs.models(), "v1", 1.0);
    let server = TestServer::start(config).await;
    server.ready().await;
    server
}

/// A raw HTTP/2 connection (the `h2` crate), driven in the background.
async fn h2_connect(addr: &str) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

fn grpc_request(addr: &str, path: &str, headers: &[(&str, &str)]) -> http::Request<()> {
    let mut b = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

/// One gRPC message frame (uncompressed).
fn frame(msg: &[u8]) -> Bytes {
    let mut out = vec![0u8];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    Bytes::from(out)
}

/// The grpc-status of a response: from its headers (trailers-only) or its trailers.
async fn grpc_status(resp: http::Response<h2::RecvStream>) -> (Option<String>, http::HeaderMap) {
    let (parts, mut body) = resp.into_parts();
    if let Some(s) = parts.headers.get("grpc-status") {
        return (s.to_str().ok().map(str::to_string), parts.headers);
    }
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { break };
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.ok().flatten().unwrap_or_default();
    let status = trailers
        .get("grpc-status")
        .and_then(|s| s.to_str().ok())
        .map(str::to_string);
    let mut headers = parts.headers;
    headers.extend(trailers);
    (status, headers)
}

/// Resident memory of a process, in bytes (`VmRSS` in /proc/PID/status).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// `n` normal GetUserTier calls from a fresh client, each with a 2 s deadline; how many succeed.
async fn normal_calls(addr: &str, n: usize) -> usize {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    let Ok(ch) = ch else { return 0 };
    let mut client = proto::tiering_client::TieringClient::new(ch);
    let mut ok = 0;
    for i in 0..n {
        let mut req = tonic::Request::new(GetUserTierRequest { user_id: user(i) });
        req.set_timeout(Duration::from_secs(2));
        if client.get_user_tier(req).await.is_ok() {
            ok += 1;
        }
    }
    ok
}

/// What one attacking connection did: streams it opened, the server's stream limit it saw, and
/// for each stream when its answer came and its grpc-status.
struct Attack {
    opened: usize,
    max_streams: usize,
    answers: Vec<Option<(Instant, Option<String>)>>,
}

/// Opens up to `streams` GetUserTier streams on one connection that send headers and never a
/// body, until the server lets no more open for 2 s; then waits (at most 30 s) for every answer.
async fn headers_only_streams(addr: String, streams: usize) -> Attack {
    let mut send = h2_connect(&addr).await;
    let (mut waiting, mut bodies) = (Vec::new(), Vec::new());
    for _ in 0..streams {
        let Ok(Ok(ready)) =
            tokio::time::timeout(Duration::from_secs(2), send.clone().ready()).await
        else {
            break;
        };
        send = ready;
        let req = grpc_request(&addr, "/tiering.v1.Tiering/GetUserTier", &[]);
        let Ok((resp, body)) = send.send_request(req, false) else {
            break;
        };
        bodies.push(body);
        waiting.push(tokio::spawn(async move {
            let resp = resp.await.ok()?;
            let (status, _) = grpc_status(resp).await;
            Some((Instant::now(), status))
        }));
    }
    let mut answers = Vec::new();
    for w in waiting {
        let a = tokio::time::timeout(Duration::from_secs(30), w).await;
        answers.push(a.ok().and_then(Result::ok).flatten());
    }
    Attack {
        opened: bodies.len(),
        max_streams: send.current_max_send_streams(),
        answers,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_never_send_a_body_do_not_starve_other_clients() {
    bounded(async {
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        let server = ServerProcess::spawn(&dirs, &[("TIERING__REQUEST_BODY_TIMEOUT_MS", "1000")]);
        let pid = server.child.id();
        let _ = server.client().await;
        let addr = server.addr.clone();
        let before = rss_bytes(pid);
        // 1,100 header-only streams over 11 connections, all at once.
        let started = Instant::now();
        let attack: Vec<_> = (0..11)
            .map(|_| tokio::spawn(headers_only_streams(addr.clone(), 100)))
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Normal calls from another client, during the attack.
        let ok = normal_calls(&addr, 20).await;
        let during = rss_bytes(pid);
        let mut attacks = Vec::new();
        for a in attack {
            attacks.push(a.await.unwrap());
        }
        let opened: usize = attacks.iter().map(|a| a.opened).sum();
        let answered: Vec<_> = attacks.iter().flat_map(|a| &a.answers).collect();
        eprintln!(
            "body-less streams: {opened} opened, normal calls {ok}/20, server RSS {} MB -> {} MB",
            before >> 20,
            during >> 20
        );
        assert_eq!(opened, 1100, "the attack opened its streams");
        assert_eq!(ok, 20, "normal calls answered during the attack");
        assert!(
            attacks.iter().all(|a| a.max_streams == 100),
            "the server bounds streams per connection"
        );
        // Every body-less stream was answered DEADLINE_EXCEEDED once the body timeout passed.
        for a in &answered {
            let (at, status) = a.as_ref().expect("every body-less stream is answered");
            assert_eq!(status.as_deref(), Some("4"));
            assert!(at.duration_since(started) < Duration::from_secs(15));
        }
        let grown = during.saturating_sub(before);
        assert!(grown < 100 << 20, "the server grew by {} MB", grown >> 20);
        assert_eq!(normal_calls(&addr, 5).await, 5, "and after it");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_messages_quote_a_bounded_prefix_of_the_request() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, dirs.config()).await;
        let mut client = server.client().await;
        let huge = "k".repeat(1 << 20);
        let event = proto::Event {
            user_id: "someone".into(),
            ts: Some(prost_types::Timestamp {
                seconds: crate::helpers::NOW - 60,
                nanos: 0,
            }),
            kind: huge.clone(),
            amount: 1.0,
            ..Default::default()
        };
        let e = client
            .record_events(proto::RecordEventsRequest {
                events: vec![event.clone()],
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{:?}", e.code());
        assert!(
            e.message().starts_with("events[0].kind"),
            "{}",
            &e.message()[..80.min(e.message().len())]
        );
        assert!(
            e.message().len() <= 1024,
            "message of {} bytes",
            e.message().len()
        );
        let e = client
            .score_user(proto::ScoreUserRequest {
                user_id: "scored".into(),
                events: vec![proto::Event {
                    user_id: huge.clone(),
                    kind: "order".into(),
                    ..event
                }],
                registered_at: None,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{:?}", e.code());
        assert!(
            e.message().len() <= 1024,
            "message of {} bytes",
            e.message().len()
        );
        let e = client
            .list_at_risk_users(ListAtRiskUsersRequest {
                tier_ids: vec![huge.clone()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{:?}", e.code());
        assert!(e.message().starts_with("tier_ids[0]"));
        assert!(
            e.message().len() <= 1024,
            "message of {} bytes",
            e.message().len()
        );
        let e = client
            .list_at_risk_users(ListAtRiskUsersRequest {
                lifecycle_stages: vec![huge.clone()],
                page_token: huge,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{:?}", e.code());
        assert!(
            e.message().len() <= 1024,
            "message of {} bytes",
            e.message().len()
        );
        server.stop().await.unwrap();
    })
    .await;
}

/// A token in the old unauthenticated format (version 1, postcard, CRC-32), forged to ask for
/// another `as_of`.
fn forged_crc_token(as_of: i64, filter_hash: u64, model_hash: u64) -> String {
    #[derive(serde::Serialize)]
    struct T {
        as_of: i64,
        last_probability: f64,
        last_user: String,
        filter_hash: u64,
        model_hash: u64,
    }
    let mut bytes = vec![1u8];
    bytes.extend(
        postcard::to_stdvec(&T {
            as_of,
            last_probability: 1.0,
            last_user: String::new(),
            filter_hash,
            model_hash,
        })
        .unwrap(),
    );
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    hex::encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_page_token_is_refused() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, dirs.config()).await;
        let mut client = server.client().await;
        let req = ListAtRiskUsersRequest {
            min_churn_probability: 0.0,
            ..Default::default()
        };
        // The filter and model fingerprints are public knowledge (FNV-1a of known strings).
        let filter_hash =
            tiering::features::hash::fnv1a64(format!("{}||", 0.0f64.to_bits()).as_bytes());
        let model_hash = tiering::features::hash::fnv1a64(b"v1");
        for as_of in [-62_135_596_800i64, 253_402_300_799] {
            let r = client
                .list_at_risk_users(ListAtRiskUsersRequest {
                    page_token: forged_crc_token(as_of, filter_hash, model_hash),
                    ..req.clone()
                })
                .await;
            let e = match r {
                Ok(s) => {
                    let first = s.into_inner().message().await;
                    panic!("a forged token (as_of {as_of}) was served: {first:?}");
                }
                Err(e) => e,
            };
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
            assert!(e.message().starts_with("page_token"), "{e:?}");
        }
        server.stop().await.unwrap();
    })
    .await;
}

/// The first page's token, from a server.
async fn first_page_token(server: &TestServer) -> String {
    let mut client = server.client().await;
    let mut stream = client
        .list_at_risk_users(ListAtRiskUsersRequest {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut token = String::new();
    while let Some(u) = stream.message().await.unwrap() {
        token = u.next_page_token;
    }
    assert!(!token.is_empty());
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_a_key_file_accept_each_others_tokens_and_keys_rotate() {
    bounded(async {
        let keys = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = keys.path().join(name);
            std::fs::write(&p, text).unwrap();
            Some(p)
        };
        const K1: &str = "k1 000102030405060708090a0b0c0d0e0f\n";
        const K2: &str = "k2 f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff\n";
        let mut servers = Vec::new();
        for key_file in [
            file("a", K1),
            file("b", K1),
            file("rotated", &format!("{K2}{K1}")),
            file("new-only", K2),
        ] {
            let dirs = Dirs::new();
            let config = ServeConfig {
                page_token_key_file: key_file,
                ..dirs.config()
            };
            servers.push((started(&dirs, config).await, dirs));
        }
        let token = first_page_token(&servers[0].0).await;
        let next = |token: &str| ListAtRiskUsersRequest {
            limit: 10,
            page_token: token.to_string(),
            ..Default::default()
        };
        // A replica holding the key accepts the signature; in embedded mode each process has its
        // own ranking versions, so another replica then asks to restart the walk (ABORTED), never
        // INVALID_ARGUMENT.
        let accepted = |i: usize, r: Result<_, tonic::Status>| match r {
            Ok(_) => assert_eq!(i, 0, "only the issuing server holds the token's version"),
            Err(e) => {
                assert_eq!(
                    e.code(),
                    Code::Aborted,
                    "replica {i} refused the signature: {e:?}"
                );
                assert!(e.message().contains("start again"), "{e:?}");
            }
        };
        for (i, (server, _)) in servers.iter().enumerate().take(3) {
            let r = server.client().await.list_at_risk_users(next(&token)).await;
            accepted(i, r.map(|_| ()));
        }
        let e = servers[3]
            .0
            .client()
            .await
            .list_at_risk_users(next(&token))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("key id \"k1\""), "{e:?}");
        // The rotated server signs with k2, which the new-only server accepts.
        let rotated = first_page_token(&servers[2].0).await;
        let r = servers[3]
            .0
            .client()
            .await
            .list_at_risk_users(next(&rotated))
            .await;
        accepted(3, r.map(|_| ()));
        for (server, _) in servers {
            server.stop().await.unwrap();
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_requests_are_invalid_argument_counted_and_carry_the_request_id() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, dirs.config()).await;
        let addr = server.addr.to_string();
        let mut send = h2_connect(&addr).await.ready().await.unwrap();
        let req = grpc_request(
            &addr,
            "/tiering.v1.Tiering/GetUserTier",
            &[("x-request-id", "probe-42")],
        );
        let (resp, mut body) = send.send_request(req, false).unwrap();
        // Field 1 as a length-delimited string that runs past the end of the message.
        body.send_data(frame(&[0x0a, 0x7f, b'x']), true).unwrap();
        let (status, headers) = grpc_status(resp.await.unwrap()).await;
        assert_eq!(
            status.as_deref(),
            Some("3"),
            "INVALID_ARGUMENT: {headers:?}"
        );
        assert_eq!(
            headers.get("x-request-id").and_then(|v| v.to_str().ok()),
            Some("probe-42"),
            "{headers:?}"
        );
        let text = server.metrics().await;
        assert!(
            text.contains("tiering_decode_failures_total{rpc=\"GetUserTier\"} 1"),
            "{text}"
        );
        // Every answer names its request id: the caller's, or one the server made.
        let mut client = server.client().await;
        let mut req = tonic::Request::new(GetUserTierRequest {
            user_id: "nobody".into(),
        });
        req.metadata_mut()
            .insert("x-request-id", "probe-43".parse().unwrap());
        let e = client.get_user_tier(req).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert_eq!(
            e.metadata()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok()),
            Some("probe-43")
        );
        let details = tiering::pb::rpc_status::Status::decode(e.details()).unwrap();
        let info = details
            .details
            .iter()
            .find(|d| d.type_url.ends_with("google.rpc.RequestInfo"))
            .expect("a RequestInfo detail");
        assert_eq!(
            tiering::pb::rpc_status::RequestInfo::decode(&info.value[..])
                .unwrap()
                .request_id,
            "probe-43"
        );
        let e = client
            .get_user_tier(GetUserTierRequest {
                user_id: "nobody".into(),
            })
            .await
            .unwrap_err();
        let made = e
            .metadata()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok());
        assert!(made.is_some_and(|id| !id.is_empty()), "{e:?}");
        server.stop().await.unwrap();
    })
    .await;
}

/// The at-risk request of the memory test, as a gRPC frame.
fn at_risk_frame() -> Bytes {
    frame(
        &ListAtRiskUsersRequest {
            min_churn_probability: 0.0,
            limit: 10_000,
            ..Default::default()
        }
        .encode_to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_risk_streams_nobody_reads_keep_server_memory_bounded() {
    bounded(async {
        let dirs = Dirs::new();
        std::fs::create_dir_all(dirs.models()).unwrap();
        publish_snapshot(&dirs.models(), "v1", 1.0, &snapshot_of(20_000));
        let server = ServerProcess::spawn(&dirs, &[]);
        let pid = server.child.id();
        let _ = server.client().await;
        let addr = server.addr.clone();
        assert_eq!(normal_calls(&addr, 5).await, 5);
        let before = rss_bytes(pid);
        // 60 streams of 10,000 users each, on one connection that never reads.
        let mut send = h2_connect(&addr).await;
        let mut answers = Vec::new();
        let mut bodies = Vec::new();
        for _ in 0..60 {
            send = send.ready().await.unwrap();
            let req = grpc_request(&addr, "/tiering.v1.Tiering/ListAtRiskUsers", &[]);
            let (resp, mut body) = send.send_request(req, false).unwrap();
            body.send_data(at_risk_frame(), true).unwrap();
            bodies.push(body);
            answers.push(resp);
        }
        let mut refused = 0;
        let mut streaming = Vec::new();
        for resp in answers {
            let resp = tokio::time::timeout(Duration::from_secs(30), resp)
                .await
                .expect("an answer within 30 s")
                .unwrap();
            match resp.headers().get("grpc-status") {
                Some(s) => {
                    assert_eq!(s, "8", "over the cap: RESOURCE_EXHAUSTED");
                    refused += 1;
                }
                None => streaming.push(resp),
            }
        }
        // Let the server do what it will with the unread streams, then measure.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let during = rss_bytes(pid);
        assert_eq!(
            normal_calls(&addr, 10).await,
            10,
            "normal calls during the attack"
        );
        let grown = during.saturating_sub(before);
        eprintln!(
            "at-risk attack: {} streams open, {refused} refused, server RSS {} MB -> {} MB",
            streaming.len(),
            before >> 20,
            during >> 20
        );
        assert!(grown < 150 << 20, "the server grew by {} MB", grown >> 20);
        // The attacker leaves: what it left is dropped, and new streams may open again.
        drop((streaming, bodies, send));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut send = h2_connect(&addr).await;
        let mut ok = 0;
        for _ in 0..8 {
            send = send.ready().await.unwrap();
            let req = grpc_request(&addr, "/tiering.v1.Tiering/ListAtRiskUsers", &[]);
            let (resp, mut body) = send.send_request(req, false).unwrap();
            body.send_data(at_risk_frame(), true).unwrap();
            let resp = tokio::time::timeout(Duration::from_secs(30), resp)
                .await
                .unwrap()
                .unwrap();
            if resp.headers().get("grpc-status").is_none() {
                ok += 1;
            }
        }
        assert_eq!(ok, 8, "streams open again once the attacker left");
        let _ = SocketAddr::from(([127, 0, 0, 1], 0));
    })
    .await;
}

/// CPU time a process has used (user + system), in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_descriptor_limit_the_server_backs_off_keeps_serving_and_loads_models() {
    bounded(async {
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let server = ServerProcess::spawn_with(
            &dirs,
            &[("TIERING__CONNECTION_IDLE_TIMEOUT_SECS", "2")],
            SpawnOptions {
                nofile: Some(256),
                log: Some(log.clone()),
                ..SpawnOptions::default()
            },
        );
        let pid = server.child.id();
        let _ = server.client().await;
        let addr = server.addr.clone();
        // 300 connections that never send a byte: more than the 256 descriptors the server has.
        let mut held = Vec::new();
        for _ in 0..300 {
            match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(&addr)).await {
                Ok(Ok(s)) => held.push(s),
                _ => break,
            }
        }
        assert!(
            held.len() >= 260,
            "only {} connections opened: {:#?}",
            held.len(),
            log.lock().unwrap()
        );
        let before = cpu_ticks(pid);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let used = cpu_ticks(pid) - before;
        // A new model during the attack: the watcher still has descriptors to open it.
        publish(&dirs.models(), "v2", 2.0);
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(15))
            .connect()
            .await
            .expect("a new client connects during the attack");
        let mut client = proto::tiering_client::TieringClient::new(ch);
        let mut version = String::new();
        for _ in 0..150 {
            let mut req = tonic::Request::new(proto::GetModelInfoRequest {});
            req.set_timeout(Duration::from_secs(5));
            if let Ok(info) = client.get_model_info(req).await {
                version = info.into_inner().version;
                if version == "v2" {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(version, "v2", "the model watcher loaded the new bundle");
        let ok = normal_calls(&addr, 5).await;
        let lines = log.lock().unwrap().clone();
        let cap_lines = lines.iter().filter(|l| l.contains("connection cap reached")).count();
        eprintln!(
            "descriptor limit 256, {} connections: server used {used} ticks in 2 s, normal calls {ok}/5",
            held.len()
        );
        assert!(used < 60, "the server spun: {used} ticks of CPU in 2 s");
        assert_eq!(ok, 5, "normal calls during the attack");
        assert_eq!(cap_lines, 1, "the cap is logged once: {lines:#?}");
        assert!(
            !lines.iter().any(|l| l.contains("Too many open files")),
            "{lines:#?}"
        );
        drop(held);
    })
    .await;
}

/// Reads from `s` until the peer closes it (EOF or error), for at most `limit`; whether it did.
async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_but_busy_ones_are_not() {
    bounded(async {
        let dirs = Dirs::new();
        let config = ServeConfig {
            connection_idle_timeout_secs: 1,
            request_body_timeout_ms: 2500,
            ..dirs.config()
        };
        let server = started(&dirs, config).await;
        let addr = server.addr.to_string();
        let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let t = Instant::now();
        assert!(closed_within(&mut idle, Duration::from_secs(5)).await);
        assert!(
            t.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
        // A connection whose request waits for its body (2.5 s) outlives the 1 s idle timeout
        // and gets the request's answer.
        let attack = headers_only_streams(addr.clone(), 1).await;
        assert_eq!(attack.opened, 1);
        let (_, status) = attack.answers[0].clone().expect("answered");
        assert_eq!(status.as_deref(), Some("4"));
        assert_eq!(normal_calls(&addr, 3).await, 3);
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_connections_are_sent_away_and_silent_peers_are_dropped_by_keepalive() {
    bounded(async {
        let dirs = Dirs::new();
        let config = ServeConfig {
            connection_idle_timeout_secs: 0,
            max_connection_age_secs: 1,
            max_connection_age_grace_secs: 1,
            http2_keepalive_interval_secs: 1,
            http2_keepalive_timeout_secs: 1,
            ..dirs.config()
        };
        let server = started(&dirs, config).await;
        let addr = server.addr.to_string();
        // Maximum age: an HTTP/2 client is sent GOAWAY and its connection ends.
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (_send, conn) = h2::client::handshake(tcp).await.unwrap();
        let t = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(6), conn).await;
        assert!(ended.is_ok(), "the connection outlived its maximum age");
        assert!(
            t.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
        // Keepalive: a peer that completes the handshake, then never answers a PING, is dropped.
        use tokio::io::AsyncWriteExt;
        let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
        silent
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(closed_within(&mut silent, Duration::from_secs(5)).await);
        server.stop().await.unwrap();
    })
    .await;
}
