//! Admission on the HTTP listener (`serve::http::admission`), over real sockets with hostile
//! clients: an oversized body is 413 (not 400), a body that never arrives is 408 after
//! `request_body_timeout_ms` and holds no concurrency slot meanwhile, headers that never end
//! close the connection after the same timeout. Every client is bounded in count and time.

use super::http_api::{get, post, start};
use crate::helpers::{publish, user, Dirs};
use serde_json::json;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tiering::serve::ServeConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BODY_TIMEOUT_MS: u64 = 400;

async fn served(max_concurrent: usize) -> (Dirs, crate::helpers::TestServer, SocketAddr) {
    let dirs = Dirs::new();
    publish(&dirs.models(), "v1", 1.0);
    let (server, http) = start(ServeConfig {
        max_message_bytes: 4096,
        request_body_timeout_ms: BODY_TIMEOUT_MS,
        max_concurrent_requests: max_concurrent,
        ..dirs.config()
    })
    .await;
    (dirs, server, http)
}

/// Everything the server sends on `stream` until it closes it or `within` passes; `None` if it
/// neither answered nor closed in time.
async fn read_until_close(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let end = Instant::now() + within;
    loop {
        let left = end.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                // One answer is enough: its body is a small JSON object.
                let text = String::from_utf8_lossy(&out);
                if text.contains("\r\n\r\n") && text.trim_end().ends_with('}') {
                    return Some(text.into_owned());
                }
            }
        }
    }
}

#[tokio::test]
async fn an_oversized_body_is_413_resource_exhausted_whether_declared_or_chunked() {
    let (_dirs, server, http) = served(8).await;
    let ids: Vec<String> = (0..400).map(|i| format!("user-{i:05}")).collect();
    let body = json!({ "userIds": ids });
    assert!(body.to_string().len() > 4096);
    let r = post(http, "/v1/users:batchGet", None, &body).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["status"], "RESOURCE_EXHAUSTED");
    // Chunked: no Content-Length to refuse up front; the read stops at the limit.
    let mut s = TcpStream::connect(http).await.unwrap();
    let head = format!(
        "POST /v1/users:batchGet HTTP/1.1\r\nHost: {http}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let text = body.to_string();
    for part in text.as_bytes().chunks(1000) {
        let chunk = format!("{:x}\r\n", part.len());
        s.write_all(chunk.as_bytes()).await.unwrap();
        s.write_all(part).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let answer = read_until_close(&mut s, Duration::from_secs(10))
        .await
        .expect("an answer within 10 s");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Within the limit, the same route answers.
    let r = post(
        http,
        "/v1/users:batchGet",
        None,
        &json!({"userIds": [user(1)]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_body_that_never_arrives_is_408_after_the_timeout_and_holds_no_slot_meanwhile() {
    // One slot: if the silent client held it, the lookup below would be refused.
    let (_dirs, server, http) = served(1).await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(http).await.unwrap();
        let head = format!(
            "POST /v1/events HTTP/1.1\r\nHost: {http}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"ev"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        silent.push(s);
    }
    let started = Instant::now();
    let r = get(http, &format!("/v1/users/{}", user(3)), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for mut s in silent {
        let answer = read_until_close(&mut s, Duration::from_secs(10))
            .await
            .expect("the server answers a silent body within 10 s");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("DEADLINE_EXCEEDED"), "{answer}");
    }
    assert!(started.elapsed() >= Duration::from_millis(BODY_TIMEOUT_MS - 50));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn headers_that_never_end_are_cut_off_after_the_timeout() {
    let (_dirs, server, http) = served(8).await;
    let mut s = TcpStream::connect(http).await.unwrap();
    let head = format!("GET /v1/users/{} HTTP/1.1\r\nHost: {http}\r\n", user(1));
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let answer = read_until_close(&mut s, Duration::from_secs(10)).await;
    assert!(
        answer.is_some(),
        "the connection is closed (or answered) within 10 s"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // The server still answers others.
    assert_eq!(
        get(http, &format!("/v1/users/{}", user(1)), None)
            .await
            .status,
        200
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_deadline_sent_as_grpc_timeout_reaches_the_handler_and_a_passed_one_is_504() {
    let (_dirs, server, http) = served(8).await;
    let path = format!("/v1/users/{}", user(2));
    let r = super::http_api::request(http, "GET", &path, &[("grpc-timeout", "10S")], None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // 1 ns: over before the handler looks at it.
    let r = super::http_api::request(http, "GET", &path, &[("grpc-timeout", "1n")], None).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["status"], "DEADLINE_EXCEEDED");
    server.stop().await.unwrap();
}
