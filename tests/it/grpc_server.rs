//! End-to-end tests of the gRPC server: a real server on 127.0.0.1:0, the generated client.

use crate::helpers::{
    self as common, publish, publish_corrupt, user, Dirs, ServerProcess, TestServer, AS_OF, NOW,
    USERS,
};
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tiering::features::{Timestamp, DAY};
use tiering::pb::{
    self as proto, BatchGetUserTiersRequest, GetModelInfoRequest, GetUserTierRequest,
    ListAtRiskUsersRequest, RecordEventsRequest, ScoreUserRequest, UserTier,
};
use tiering::serve::ServeConfig;
use tonic::{Code, Request};

/// Every test is bounded in time.
async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(90), f)
        .await
        .expect("test finished within 90 s");
}

fn ts(t: Timestamp) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: t,
        nanos: 0,
    })
}

fn event(user_id: &str, t: Timestamp, kind: &str, amount: f64) -> proto::Event {
    proto::Event {
        user_id: user_id.into(),
        ts: ts(t),
        kind: kind.into(),
        amount,
        ..Default::default()
    }
}

fn get(id: &str) -> GetUserTierRequest {
    GetUserTierRequest { user_id: id.into() }
}

fn assert_invalid<T: std::fmt::Debug>(r: Result<T, tonic::Status>, field: &str) {
    let e = r.expect_err("expected INVALID_ARGUMENT");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().starts_with(field),
        "message {:?} should name {field}",
        e.message()
    );
}

async fn started(dirs: &Dirs, config: ServeConfig) -> TestServer {
    publish(&dirs.models(), "v1", 1.0);
    let server = TestServer::start(config).await;
    server.ready().await;
    server
}

async fn list_all(
    client: &mut proto::tiering_client::TieringClient<tonic::transport::Channel>,
    mut req: ListAtRiskUsersRequest,
) -> (Vec<UserTier>, usize) {
    let mut out = Vec::new();
    let mut pages = 0;
    loop {
        pages += 1;
        let mut stream = client
            .list_at_risk_users(req.clone())
            .await
            .unwrap()
            .into_inner();
        let mut next = String::new();
        while let Some(u) = stream.message().await.unwrap() {
            assert!(
                next.is_empty(),
                "only the last message of a page carries the token"
            );
            next = u.next_page_token.clone();
            out.push(u);
        }
        if next.is_empty() {
            return (out, pages);
        }
        req.page_token = next;
        assert!(pages < 1000, "pagination does not end");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_user_tier_fills_every_field_as_of_the_pinned_clock() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, dirs.config()).await;
        let mut client = server.client().await;
        let u = client
            .get_user_tier(get(&user(80)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(u.user_id, user(80));
        assert_eq!(u.tier_id, "dormant");
        assert_eq!(u.tier_name, "Dormant");
        assert_eq!(u.tier_name_zh, "沉睡用户");
        assert!(
            u.churn_probability > 0.5 && u.churn_probability < 1.0,
            "{}",
            u.churn_probability
        );
        assert_eq!(u.risk_level, "high");
        assert!(u.risk_percentile > 0.0);
        assert_eq!(u.rfm_segment, "important_retain");
        assert_eq!(u.lifecycle_stage, "about_to_churn");
        assert_eq!(u.top_factors[0].feature, "recency_days");
        assert!(
            (u.top_factors[0].value - (81.0 + 1.0 / 24.0)).abs() < 1e-3,
            "{}",
            u.top_factors[0].value
        );
        assert_eq!(u.recommended_actions, vec!["win-back coupon".to_string()]);
        assert_eq!(u.model_version, "v1");
        assert_eq!(u.as_of, ts(NOW));
        assert!(u.next_page_token.is_empty());
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_get_user_tiers_answers_in_request_order_and_lists_unknown_ids() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, dirs.config()).await;
        let mut client = server.client().await;
        let ids = vec![user(2), "ghost".to_string(), user(1), user(2)];
        let r = client
            .batch_get_user_tiers(BatchGetUserTiersRequest { user_ids: ids })
            .await
            .unwrap()
            .into_inner();
        let got: Vec<&str> = r.users.iter().map(|u| u.user_id.as_str()).collect();
        assert_eq!(
            got,
            vec![user(2).as_str(), user(1).as_str(), user(2).as_str()]
        );
        assert_eq!(r.not_found, vec!["ghost".to_string()]);
        assert!(r
            .users
            .iter()
            .all(|u| u.tier_id == "active_regulars" && u.model_version == "v1"));
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_user_scores_raw_activity_without_storing_it() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, dirs.config()).await;
        let mut client = server.client().await;
        let req = ScoreUserRequest {
            user_id: "visitor".into(),
            events: vec![
                event("", NOW - 2 * DAY, "order", 99.0),
                event("visitor", NOW - DAY, "view", 0.0),
            ],
            registered_at: ts(NOW - 10 * DAY),
        };
        let u = client.score_user(req).await.unwrap().into_inner();
        assert_eq!(u.user_id, "visitor");
        assert_eq!(u.tier_id, "active_regulars");
        assert!(u.churn_probability < 0.3, "{}", u.churn_probability);
        assert_eq!(u.lifecycle_stage, "new");
        assert_eq!(u.model_version, "v1");
        let e = client.get_user_tier(get("visitor")).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "nothing was stored");
        // Someone else's event in the request is refused.
        let bad = ScoreUserRequest {
            user_id: "visitor".into(),
            events: vec![event("other", NOW, "order", 1.0)],
            registered_at: None,
        };
        assert_invalid(client.score_user(bad).await, "events[0].user_id");
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_events_then_get_user_tier_reflects_the_new_order() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, dirs.config()).await;
        let mut client = server.client().await;
        let before = client
            .get_user_tier(get(&user(80)))
            .await
            .unwrap()
            .into_inner();
        let r = client
            .record_events(RecordEventsRequest {
                events: vec![
                    event(&user(80), NOW - 3600, "order", 50.0),
                    event("newcomer", NOW - 60, "view", 0.0),
                    proto::Event {
                        room_id: "room-7".into(),
                        category: "beauty".into(),
                        watch_seconds: 300,
                        ..event("newcomer", NOW - 30, "VIEW", 0.0)
                    },
                ],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((r.accepted, r.new_users), (3, 1));
        let after = client
            .get_user_tier(get(&user(80)))
            .await
            .unwrap()
            .into_inner();
        assert!(
            after.churn_probability < before.churn_probability,
            "{} -> {}",
            before.churn_probability,
            after.churn_probability
        );
        assert_eq!(
            (before.tier_id.as_str(), after.tier_id.as_str()),
            ("dormant", "active_regulars")
        );
        assert_eq!(after.lifecycle_stage, "mature_active");
        let newcomer = client
            .get_user_tier(get("newcomer"))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(newcomer.rfm_segment, "non_buyer");
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_events_validates_every_event_before_applying_any() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, dirs.config()).await;
        let mut client = server.client().await;
        let ok = || event("half-way", NOW - 60, "order", 5.0);
        let cases: Vec<(proto::Event, &str)> = vec![
            (event("", NOW, "order", 1.0), "events[2].user_id"),
            (event("u", NOW, "purchase", 1.0), "events[2].kind"),
            (event("u", NOW, "order", f64::NAN), "events[2].amount"),
            (event("u", NOW, "order", -1.0), "events[2].amount"),
            (event("u", NOW, "order", f64::INFINITY), "events[2].amount"),
            (event("u", NOW, "order", 1e13), "events[2].amount"),
            (
                proto::Event {
                    ts: None,
                    ..event("u", NOW, "order", 1.0)
                },
                "events[2].ts",
            ),
            (event("u", NOW + 3600, "order", 1.0), "events[2].ts"),
            (
                proto::Event {
                    ts: Some(prost_types::Timestamp {
                        seconds: NOW,
                        nanos: -1,
                    }),
                    ..event("u", NOW, "order", 1.0)
                },
                "events[2].ts.nanos",
            ),
        ];
        for (bad, field) in cases {
            let r = client
                .record_events(RecordEventsRequest {
                    events: vec![ok(), ok(), bad],
                })
                .await;
            assert_invalid(r, field);
        }
        assert_eq!(
            client
                .get_user_tier(get("half-way"))
                .await
                .unwrap_err()
                .code(),
            Code::NotFound
        );
        // Within the clock-skew tolerance is fine.
        let r = client
            .record_events(RecordEventsRequest {
                events: vec![event("skewed", NOW + 60, "like", 0.0)],
            })
            .await;
        assert_eq!(r.unwrap().into_inner().accepted, 1);
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_arguments_name_the_field() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, dirs.config()).await;
        let mut client = server.client().await;
        assert_invalid(client.get_user_tier(get("")).await, "user_id");
        assert_invalid(client.get_user_tier(get(&"x".repeat(300))).await, "user_id");
        let ids = vec![user(1), String::new()];
        assert_invalid(
            client
                .batch_get_user_tiers(BatchGetUserTiersRequest { user_ids: ids })
                .await,
            "user_ids[1]",
        );
        let list = |f: fn(&mut ListAtRiskUsersRequest)| {
            let mut r = ListAtRiskUsersRequest {
                min_churn_probability: 0.5,
                ..Default::default()
            };
            f(&mut r);
            r
        };
        for (req, field) in [
            (
                list(|r| r.min_churn_probability = 1.5),
                "min_churn_probability",
            ),
            (
                list(|r| r.min_churn_probability = -0.1),
                "min_churn_probability",
            ),
            (
                list(|r| r.min_churn_probability = f64::NAN),
                "min_churn_probability",
            ),
            (
                list(|r| r.tier_ids = vec!["dormant".into(), "vip".into()]),
                "tier_ids[1]",
            ),
            (
                list(|r| r.lifecycle_stages = vec!["zombie".into()]),
                "lifecycle_stages[0]",
            ),
            (list(|r| r.page_token = "not-a-token".into()), "page_token"),
            (list(|r| r.page_token = "00".repeat(20)), "page_token"),
        ] {
            assert_invalid(client.list_at_risk_users(req).await, field);
        }
        let empty = ScoreUserRequest {
            user_id: "x".into(),
            events: vec![],
            registered_at: None,
        };
        assert_invalid(client.score_user(empty).await, "events");
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_user_tier_returns_not_found_for_unknown_user() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, dirs.config()).await;
        let mut client = server.client().await;
        let e = client.get_user_tier(get("nobody")).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert!(e.message().contains("nobody"));
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_limits_are_resource_exhausted_with_the_limit_named() {
    bounded(async {
        let dirs = Dirs::new();
        let config = ServeConfig {
            max_batch_size: 5,
            max_events_per_request: 3,
            max_message_bytes: 8192,
            ..dirs.config()
        };
        let server = started(&dirs, config).await;
        let mut client = server.client().await;
        let ids: Vec<String> = (0..6).map(user).collect();
        let e = client
            .batch_get_user_tiers(BatchGetUserTiersRequest { user_ids: ids })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(e.message().contains("limit of 5"), "{}", e.message());
        let events = (0..4).map(|_| event("u", NOW, "like", 0.0)).collect();
        let e = client
            .record_events(RecordEventsRequest { events })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(e.message().contains("limit of 3"), "{}", e.message());
        // A message larger than max_message_bytes.
        let big = proto::Event {
            room_id: "r".repeat(20_000),
            ..event("u", NOW, "view", 0.0)
        };
        let e = client
            .record_events(RecordEventsRequest { events: vec![big] })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        // The server is fine afterwards.
        client.get_user_tier(get(&user(1))).await.unwrap();
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_deadline_passed_is_deadline_exceeded_and_not_processed() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, dirs.config()).await;
        // tonic's own Channel enforces `grpc-timeout` on the client side (answering CANCELLED
        // locally), so talk through a plain HTTP/2 client: what comes back is the server's answer.
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .http2_only(true)
                .build_http::<tonic::body::Body>();
        let origin: tonic::codegen::http::Uri = format!("http://{}", server.addr).parse().unwrap();
        let mut raw = proto::tiering_client::TieringClient::with_origin(http, origin);
        let mut req = Request::new(get(&user(1)));
        req.set_timeout(Duration::from_nanos(1));
        assert_eq!(
            raw.get_user_tier(req).await.unwrap_err().code(),
            Code::DeadlineExceeded
        );
        let mut req = Request::new(RecordEventsRequest {
            events: vec![event("too-late", NOW, "order", 1.0)],
        });
        req.set_timeout(Duration::from_micros(100));
        assert_eq!(
            raw.record_events(req).await.unwrap_err().code(),
            Code::DeadlineExceeded
        );
        assert_eq!(
            raw.get_user_tier(get("too-late")).await.unwrap_err().code(),
            Code::NotFound,
            "it was not recorded"
        );
        // A generous deadline is honoured without fuss, by either client.
        let mut req = Request::new(get(&user(1)));
        req.set_timeout(Duration::from_secs(5));
        raw.get_user_tier(req).await.unwrap();
        let mut req = Request::new(get(&user(1)));
        req.set_timeout(Duration::from_secs(5));
        server.client().await.get_user_tier(req).await.unwrap();
        let text = server.metrics().await;
        assert!(
            text.contains(
                "tiering_request_errors_total{code=\"DeadlineExceeded\",rpc=\"GetUserTier\"} 1"
            ),
            "{text}"
        );
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_is_unavailable_and_health_not_serving_until_a_model_loads() {
    bounded(async {
        let dirs = Dirs::new();
        let server = TestServer::start(dirs.config()).await;
        let mut client = server.client().await;
        let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
        use tonic_health::pb::health_check_response::ServingStatus;
        for service in ["", "tiering.v1.Tiering"] {
            let r = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap();
            assert_eq!(
                r.into_inner().status,
                ServingStatus::NotServing as i32,
                "{service:?}"
            );
        }
        assert_eq!(
            client
                .get_user_tier(get(&user(1)))
                .await
                .unwrap_err()
                .code(),
            Code::Unavailable
        );
        assert_eq!(
            client
                .get_model_info(GetModelInfoRequest {})
                .await
                .unwrap_err()
                .code(),
            Code::Unavailable
        );
        let e = client
            .record_events(RecordEventsRequest {
                events: vec![event("early", NOW, "order", 1.0)],
            })
            .await;
        assert_eq!(e.unwrap_err().code(), Code::Unavailable);

        publish(&dirs.models(), "v1", 1.0);
        server.ready().await;
        for service in ["", "tiering.v1.Tiering"] {
            let r = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap();
            assert_eq!(
                r.into_inner().status,
                ServingStatus::Serving as i32,
                "{service:?}"
            );
        }
        let info = client
            .get_model_info(GetModelInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            info.users_held, USERS as u64,
            "the first model seeded the state"
        );
        client.get_user_tier(get(&user(1))).await.unwrap();
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_model_info_describes_the_live_bundle() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, dirs.config()).await;
        let mut client = server.client().await;
        let info = client
            .get_model_info(GetModelInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.version, "v1");
        assert_eq!(info.created_at.map(|t| t.seconds), Some(AS_OF + DAY / 2));
        assert_eq!(info.trained_as_of, ts(AS_OF));
        // FeatureSet::all(): 14 features and the 2 refund features.
        assert_eq!(info.features.len(), 16);
        assert_eq!(info.features[0].name, "recency_days");
        assert_eq!(info.features[0].transform, "log1p");
        let tiers: Vec<&str> = info.tiers.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(tiers, vec!["active_regulars", "dormant"]);
        assert_eq!(info.tiers[0].name_zh, "活跃常客");
        assert_eq!(info.metrics[0].model, "logistic_regression");
        assert!((info.metrics[0].roc_auc - 0.8).abs() < 1e-12);
        assert_eq!(info.chosen_model, "logistic_regression");
        assert_eq!(info.horizon_days, 30);
        assert_eq!(info.users_held, USERS as u64);
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_at_risk_users_pages_return_every_matching_user_once_in_order() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, dirs.config()).await;
        let mut client = server.client().await;
        // The expected order, computed offline with the same scorer.
        let s = common::scorer(1.0);
        let snap = common::snapshot();
        let mut expected: Vec<(f64, String)> = snap
            .user_ids
            .iter()
            .zip(&snap.aggregates)
            .map(|(id, a)| (s.score(a, NOW).churn_probability, id.clone()))
            .filter(|(p, _)| *p >= 0.3)
            .collect();
        expected.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        assert!(expected.len() > 50);

        let req = ListAtRiskUsersRequest {
            min_churn_probability: 0.3,
            limit: 7,
            ..Default::default()
        };
        let (users, pages) = list_all(&mut client, req).await;
        let got: Vec<(f64, String)> = users
            .iter()
            .map(|u| (u.churn_probability, u.user_id.clone()))
            .collect();
        assert_eq!(got, expected);
        assert_eq!(pages, expected.len().div_ceil(7));
        let unique: HashSet<&str> = users.iter().map(|u| u.user_id.as_str()).collect();
        assert_eq!(unique.len(), users.len());
        assert!(users
            .iter()
            .all(|u| u.as_of == ts(NOW) && u.model_version == "v1"));

        // One big page gives the same list; filters hold on every user.
        let req = ListAtRiskUsersRequest {
            min_churn_probability: 0.3,
            limit: 1000,
            ..Default::default()
        };
        let one_page: Vec<(f64, String)> = list_all(&mut client, req)
            .await
            .0
            .iter()
            .map(|u| (u.churn_probability, u.user_id.clone()))
            .collect();
        assert_eq!(one_page, got);
        let req = ListAtRiskUsersRequest {
            min_churn_probability: 0.0,
            tier_ids: vec!["active_regulars".into()],
            lifecycle_stages: vec!["new".into(), "mature_active".into()],
            limit: 5,
            ..Default::default()
        };
        let (filtered, _) = list_all(&mut client, req).await;
        assert!(!filtered.is_empty());
        assert!(filtered
            .iter()
            .all(|u| u.tier_id == "active_regulars" && u.lifecycle_stage == "mature_active"));

        // A token cannot be replayed against other filters.
        let req = ListAtRiskUsersRequest {
            min_churn_probability: 0.3,
            limit: 1,
            ..Default::default()
        };
        let first = client
            .list_at_risk_users(req)
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap()
            .unwrap();
        let other = ListAtRiskUsersRequest {
            min_churn_probability: 0.5,
            limit: 1,
            page_token: first.next_page_token,
            ..Default::default()
        };
        assert_invalid(client.list_at_risk_users(other).await, "page_token");
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_across_a_model_swap_finishes_on_the_old_model_rather_than_mixing_models() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, dirs.config()).await;
        let mut client = server.client().await;
        let req = ListAtRiskUsersRequest {
            min_churn_probability: 0.5,
            limit: 3,
            ..Default::default()
        };
        let mut stream = client
            .list_at_risk_users(req.clone())
            .await
            .unwrap()
            .into_inner();
        let mut token = String::new();
        while let Some(u) = stream.message().await.unwrap() {
            token = u.next_page_token;
        }
        assert!(!token.is_empty());
        publish(&dirs.models(), "v2", 2.0);
        for _ in 0..200 {
            if client
                .get_model_info(GetModelInfoRequest {})
                .await
                .unwrap()
                .into_inner()
                .version
                == "v2"
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // The walk is pinned to its ranking version: it finishes on v1's figures, never mixing.
        let mut stream = client
            .list_at_risk_users(ListAtRiskUsersRequest {
                page_token: token,
                ..req
            })
            .await
            .unwrap()
            .into_inner();
        let mut n = 0;
        while let Some(u) = stream.message().await.unwrap() {
            assert_eq!(u.model_version, "v1");
            n += 1;
        }
        assert!(n > 0);
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_a_killed_server() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, dirs.config()).await;
        let mut client = server.client().await;
        let mut events = vec![
            event("durable", NOW - 7200, "order", 30.0),
            event(&user(99), NOW - 3600, "order", 10.0),
        ];
        for i in 0..50 {
            events.push(event(&format!("bulk-{i}"), NOW - i, "like", 0.0));
        }
        let r = client
            .record_events(RecordEventsRequest { events })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((r.accepted, r.new_users), (52, 51));
        let acked = client
            .get_user_tier(get(&user(99)))
            .await
            .unwrap()
            .into_inner();
        server.kill().await;
        drop(client);

        let server = TestServer::start(dirs.config()).await;
        server.ready().await;
        let mut client = server.client().await;
        let again = client
            .get_user_tier(get(&user(99)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.churn_probability, acked.churn_probability);
        assert_eq!(again.tier_id, "active_regulars");
        client.get_user_tier(get("durable")).await.unwrap();
        client.get_user_tier(get("bulk-49")).await.unwrap();
        let info = client
            .get_model_info(GetModelInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.users_held, (USERS + 51) as u64);

        // A graceful stop snapshots and truncates the log; the next start reads the snapshot.
        server.stop().await.unwrap();
        drop(client);
        assert!(dirs.state().join("state.bin").exists());
        let logged: u64 = std::fs::read_dir(dirs.state())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("wal-"))
            .map(|e| e.metadata().unwrap().len())
            .sum();
        assert_eq!(logged, 0, "the snapshot covers every logged event");
        let server = TestServer::start(dirs.config()).await;
        server.ready().await;
        let mut client = server.client().await;
        let third = client
            .get_user_tier(get(&user(99)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(third.churn_probability, acked.churn_probability);
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_process_loses_no_acknowledged_event() {
    bounded(async {
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        let server = ServerProcess::spawn(&dirs, &[]);
        let mut client = server.client().await;
        for i in 0..20 {
            let e = event(&format!("killed-{i}"), NOW - 60, "order", 1.0 + i as f64);
            client
                .record_events(RecordEventsRequest { events: vec![e] })
                .await
                .unwrap();
        }
        server.kill(); // SIGKILL right after the last acknowledgement
        drop(client);

        let server = ServerProcess::spawn(&dirs, &[]);
        let mut client = server.client().await;
        let ids: Vec<String> = (0..20).map(|i| format!("killed-{i}")).collect();
        let r = client
            .batch_get_user_tiers(BatchGetUserTiersRequest { user_ids: ids })
            .await
            .unwrap()
            .into_inner();
        assert!(r.not_found.is_empty(), "lost: {:?}", r.not_found);
        assert_eq!(r.users.len(), 20);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_makes_a_running_server_load_the_current_model() {
    bounded(async {
        let dirs = Dirs::new();
        publish(&dirs.models(), "v1", 1.0);
        // Polling once an hour: only SIGHUP can make it notice the new bundle in time.
        let server = ServerProcess::spawn(&dirs, &[("TIERING__MODEL_POLL_MS", "3600000")]);
        let mut client = server.client().await;
        publish(&dirs.models(), "v2", 2.0);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            client
                .get_model_info(GetModelInfoRequest {})
                .await
                .unwrap()
                .into_inner()
                .version,
            "v1"
        );
        let pid = i32::try_from(server.child.id()).unwrap();
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
        let mut version = String::new();
        for _ in 0..200 {
            version = client
                .get_model_info(GetModelInfoRequest {})
                .await
                .unwrap()
                .into_inner()
                .version;
            if version == "v2" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(version, "v2");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_log_record_is_dropped_but_damage_mid_log_refuses_to_start() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, dirs.config()).await;
        let mut client = server.client().await;
        for who in ["first", "second"] {
            client
                .record_events(RecordEventsRequest {
                    events: vec![event(who, NOW - 60, "order", 5.0)],
                })
                .await
                .unwrap();
        }
        server.kill().await;
        drop(client);
        let segs = common::wal_segments(&dirs.state());
        assert_eq!(segs.len(), 1);
        let log = std::fs::read(&segs[0]).unwrap();

        // A flipped byte in the first of two records: acknowledged events follow it.
        let mut damaged = log.clone();
        damaged[9] ^= 0xff;
        std::fs::write(&segs[0], &damaged).unwrap();
        let e = common::start_error(dirs.config()).await;
        assert!(
            e.to_string().contains("checksum mismatch in the middle"),
            "{e}"
        );

        // The second record cut short, as by a crash mid-write: dropped, the rest replayed.
        std::fs::write(&segs[0], &log[..log.len() - 3]).unwrap();
        let server = TestServer::start(dirs.config()).await;
        server.ready().await;
        let mut client = server.client().await;
        client.get_user_tier(get("first")).await.unwrap();
        assert_eq!(
            client
                .get_user_tier(get("second"))
                .await
                .unwrap_err()
                .code(),
            Code::NotFound
        );
        // New events append cleanly after the truncated tail.
        client
            .record_events(RecordEventsRequest {
                events: vec![event("third", NOW - 60, "order", 5.0)],
            })
            .await
            .unwrap();
        server.kill().await;
        drop(client);
        let server = TestServer::start(dirs.config()).await;
        server.ready().await;
        let mut client = server.client().await;
        client.get_user_tier(get("third")).await.unwrap();
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_swap_under_load_fails_no_request_and_changes_the_version() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, dirs.config()).await;
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(Mutex::new(Vec::<String>::new()));
        let versions = Arc::new(Mutex::new(HashSet::<String>::new()));
        let mut tasks = Vec::new();
        for t in 0..4 {
            let mut client = server.client().await;
            let (stop, ok, failed, versions) =
                (stop.clone(), ok.clone(), failed.clone(), versions.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = t;
                while !stop.load(Ordering::Relaxed) {
                    match client.get_user_tier(get(&user(i % USERS))).await {
                        Ok(r) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            versions
                                .lock()
                                .unwrap()
                                .insert(r.into_inner().model_version);
                        }
                        Err(e) => failed.lock().unwrap().push(format!("{e:?}")),
                    }
                    i += 7;
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        publish(&dirs.models(), "v2", 2.0);
        tokio::time::sleep(Duration::from_millis(1300)).await;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        assert!(
            failed.lock().unwrap().is_empty(),
            "failed requests: {:?}",
            failed.lock().unwrap()
        );
        assert!(
            ok.load(Ordering::Relaxed) > 100,
            "only {} requests",
            ok.load(Ordering::Relaxed)
        );
        let seen = versions.lock().unwrap().clone();
        assert_eq!(seen, HashSet::from(["v1".to_string(), "v2".to_string()]));
        let mut client = server.client().await;
        assert_eq!(
            client
                .get_model_info(GetModelInfoRequest {})
                .await
                .unwrap()
                .into_inner()
                .version,
            "v2"
        );
        // Users' state survived the swap untouched.
        let info = client
            .get_model_info(GetModelInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.users_held, USERS as u64);
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_bundle_is_refused_while_the_old_one_keeps_serving() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, dirs.config()).await;
        let mut client = server.client().await;
        publish_corrupt(&dirs.models(), "v2-broken");
        let mut refused = false;
        for _ in 0..200 {
            if server
                .metrics()
                .await
                .contains("tiering_model_reloads_total{outcome=\"refused\"} 1")
            {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(refused, "the broken bundle was looked at and refused");
        let info = client
            .get_model_info(GetModelInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(info.version, "v1");
        let u = client
            .get_user_tier(get(&user(3)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(u.model_version, "v1");
        // A good bundle after the bad one is taken.
        publish(&dirs.models(), "v3", 1.5);
        for _ in 0..200 {
            if client
                .get_model_info(GetModelInfoRequest {})
                .await
                .unwrap()
                .into_inner()
                .version
                == "v3"
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(
            client
                .get_model_info(GetModelInfoRequest {})
                .await
                .unwrap()
                .into_inner()
                .version,
            "v3"
        );
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_service_on_v1_and_v1alpha() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, dirs.config()).await;
        let channel = server.channel().await;
        {
            use tonic_reflection::pb::v1::{
                server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse, ServerReflectionRequest,
            };
            let mut c = ServerReflectionClient::new(channel.clone());
            let req = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut stream = c
                .server_reflection_info(tokio_stream::iter(vec![req]))
                .await
                .unwrap()
                .into_inner();
            let resp = stream.message().await.unwrap().unwrap();
            let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
                panic!("{resp:?}")
            };
            let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            assert!(
                names.contains(&"tiering.v1.Tiering".to_string()),
                "{names:?}"
            );
            assert!(
                names.contains(&"grpc.health.v1.Health".to_string()),
                "{names:?}"
            );
        }
        {
            use tonic_reflection::pb::v1alpha::{
                server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse, ServerReflectionRequest,
            };
            let mut c = ServerReflectionClient::new(channel.clone());
            let req = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut stream = c
                .server_reflection_info(tokio_stream::iter(vec![req]))
                .await
                .unwrap()
                .into_inner();
            let resp = stream.message().await.unwrap().unwrap();
            let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
                panic!("{resp:?}")
            };
            assert!(list.service.iter().any(|s| s.name == "tiering.v1.Tiering"));
        }
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_errors_events_and_name_the_model() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, dirs.config()).await;
        let mut client = server.client().await;
        client.get_user_tier(get(&user(1))).await.unwrap();
        client.get_user_tier(get("nobody")).await.unwrap_err();
        client
            .record_events(RecordEventsRequest {
                events: vec![event("m", NOW, "share", 0.0)],
            })
            .await
            .unwrap();
        let text = server.metrics().await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        for line in [
            "tiering_requests_total{rpc=\"GetUserTier\"} 2",
            "tiering_request_errors_total{code=\"NotFound\",rpc=\"GetUserTier\"} 1",
            "tiering_model_info{version=\"v1\"} 1",
            "tiering_users_held 201",
            "tiering_events_ingested_total 1",
            "tiering_request_duration_seconds_count{rpc=\"GetUserTier\"} 2",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        server.stop().await.unwrap();
    })
    .await;
}

/// 0001-01-01T00:00:00Z in Unix seconds.
const YEAR_1: Timestamp = -62_135_596_800;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_at_unix_zero_or_in_year_0001_are_refused_naming_events_i_ts() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, dirs.config()).await;
        let mut client = server.client().await;
        for t in [0, YEAR_1] {
            let r = client
                .record_events(RecordEventsRequest {
                    events: vec![
                        event("placeholder", NOW - 60, "view", 0.0),
                        event("placeholder", t, "view", 0.0),
                    ],
                })
                .await;
            assert_invalid(r, "events[1].ts");
            let r = client
                .score_user(ScoreUserRequest {
                    user_id: "placeholder".into(),
                    events: vec![event("", t, "order", 5.0)],
                    registered_at: None,
                })
                .await;
            let e = r.expect_err("refused");
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
            assert!(
                e.message().starts_with("events[0].ts: ")
                    && e.message().contains(
                        "is before the earliest accepted event time 2000-01-01T00:00:00Z (earliest_event_time)"
                    ),
                "{}",
                e.message()
            );
        }
        let e = client.get_user_tier(get("placeholder")).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "nothing of a refused request was stored");
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_earlier_earliest_event_time_accepts_unix_zero_and_year_0001() {
    bounded(async {
        let dirs = Dirs::new();
        let config = ServeConfig {
            earliest_event_time: "0001-01-01".into(),
            ..dirs.config()
        };
        let server = started(&dirs, config).await;
        let mut client = server.client().await;
        let r = client
            .record_events(RecordEventsRequest {
                events: vec![
                    event("old", 0, "view", 0.0),
                    event("old", YEAR_1, "view", 0.0),
                ],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((r.accepted, r.new_users), (2, 1));
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_amount_order_with_a_padded_kind_is_accepted_as_an_order() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, dirs.config()).await;
        let mut client = server.client().await;
        let r = client
            .record_events(RecordEventsRequest {
                events: vec![
                    event("gifted", NOW - 60, " Order ", 0.0),
                    // proto3: a missing amount is 0, the same free order.
                    proto::Event {
                        user_id: "gifted".into(),
                        ts: ts(NOW - 30),
                        kind: "order".into(),
                        ..Default::default()
                    },
                ],
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((r.accepted, r.new_users), (2, 1));
        // The same events scored on their own: orders without spend.
        let free = client
            .score_user(ScoreUserRequest {
                user_id: "visitor".into(),
                events: vec![event("", NOW - 60, " Order ", 0.0)],
                registered_at: None,
            })
            .await
            .unwrap()
            .into_inner();
        let viewer = client
            .score_user(ScoreUserRequest {
                user_id: "visitor".into(),
                events: vec![event("", NOW - 60, "view", 0.0)],
                registered_at: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert_ne!(
            (free.churn_probability, &free.rfm_segment),
            (viewer.churn_probability, &viewer.rfm_segment),
            "a free order counts as an order, not as nothing"
        );
        server.stop().await.unwrap();
    })
    .await;
}
