//! The HTTP/JSON API over real HTTP (`--http-listen`): every route against the gRPC answer for
//! the same users, the error mapping (404 with the gRPC code, 400 naming the field, 429 over the
//! batch limit), tokens and roles, CSRF refusals, the CSV download against `tiering at-risk
//! --format csv`, and the OpenAPI description against the router.

use crate::helpers::{publish, user, Dirs, TestServer};
use http_body_util::BodyExt;
use prost::Message;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use tiering::pb as proto;
use tiering::serve::auth::keys::{new_token, token_hash, KeyEntry, KeysFile};
use tiering::serve::auth::Role;
use tiering::serve::ServeConfig;

/// An HTTP answer.
pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request on a new connection.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Full<hyper::body::Bytes>,
    >(hyper_util::rt::TokioIo::new(stream))
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = req
        .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
        .unwrap();
    let resp = tokio::time::timeout(std::time::Duration::from_secs(60), send.send_request(req))
        .await
        .expect("an answer within 60 s")
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    request(addr, "GET", path, &headers, None).await
}

pub async fn post(addr: SocketAddr, path: &str, token: Option<&str>, body: &Value) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    headers.extend(auth.iter().map(|a| ("authorization", a.as_str())));
    request(addr, "POST", path, &headers, Some(&body.to_string())).await
}

/// A free port on 127.0.0.1 (bound and released).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A server with a model and the HTTP API on a free port; its HTTP address.
pub async fn start(config: ServeConfig) -> (TestServer, SocketAddr) {
    let http = free_addr();
    let server = TestServer::start(ServeConfig {
        http_listen: Some(http),
        ..config
    })
    .await;
    server.ready().await;
    (server, http)
}

/// A gRPC answer as the HTTP API writes it (canonical JSON from the descriptors, defaults
/// included), to compare answers field by field.
pub fn canonical(name: &str, msg: &impl Message) -> Value {
    let pool = prost_reflect::DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
    let desc = pool
        .get_message_by_name(&format!("tiering.v1.{name}"))
        .unwrap();
    let dynamic =
        prost_reflect::DynamicMessage::decode(desc, msg.encode_to_vec().as_slice()).unwrap();
    let opts = prost_reflect::SerializeOptions::new().skip_default_fields(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &opts)
        .unwrap()
}

/// A keys file (mode 0600) with one token per role set; the tokens in order.
pub fn keys_file(path: &Path, keys: &[(&str, &[Role])]) -> Vec<String> {
    let mut file = KeysFile::default();
    let mut tokens = Vec::new();
    for (name, roles) in keys {
        let token = new_token();
        file.keys.push(KeyEntry {
            name: name.to_string(),
            sha256: hex::encode(token_hash(&token)),
            roles: roles.to_vec(),
            rate: None,
            burst: None,
        });
        tokens.push(token);
    }
    file.write(path).unwrap();
    tokens
}

async fn served() -> (Dirs, TestServer, SocketAddr) {
    let dirs = Dirs::new();
    publish(&dirs.models(), "v1", 1.0);
    let (server, http) = start(dirs.config()).await;
    (dirs, server, http)
}

#[tokio::test]
async fn get_user_tier_over_http_equals_the_grpc_answer_in_canonical_json() {
    let (_dirs, server, http) = served().await;
    let mut grpc = server.client().await;
    for i in [0, 7, 150] {
        let id = user(i);
        let want = grpc
            .get_user_tier(proto::GetUserTierRequest {
                user_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let r = get(http, &format!("/v1/users/{id}"), None).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.headers["content-type"], "application/json");
        let got = r.json();
        assert_eq!(got, canonical("UserTier", &want));
        assert_eq!(got["userId"], id.as_str());
        assert_eq!(
            got["churnProbability"].as_f64(),
            Some(want.churn_probability)
        );
        assert_eq!(
            got["asOf"], "2024-06-01T00:00:00Z",
            "timestamps in RFC 3339"
        );
        assert!(got["topFactors"].as_array().is_some_and(|f| !f.is_empty()));
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn an_unknown_user_is_404_with_the_grpc_code_in_the_body() {
    let (_dirs, server, http) = served().await;
    let r = get(http, "/v1/users/nobody-here", None).await;
    assert_eq!(r.status, 404);
    let body = r.json();
    assert_eq!(body["code"], 5);
    assert_eq!(body["status"], "NOT_FOUND");
    assert!(body["message"].as_str().unwrap().contains("unknown user"));
    // An unknown route is a 404 too, but UNIMPLEMENTED: a client can tell them apart.
    let r = get(http, "/v1/nothing", None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["status"], "UNIMPLEMENTED");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_bad_field_is_400_naming_the_field_as_grpc_does() {
    let (_dirs, server, http) = served().await;
    // A JSON value of the wrong shape: named by the JSON path, in proto names.
    let r = post(
        http,
        "/v1/events",
        None,
        &json!({"events": [{"userId": "u", "kind": "order", "ts": "yesterday"}]}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["status"], "INVALID_ARGUMENT");
    assert_eq!(r.json()["field"], "events[0].ts");
    // A rule of the handler (the same validation as gRPC): the field it names.
    let r = post(
        http,
        "/v1/events",
        None,
        &json!({"events": [{"userId": "u", "kind": "order", "ts": "1970-01-01T00:00:00Z"}]}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["field"], "events[0].ts");
    let mut grpc = server.client().await;
    let status = grpc
        .batch_get_user_tiers(proto::BatchGetUserTiersRequest {
            user_ids: vec![user(1), String::new()],
        })
        .await
        .unwrap_err();
    let r = post(
        http,
        "/v1/users:batchGet",
        None,
        &json!({"userIds": [user(1), ""]}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["field"], "user_ids[1]");
    assert_eq!(r.json()["message"], status.message());
    // Unknown fields and query parameters are refused, not ignored.
    let r = post(http, "/v1/users:batchGet", None, &json!({"userIdz": []})).await;
    assert_eq!(r.status, 400);
    let r = get(http, "/v1/at-risk?minChurnProbability=2", None).await;
    assert_eq!(
        (r.status, r.json()["field"].as_str()),
        (400, Some("min_churn_probability"))
    );
    let r = get(http, "/v1/at-risk?colour=red", None).await;
    assert_eq!(
        (r.status, r.json()["field"].as_str()),
        (400, Some("colour"))
    );
    // A single-valued parameter given twice (under either name) is refused: which one was
    // meant is not ours to guess (a threshold of 0.9 then 0 would export every user).
    for query in [
        "minChurnProbability=0.9&minChurnProbability=0",
        "min_churn_probability=0.9&minChurnProbability=0",
        "limit=1&limit=2",
    ] {
        let r = get(http, &format!("/v1/at-risk?{query}"), None).await;
        let text: String = r.text().chars().take(300).collect();
        assert_eq!(r.status, 400, "{query}: {text}");
        let field = r.json()["field"].as_str().unwrap_or_default().to_string();
        assert!(
            query.starts_with(&field) || field == "min_churn_probability",
            "{query}: {field}"
        );
        assert!(text.contains("more than once"), "{query}: {text}");
    }
    // A repeated field takes every value.
    let r = get(
        http,
        "/v1/at-risk?tierIds=active_regulars&tierIds=dormant&limit=1",
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{:.300}", r.text());
    server.stop().await.unwrap();
}

/// Refusals the router makes before a handler runs are the API's JSON errors too, naming what
/// is wrong: a path segment that is not UTF-8, a body that is not JSON, a method a route does
/// not take (405 with `Allow`). A client parses one error shape, whatever went wrong.
#[tokio::test]
async fn refusals_before_the_handler_are_json_errors_naming_what_is_wrong() {
    let (_dirs, server, http) = served().await;
    let r = get(http, "/v1/users/%ff%fe", None).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["status"], "INVALID_ARGUMENT");
    assert_eq!(r.json()["field"], "user_id");
    let r = get(http, "/v1/models/%ff/report", None).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["field"], "version", "the route's own parameter");

    let json = [("content-type", "application/json")];
    let r = request(http, "POST", "/v1/events", &json, Some("{not json")).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let message = r.json()["message"].as_str().unwrap_or_default().to_string();
    assert!(
        message.starts_with("the request body is not JSON: "),
        "no empty field before the message: {message:?}"
    );
    assert!(r.json().get("field").is_none(), "{}", r.text());

    for (method, path, allowed) in [
        ("DELETE", "/v1/users/u1", "GET"),
        ("PUT", "/v1/events", "POST"),
        ("GET", "/v1/events", "POST"),
    ] {
        let r = request(http, method, path, &[], None).await;
        assert_eq!(r.status, 405, "{method} {path}: {}", r.text());
        assert_eq!(r.json()["status"], "UNIMPLEMENTED", "{method} {path}");
        let message = r.json()["message"].as_str().unwrap_or_default().to_string();
        assert!(
            message.contains(method) && message.contains(path),
            "{message}"
        );
        let allow = r.headers.get("allow").and_then(|v| v.to_str().ok());
        assert!(
            allow.is_some_and(|a| a.contains(allowed)),
            "{method} {path}: Allow {allow:?}"
        );
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_batch_over_the_limit_is_429_resource_exhausted_naming_user_ids() {
    let dirs = Dirs::new();
    publish(&dirs.models(), "v1", 1.0);
    let (server, http) = start(ServeConfig {
        max_batch_size: 3,
        ..dirs.config()
    })
    .await;
    let ids: Vec<String> = (0..4).map(user).collect();
    let r = post(http, "/v1/users:batchGet", None, &json!({ "userIds": ids })).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(r.json()["field"], "user_ids");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn batch_get_score_and_model_info_over_http_equal_the_grpc_answers() {
    let (_dirs, server, http) = served().await;
    let mut grpc = server.client().await;
    let ids = vec![user(3), "ghost".to_string(), user(99)];
    let want = grpc
        .batch_get_user_tiers(proto::BatchGetUserTiersRequest {
            user_ids: ids.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let r = post(http, "/v1/users:batchGet", None, &json!({ "userIds": ids })).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), canonical("BatchGetUserTiersResponse", &want));
    assert_eq!(r.json()["notFound"], json!(["ghost"]));

    let want = grpc
        .get_model_info(proto::GetModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let r = get(http, "/v1/model", None).await;
    assert_eq!(r.json(), canonical("ModelInfo", &want));
    assert_eq!(
        r.json()["usersHeld"],
        "200",
        "uint64 is a string in canonical JSON"
    );

    let events = json!({"userId": "walk-in", "events": [
        {"userId": "walk-in", "kind": "order", "ts": "2024-05-20T10:00:00Z", "amount": 35.5},
        {"userId": "walk-in", "kind": "view", "ts": "2024-05-25T10:00:00Z", "watchSeconds": 120}
    ]});
    let r = post(http, "/v1/users:score", None, &events).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let req = proto::ScoreUserRequest {
        user_id: "walk-in".into(),
        events: vec![
            proto::Event {
                user_id: "walk-in".into(),
                kind: "order".into(),
                ts: Some(prost_types::Timestamp {
                    seconds: 1_716_199_200,
                    nanos: 0,
                }),
                amount: 35.5,
                ..Default::default()
            },
            proto::Event {
                user_id: "walk-in".into(),
                kind: "view".into(),
                ts: Some(prost_types::Timestamp {
                    seconds: 1_716_631_200,
                    nanos: 0,
                }),
                watch_seconds: 120,
                ..Default::default()
            },
        ],
        registered_at: None,
    };
    let want = grpc.score_user(req).await.unwrap().into_inner();
    assert_eq!(r.json(), canonical("UserTier", &want));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn recorded_events_over_http_reach_the_grpc_answer() {
    let (_dirs, server, http) = served().await;
    let body = json!({"events": [
        {"userId": "fresh-1", "kind": "order", "ts": "2024-05-31T10:00:00Z", "amount": 12}
    ]});
    let r = post(http, "/v1/events", None, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["accepted"], "1");
    assert_eq!(r.json()["newUsers"], "1");
    assert_eq!(r.json()["applied"], true);
    let mut grpc = server.client().await;
    let want = grpc
        .get_user_tier(proto::GetUserTierRequest {
            user_id: "fresh-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let r = get(http, "/v1/users/fresh-1", None).await;
    assert_eq!(r.json(), canonical("UserTier", &want));
    server.stop().await.unwrap();
}

/// A gRPC request with `authorization: Bearer TOKEN` when a token is given.
pub fn bearer<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

/// Every page of ListAtRiskUsers over gRPC with `req`'s filters: users in order.
pub async fn grpc_walk(
    server: &TestServer,
    mut req: proto::ListAtRiskUsersRequest,
    token: Option<&str>,
) -> Vec<proto::UserTier> {
    let mut grpc = server.client().await;
    let mut users = Vec::new();
    for _ in 0..1000 {
        let mut stream = grpc
            .list_at_risk_users(bearer(req.clone(), token))
            .await
            .unwrap()
            .into_inner();
        let mut next = String::new();
        while let Some(mut u) = stream.message().await.unwrap() {
            if !u.next_page_token.is_empty() {
                next = std::mem::take(&mut u.next_page_token);
            }
            users.push(u);
        }
        if next.is_empty() {
            return users;
        }
        req.page_token = next;
    }
    panic!("more than 1000 pages");
}

#[tokio::test]
async fn at_risk_pages_over_http_equal_the_grpc_walk_with_the_same_filters() {
    let (_dirs, server, http) = served().await;
    let all = grpc_walk(&server, proto::ListAtRiskUsersRequest::default(), None).await;
    let tier = all[0].tier_id.clone();
    let want = grpc_walk(
        &server,
        proto::ListAtRiskUsersRequest {
            tier_ids: vec![tier.clone()],
            min_churn_probability: 0.1,
            limit: 7,
            ..Default::default()
        },
        None,
    )
    .await;
    assert!(want.len() > 7, "the walk has several pages");
    let mut got = Vec::new();
    let mut token = String::new();
    for _ in 0..100 {
        let mut q = format!("/v1/at-risk?tierIds={tier}&minChurnProbability=0.1&limit=7");
        if !token.is_empty() {
            q.push_str(&format!("&pageToken={}", urlencode(&token)));
        }
        let r = get(http, &q, None).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let page = r.json();
        got.extend(page["users"].as_array().unwrap().iter().cloned());
        token = page["nextPageToken"].as_str().unwrap().to_string();
        if token.is_empty() {
            break;
        }
    }
    let want: Vec<Value> = want
        .iter()
        .map(|u| {
            let mut v = canonical("UserTier", u);
            v.as_object_mut().unwrap().remove("nextPageToken");
            v
        })
        .collect();
    assert_eq!(got, want);
    let r = get(
        http,
        &format!("/v1/at-risk:count?tierIds={tier}&minChurnProbability=0.1"),
        None,
    )
    .await;
    assert_eq!(r.json()["matched"], want.len().to_string());
    server.stop().await.unwrap();
}

/// Percent-encodes a query value.
pub fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[test]
fn the_csv_download_is_byte_for_byte_tiering_at_risk_format_csv() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dirs = Dirs::new();
    publish(&dirs.models(), "v1", 1.0);
    let (server, http) = rt.block_on(start(ServeConfig {
        // Small pages: the download streams several of them.
        max_page_size: 16,
        default_page_size: 16,
        ..dirs.config()
    }));
    let tier = rt.block_on(grpc_walk(&server, Default::default(), None))[0]
        .tier_id
        .clone();
    for (query, args) in [
        (String::new(), vec!["--min-probability", "0"]),
        (
            format!("?tierIds={tier}&minChurnProbability=0.2"),
            vec!["--min-probability", "0.2", "--tier", tier.as_str()],
        ),
    ] {
        let r = rt.block_on(get(http, &format!("/v1/at-risk.csv{query}"), None));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.headers["content-type"], "text/csv; charset=utf-8");
        assert_eq!(r.headers["transfer-encoding"], "chunked", "streamed");
        let url = format!("http://{}", server.addr);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tiering"))
            .args(["at-risk", "--server", &url, "--format", "csv"])
            // The download's list: the gRPC default order, churned users kept.
            .args(["--order-by", "churn-probability", "--include-churned"])
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = String::from_utf8(out.stdout).unwrap();
        assert!(out.lines().count() > 17, "more rows than one page");
        assert_eq!(r.text(), out);
    }
    rt.block_on(server.stop()).unwrap();
}

#[tokio::test]
async fn tokens_and_roles_guard_every_route_as_they_guard_its_rpc() {
    let dirs = Dirs::new();
    publish(&dirs.models(), "v1", 1.0);
    let keys = dirs.root.path().join("keys.toml");
    let t = keys_file(
        &keys,
        &[
            ("reader", &[Role::Reader]),
            ("retention", &[Role::Retention]),
            ("writer", &[Role::Writer]),
            ("admin", &[Role::Admin]),
        ],
    );
    let (server, http) = start(ServeConfig {
        keys_file: Some(keys),
        ..dirs.config()
    })
    .await;
    let (reader, retention, writer, admin) = (&t[0], &t[1], &t[2], &t[3]);
    let path = format!("/v1/users/{}", user(1));
    let r = get(http, &path, None).await;
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    let r = get(http, &path, Some("tk_not_a_key")).await;
    assert_eq!(r.status, 401);
    assert_eq!(get(http, &path, Some(reader)).await.status, 200);
    let r = get(http, &path, Some(retention)).await;
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (403, Some("PERMISSION_DENIED"))
    );
    assert_eq!(get(http, "/v1/at-risk", Some(reader)).await.status, 403);
    assert_eq!(get(http, "/v1/at-risk", Some(retention)).await.status, 200);
    assert_eq!(get(http, "/v1/at-risk.csv", Some(reader)).await.status, 403);
    assert_eq!(
        get(http, "/v1/at-risk.csv", Some(retention)).await.status,
        200
    );
    let ev = json!({"events": [{"userId": "w", "kind": "order", "ts": "2024-05-31T10:00:00Z"}]});
    assert_eq!(
        post(http, "/v1/events", Some(reader), &ev).await.status,
        403
    );
    assert_eq!(
        post(http, "/v1/events", Some(writer), &ev).await.status,
        200
    );
    assert_eq!(get(http, "/v1/models", Some(reader)).await.status, 403);
    let r = get(http, "/v1/models", Some(admin)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["current"], "v1");
    // The console and the description hold no data: open.
    assert_eq!(get(http, "/", None).await.status, 200);
    assert_eq!(get(http, "/openapi.json", None).await.status, 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_cross_site_or_non_json_post_is_refused_before_it_acts() {
    let (_dirs, server, http) = served().await;
    let body =
        r#"{"events": [{"userId": "csrf-victim", "kind": "order", "ts": "2024-05-31T10:00:00Z"}]}"#;
    // What an HTML form on another site can send: a simple content type, no preflight.
    let r = request(
        http,
        "POST",
        "/v1/events",
        &[("content-type", "text/plain")],
        Some(body),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["field"], "Content-Type");
    let r = request(
        http,
        "POST",
        "/v1/events",
        &[
            ("content-type", "application/json"),
            ("origin", "https://evil.example"),
        ],
        Some(body),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (403, Some("PERMISSION_DENIED"))
    );
    assert!(r.headers.get("access-control-allow-origin").is_none());
    let r = get(http, "/v1/users/csrf-victim", None).await;
    assert_eq!(r.status, 404, "nothing was recorded");
    let origin = format!("http://{http}");
    let r = request(
        http,
        "POST",
        "/v1/events",
        &[
            ("content-type", "application/json"),
            ("origin", origin.as_str()),
        ],
        Some(body),
    )
    .await;
    assert_eq!(r.status, 200, "same origin: {}", r.text());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn models_are_promoted_and_rolled_back_over_http_by_an_admin() {
    let dirs = Dirs::new();
    publish(&dirs.models(), "v1", 1.0);
    publish(&dirs.models(), "v2", 2.0);
    let (server, http) = start(dirs.config()).await;
    let r = get(http, "/v1/models", None).await;
    assert_eq!(r.json()["current"], "v2");
    assert_eq!(r.json()["models"].as_array().unwrap().len(), 2);
    let r = post(http, "/v1/models:promote", None, &json!({"version": "v1"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"version": "v1", "previous": "v2"}));
    let r = post(http, "/v1/models:promote", None, &json!({"version": "v9"})).await;
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (404, Some("NOT_FOUND"))
    );
    let r = post(http, "/v1/models:rollback", None, &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["version"], "v2");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_openapi_description_lists_exactly_the_routes_the_router_answers() {
    let (_dirs, server, http) = served().await;
    let doc = get(http, "/openapi.json", None).await.json();
    assert_eq!(doc["openapi"], "3.0.3");
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let grpc = op["x-grpc-method"].as_str().unwrap();
            assert!(
                tiering::serve::auth::access_for(grpc).is_some(),
                "{grpc} has a row in the access table"
            );
            let concrete = path
                .replace("{user_id}", &user(1))
                .replace("{version}", "v1");
            let r = match method.as_str() {
                "get" => get(http, &concrete, None).await,
                "post" => post(http, &concrete, None, &json!({})).await,
                other => panic!("method {other}"),
            };
            assert_ne!(r.status, 405, "{method} {path}");
            if r.headers["content-type"] == "application/json" && r.status >= 400 {
                assert_ne!(
                    r.json()["status"],
                    "UNIMPLEMENTED",
                    "{method} {path} is routed"
                );
            }
            // The other method on the same path is not routed.
            let other = match method.as_str() {
                "get" => post(http, &concrete, None, &json!({})).await,
                _ => get(http, &concrete, None).await,
            };
            assert!(
                item.get(if method == "get" { "post" } else { "get" })
                    .is_some()
                    || other.status == 405,
                "{path} answers only what the description says ({})",
                other.status
            );
        }
    }
    assert_eq!(operations, tiering::serve::http::ROUTES.len());
    // Every schema a route names is described.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "UserTier",
        "ModelInfo",
        "Error",
        "Event",
        "BatchGetUserTiersRequest",
    ] {
        assert!(schemas.contains_key(name), "{name}");
    }
    let at_risk = &paths["/v1/at-risk"]["get"]["parameters"];
    let names: Vec<&str> = at_risk
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"tierIds") && names.contains(&"pageToken"),
        "{names:?}"
    );
    server.stop().await.unwrap();
}
