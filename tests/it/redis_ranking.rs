//! The at-risk ranking in Redis ([`tiering::serve::ranking::redis`]): replicas on one Redis
//! page the same versions, a walk continues on any replica, events on one replica re-rank for
//! the others, expired generations are ABORTED, and the maintenance lease moves when its holder
//! dies. Plus the page script's visibility rule on hand-made rows.

use crate::at_risk_ranking::{assert_ranked, rescan};
use crate::helpers::{publish, user, Dirs, ServerProcess, SpawnOptions, TestServer, NOW, USERS};
use crate::redis_fixture::RedisServer;
use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use tiering::pb::tiering_client::TieringClient;
use tiering::pb::{self as proto, ListAtRiskUsersRequest, RecordEventsRequest, UserTier};
use tiering::serve::ranking::redis::{LEASE_KEY, PAGE_SCRIPT};
use tiering::serve::ServeConfig;
use tonic::transport::Channel;
use tonic::Code;

const KEYS: &str = "k1 000102030405060708090a0b0c0d0e0f";

async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .expect("test finished within 120 s");
}

/// A replica's config on `url`, sharing page-token keys with the others.
fn config(dirs: &Dirs, url: &str) -> ServeConfig {
    let keys = dirs.root.path().join("token-keys");
    std::fs::write(&keys, KEYS).unwrap();
    ServeConfig {
        state_dir: Some(PathBuf::from(url)),
        page_token_key_file: Some(keys),
        ..dirs.config()
    }
}

async fn two(dirs: &Dirs, url: &str, c: impl Fn(ServeConfig) -> ServeConfig) -> [TestServer; 2] {
    publish(&dirs.models(), "v1", 1.0);
    let a = TestServer::start(c(config(dirs, url))).await;
    a.ready().await;
    let b = TestServer::start(c(config(dirs, url))).await;
    b.ready().await;
    [a, b]
}

fn order(id: &str, t: i64, amount: f64) -> proto::Event {
    proto::Event {
        user_id: id.into(),
        ts: Some(prost_types::Timestamp {
            seconds: t,
            nanos: 0,
        }),
        kind: "order".into(),
        amount,
        ..Default::default()
    }
}

async fn page(
    client: &mut TieringClient<Channel>,
    req: &ListAtRiskUsersRequest,
) -> Result<(Vec<UserTier>, String), tonic::Status> {
    let mut stream = client.list_at_risk_users(req.clone()).await?.into_inner();
    let (mut users, mut token) = (Vec::new(), String::new());
    while let Some(u) = stream.message().await? {
        if !u.next_page_token.is_empty() {
            token = u.next_page_token.clone();
        }
        users.push(u);
    }
    Ok((users, token))
}

/// A first page, retried while the first build is running (UNAVAILABLE), at most 20 s.
async fn first_page(
    client: &mut TieringClient<Channel>,
    req: &ListAtRiskUsersRequest,
) -> (Vec<UserTier>, String) {
    for _ in 0..200 {
        match page(client, req).await {
            Ok(p) => return p,
            Err(e) if e.code() == Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("no first page within 20 s");
}

/// Every page of a walk, on the clients in turn.
async fn walk(
    clients: &mut [TieringClient<Channel>],
    mut req: ListAtRiskUsersRequest,
) -> Vec<UserTier> {
    let (mut all, token) = first_page(&mut clients[0], &req).await;
    req.page_token = token;
    for i in 1..1000 {
        if req.page_token.is_empty() {
            return all;
        }
        let n = clients.len();
        let (users, token) = page(&mut clients[i % n], &req).await.unwrap();
        all.extend(users);
        req.page_token = token;
    }
    panic!("more than 1000 pages");
}

fn pairs(users: &[UserTier]) -> Vec<(String, f64)> {
    users
        .iter()
        .map(|u| (u.user_id.clone(), u.churn_probability))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_walk_started_on_one_replica_continues_on_the_other_once_in_order_while_both_record_events(
) {
    bounded(async {
        let redis = RedisServer::start();
        let dirs = Dirs::new();
        let [a, b] = two(&dirs, &redis.url(), |c| c).await;
        let mut clients = [a.client().await, b.client().await];
        let mut req = ListAtRiskUsersRequest {
            limit: 7,
            ..Default::default()
        };
        let (mut seen, token) = first_page(&mut clients[0], &req).await;
        req.page_token = token;
        let mut round = 0;
        while !req.page_token.is_empty() {
            // Events on both replicas move users between pages.
            for (k, c) in clients.iter_mut().enumerate() {
                let events = (0..5)
                    .map(|j| {
                        order(
                            &user((round * 11 + j * 37 + k * 5) % USERS),
                            NOW - 10,
                            500.0,
                        )
                    })
                    .collect();
                c.record_events(RecordEventsRequest { events })
                    .await
                    .unwrap();
            }
            round += 1;
            assert!(round < 200, "walk too long");
            let (users, token) = page(&mut clients[round % 2], &req).await.unwrap();
            seen.extend(users);
            req.page_token = token;
        }
        assert_ranked(&seen);
        let ids: HashSet<&str> = seen.iter().map(|u| u.user_id.as_str()).collect();
        assert_eq!(ids.len(), seen.len(), "each user once");
        assert_eq!(seen.len(), USERS, "every user");
        a.stop().await.unwrap();
        b.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_event_recorded_on_one_replica_reranks_the_user_for_a_new_walk_on_the_other_equal_to_a_rescan(
) {
    bounded(async {
        let redis = RedisServer::start();
        let dirs = Dirs::new();
        let [a, b] = two(&dirs, &redis.url(), |c| c).await;
        let (mut ca, mut cb) = (a.client().await, b.client().await);
        let before = walk(&mut [ca.clone()], ListAtRiskUsersRequest::default()).await;
        let moved = before[0].user_id.clone();
        let events = vec![
            order(&moved, NOW - 10, 1000.0),
            order("brand-new", NOW - 5, 1.0),
        ];
        cb.record_events(RecordEventsRequest { events })
            .await
            .unwrap();
        let after = walk(&mut [ca.clone()], ListAtRiskUsersRequest::default()).await;
        let ids: Vec<String> = after.iter().map(|u| u.user_id.clone()).collect();
        assert!(
            ids.contains(&"brand-new".to_string()),
            "a new user is ranked"
        );
        let old_p = before[0].churn_probability;
        let new_p = after
            .iter()
            .find(|u| u.user_id == moved)
            .unwrap()
            .churn_probability;
        assert!(new_p < old_p, "{moved}: {old_p} then {new_p}");
        assert_eq!(pairs(&after), rescan(&mut ca, ids).await);
        a.stop().await.unwrap();
        b.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filters_select_exactly_the_matching_users_in_redis() {
    bounded(async {
        let redis = RedisServer::start();
        let dirs = Dirs::new();
        let [a, b] = two(&dirs, &redis.url(), |c| c).await;
        let mut clients = [a.client().await, b.client().await];
        let all = walk(&mut clients, ListAtRiskUsersRequest::default()).await;
        let req = ListAtRiskUsersRequest {
            min_churn_probability: 0.4,
            tier_ids: vec!["dormant".into()],
            lifecycle_stages: vec!["silent".into(), "about_to_churn".into(), "churned".into()],
            limit: 5,
            page_token: String::new(),
            interest_categories: vec![],
        };
        let got = walk(&mut clients, req.clone()).await;
        let want: Vec<UserTier> = all
            .into_iter()
            .filter(|u| {
                u.churn_probability >= 0.4
                    && u.tier_id == "dormant"
                    && req.lifecycle_stages.contains(&u.lifecycle_stage)
            })
            .collect();
        assert!(!want.is_empty(), "the fixture has matching users");
        assert_eq!(pairs(&got), pairs(&want));
        a.stop().await.unwrap();
        b.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_for_an_expired_generation_is_aborted() {
    bounded(async {
        let redis = RedisServer::start();
        let dirs = Dirs::new();
        let [a, b] = two(&dirs, &redis.url(), |c| ServeConfig {
            page_token_max_age_secs: 1,
            ranking_rebuild_secs: 1,
            ..c
        })
        .await;
        let mut cb = b.client().await;
        let mut req = ListAtRiskUsersRequest {
            limit: 3,
            ..Default::default()
        };
        let (_, token) = first_page(&mut a.client().await, &req).await;
        req.page_token = token;
        let mut aborted = None;
        for _ in 0..100 {
            match page(&mut cb, &req).await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => {
                    aborted = Some(e);
                    break;
                }
            }
        }
        let e = aborted.expect("the token was refused within 10 s");
        assert_eq!(e.code(), Code::Aborted, "{e}");
        assert!(e.message().contains("start again"), "{}", e.message());
        a.stop().await.unwrap();
        b.stop().await.unwrap();
    })
    .await;
}

/// `tiering serve --state URL` as a child process.
fn spawn_replica(dirs: &Dirs, url: &str) -> ServerProcess {
    let opts = SpawnOptions {
        state: Some(url.to_string()),
        ..SpawnOptions::default()
    };
    ServerProcess::spawn_with(dirs, &[("TIERING_PAGE_TOKEN_KEYS", KEYS)], opts)
}

async fn lease(conn: &mut redis::aio::MultiplexedConnection) -> Option<String> {
    redis::cmd("GET")
        .arg(LEASE_KEY)
        .query_async(conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lease_moves_to_the_other_replica_when_its_holder_is_killed() {
    bounded(async {
        let redis = RedisServer::start();
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        let mut conn = redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let first = spawn_replica(&dirs, &redis.url());
        let mut c1 = first.client().await;
        first_page(&mut c1, &ListAtRiskUsersRequest::default()).await;
        let holder = lease(&mut conn)
            .await
            .expect("the only replica holds the lease");
        let second = spawn_replica(&dirs, &redis.url());
        let mut c2 = second.client().await;
        first.kill();
        let mut moved = None;
        for _ in 0..150 {
            match lease(&mut conn).await {
                Some(l) if l != holder => {
                    moved = Some(l);
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        assert!(moved.is_some(), "the lease moved within 15 s");
        // The survivor serves the ranking and keeps it current.
        c2.record_events(RecordEventsRequest {
            events: vec![order("after-kill", NOW - 5, 1.0)],
        })
        .await
        .unwrap();
        let all = walk(&mut [c2], ListAtRiskUsersRequest::default()).await;
        assert!(all.iter().any(|u| u.user_id == "after-kill"));
        second.kill();
    })
    .await;
}

/// Hand-made rows: `a` built at 0 and re-ranked at 2 (lower), `b` at 0, `c` created at 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_script_shows_each_user_once_as_of_the_version_asked() {
    bounded(async {
        let redis = RedisServer::start();
        let mut conn = redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let (z, u, g) = ("{rank}:z:t", "{rank}:u:t", "{rank}:g:t");
        let _: () = redis::pipe()
            .cmd("ZADD")
            .arg(z)
            .arg(-0.9)
            .arg("a\u{0}0")
            .arg(-0.5)
            .arg("b\u{0}0")
            .arg(-0.7)
            .arg("c\u{0}1")
            .arg(-0.1)
            .arg("a\u{0}2")
            .ignore()
            .cmd("HSET")
            .arg(u)
            .arg("a")
            .arg("0=aa,2=bb")
            .arg("b")
            .arg("0=cc")
            .arg("c")
            .arg("1=dd")
            .ignore()
            .cmd("HSET")
            .arg(g)
            .arg("seq")
            .arg(2)
            .arg("floor")
            .arg(1)
            .arg("as_of")
            .arg(5)
            .arg("model")
            .arg("m")
            .ignore()
            .query_async(&mut conn)
            .await
            .unwrap();
        let run = |v: &str, kind: &str, cursor: &str, limit: usize| {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(PAGE_SCRIPT).arg(3).arg(z).arg(u).arg(g);
            cmd.arg(v)
                .arg(kind)
                .arg(cursor)
                .arg(limit)
                .arg(1000)
                .arg(0.0);
            cmd
        };
        let users = |r: &[String]| -> Vec<String> {
            r[6..]
                .chunks(2)
                .map(|p| format!("{}:{}", p[0], p[1]))
                .collect()
        };
        let r: Vec<String> = run("1", "", "", 10).query_async(&mut conn).await.unwrap();
        assert_eq!(users(&r), ["a:aa", "c:dd", "b:cc"], "version 1");
        assert_eq!(r[5], "1", "done");
        let r: Vec<String> = run("", "", "", 10).query_async(&mut conn).await.unwrap();
        assert_eq!(r[1], "2", "newest version");
        assert_eq!(users(&r), ["c:dd", "b:cc", "a:bb"], "version 2");
        let r: Vec<String> = run("2", "user", "c", 1)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(users(&r), ["b:cc"], "after the cursor, limited");
        assert_eq!(r[5], "0", "not done");
        let r: Vec<String> = run("0", "", "", 10).query_async(&mut conn).await.unwrap();
        assert_eq!(r, ["gone"], "below the floor");
        let r: Vec<String> = run("3", "", "", 10).query_async(&mut conn).await.unwrap();
        assert_eq!(r, ["gone"], "a version not yet made");
    })
    .await;
}
