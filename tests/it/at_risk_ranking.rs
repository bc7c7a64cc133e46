//! ListAtRiskUsers through the incrementally maintained ranking: consistent walks while events
//! arrive, equality with a full rescan, expiry and eviction of versions, model swaps, filters,
//! and the order of the old per-page scan on a trained bundle.

use crate::helpers::{publish, user, Dirs, TestServer, NOW, USERS};
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tiering::features::{Timestamp, DAY};
use tiering::pb::tiering_client::TieringClient;
use tiering::pb::{
    self as proto, BatchGetUserTiersRequest, GetModelInfoRequest, ListAtRiskUsersRequest,
    RecordEventsRequest, UserTier,
};
use tiering::serve::ServeConfig;
use tonic::transport::Channel;
use tonic::Code;

async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .expect("test finished within 120 s");
}

fn order_event(user_id: &str, t: Timestamp, amount: f64) -> proto::Event {
    proto::Event {
        user_id: user_id.into(),
        ts: Some(prost_types::Timestamp {
            seconds: t,
            nanos: 0,
        }),
        kind: "order".into(),
        amount,
        ..Default::default()
    }
}

/// Publishes on every first page, so a first page sees every event before it.
fn eager(dirs: &Dirs) -> ServeConfig {
    ServeConfig {
        ranking_publish_ms: 0,
        ..dirs.config()
    }
}

async fn started(dirs: &Dirs, config: ServeConfig) -> TestServer {
    publish(&dirs.models(), "v1", 1.0);
    let server = TestServer::start(config).await;
    server.ready().await;
    server
}

/// One page: its users, and the token to continue (empty at the end).
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

/// Every page of a walk (at most 1000 pages).
async fn walk(
    client: &mut TieringClient<Channel>,
    mut req: ListAtRiskUsersRequest,
) -> Vec<UserTier> {
    let mut all = Vec::new();
    for _ in 0..1000 {
        let (users, token) = page(client, &req).await.unwrap();
        all.extend(users);
        if token.is_empty() {
            return all;
        }
        req.page_token = token;
    }
    panic!("more than 1000 pages");
}

pub fn assert_ranked(users: &[UserTier]) {
    for w in users.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        assert!(
            a.churn_probability > b.churn_probability
                || (a.churn_probability == b.churn_probability && a.user_id < b.user_id),
            "out of order: {} {} then {} {}",
            a.user_id,
            a.churn_probability,
            b.user_id,
            b.churn_probability
        );
    }
}

/// The full rescan through the public API: every id scored now, sorted like the ranking.
pub async fn rescan(client: &mut TieringClient<Channel>, ids: Vec<String>) -> Vec<(String, f64)> {
    let mut all: Vec<(String, f64)> = client
        .batch_get_user_tiers(BatchGetUserTiersRequest { user_ids: ids })
        .await
        .unwrap()
        .into_inner()
        .users
        .into_iter()
        .map(|u| (u.user_id, u.churn_probability))
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all
}

fn pairs(users: &[UserTier]) -> Vec<(String, f64)> {
    users
        .iter()
        .map(|u| (u.user_id.clone(), u.churn_probability))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_returns_each_user_once_in_order_while_events_change_many_scores() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, eager(&dirs)).await;
        let mut client = server.client().await;
        let req = ListAtRiskUsersRequest {
            limit: 7,
            ..Default::default()
        };
        let before = walk(&mut client, req.clone()).await;
        let (first, mut token) = page(&mut client, &req).await.unwrap();
        let mut seen = first;
        // Events move many users (recent orders lower their risk) between every two pages.
        let mut writer = server.client().await;
        let events = tokio::spawn(async move {
            for round in 0..40usize {
                let events = (0..20)
                    .map(|k| order_event(&user((round * 20 + k) % USERS), NOW - 60, 5.0))
                    .collect();
                writer
                    .record_events(RecordEventsRequest { events })
                    .await
                    .unwrap();
            }
        });
        for _ in 0..1000 {
            if token.is_empty() {
                break;
            }
            let (users, next) = page(
                &mut client,
                &ListAtRiskUsersRequest {
                    page_token: token.clone(),
                    ..req.clone()
                },
            )
            .await
            .unwrap();
            seen.extend(users);
            token = next;
            tokio::task::yield_now().await;
        }
        events.await.unwrap();
        assert!(token.is_empty(), "the walk ended");
        assert_eq!(seen.len(), USERS, "every user once");
        let ids: HashSet<&str> = seen.iter().map(|u| u.user_id.as_str()).collect();
        assert_eq!(ids.len(), USERS, "no user twice");
        assert_ranked(&seen);
        assert_eq!(
            pairs(&seen),
            pairs(&before),
            "the walk read the version it started from"
        );
        let after = walk(&mut client, req).await;
        assert_ne!(
            pairs(&after),
            pairs(&before),
            "the events moved the ranking"
        );
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_events_a_new_walk_equals_a_full_rescan() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, eager(&dirs)).await;
        let mut client = server.client().await;
        let mut events: Vec<proto::Event> = (0..USERS)
            .step_by(3)
            .map(|i| order_event(&user(i), NOW - (i as i64) * 3600, 10.0))
            .collect();
        events.push(order_event("newcomer", NOW - 90 * DAY, 1.0));
        client
            .record_events(RecordEventsRequest { events })
            .await
            .unwrap();
        let got = walk(
            &mut client,
            ListAtRiskUsersRequest {
                limit: 13,
                ..Default::default()
            },
        )
        .await;
        let mut ids: Vec<String> = (0..USERS).map(user).collect();
        ids.push("newcomer".into());
        assert_eq!(pairs(&got), rescan(&mut client, ids).await);
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_select_exactly_the_matching_users() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, eager(&dirs)).await;
        let mut client = server.client().await;
        let all = walk(&mut client, ListAtRiskUsersRequest::default()).await;
        let req = ListAtRiskUsersRequest {
            min_churn_probability: 0.4,
            tier_ids: vec!["dormant".into()],
            lifecycle_stages: vec!["silent".into(), "about_to_churn".into(), "churned".into()],
            limit: 5,
            page_token: String::new(),
            ..Default::default()
        };
        let got = walk(&mut client, req.clone()).await;
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
        server.stop().await.unwrap();
    })
    .await;
}

fn is_restart(e: &tonic::Status) -> bool {
    e.code() == Code::Aborted && e.message().contains("start again from the first page")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_older_than_the_maximum_age_is_aborted_with_a_restart_message() {
    bounded(async {
        let dirs = Dirs::new();
        let config = ServeConfig {
            page_token_max_age_secs: 1,
            ..eager(&dirs)
        };
        let server = started(&dirs, config).await;
        let mut client = server.client().await;
        let mut req = ListAtRiskUsersRequest {
            limit: 10,
            ..Default::default()
        };
        let (_, token) = page(&mut client, &req).await.unwrap();
        req.page_token = token;
        page(&mut client, &req).await.expect("a fresh token walks");
        let mut last = None;
        for _ in 0..60 {
            match page(&mut client, &req).await {
                Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
        let e = last.expect("the token expired within 6 s");
        assert!(is_restart(&e), "{e:?}");
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_an_evicted_version_is_aborted_with_a_restart_message() {
    bounded(async {
        let dirs = Dirs::new();
        let config = ServeConfig {
            ranking_max_versions: 1,
            ..eager(&dirs)
        };
        let server = started(&dirs, config).await;
        let mut client = server.client().await;
        let mut req = ListAtRiskUsersRequest {
            limit: 10,
            ..Default::default()
        };
        let (_, token) = page(&mut client, &req).await.unwrap();
        client
            .record_events(RecordEventsRequest {
                events: vec![order_event(&user(5), NOW - 60, 3.0)],
            })
            .await
            .unwrap();
        page(&mut client, &req).await.expect("a new walk publishes");
        req.page_token = token;
        let e = page(&mut client, &req).await.unwrap_err();
        assert!(is_restart(&e), "{e:?}");
        server.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_swap_rebuilds_and_a_walk_started_before_it_finishes_on_its_version() {
    bounded(async {
        let dirs = Dirs::new();
        let server = started(&dirs, eager(&dirs)).await;
        let mut client = server.client().await;
        let req = ListAtRiskUsersRequest {
            limit: 50,
            ..Default::default()
        };
        let before = walk(&mut client, req.clone()).await;
        let (_, token) = page(&mut client, &req).await.unwrap();
        publish(&dirs.models(), "v2", 2.0);
        let mut swapped = false;
        for _ in 0..400 {
            let info = client.get_model_info(GetModelInfoRequest {}).await.unwrap();
            let (first, _) = page(&mut client, &req).await.unwrap();
            if info.into_inner().version == "v2" && first[0].model_version == "v2" {
                swapped = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(swapped, "pages show v2 within 10 s of the swap");
        let after = walk(&mut client, req.clone()).await;
        assert!(after.iter().all(|u| u.model_version == "v2"));
        let ids = (0..USERS).map(user).collect();
        assert_eq!(
            pairs(&after),
            rescan(&mut client, ids).await,
            "the new model's scores"
        );
        assert_ne!(pairs(&after), pairs(&before));
        let (old, _) = page(
            &mut client,
            &ListAtRiskUsersRequest {
                page_token: token,
                ..req
            },
        )
        .await
        .expect("the old walk continues on its version");
        assert!(old.iter().all(|u| u.model_version == "v1"));
        assert_eq!(pairs(&old), pairs(&before[50..100]));
        server.stop().await.unwrap();
    })
    .await;
}

/// The ranking's walk equals the old per-page scan (`at_risk::scan`, as ListAtRiskUsers ran it
/// before the ranking) on a bundle trained from generated data.
/// Trains a bundle on generated data, walks ListAtRiskUsers with `req` through a server, and
/// returns the walk and what the reference scan ([`tiering::serve::at_risk::scan`]) gives for
/// `q` on the bundle's snapshot, as (user, the ordering's value) pairs.
async fn walk_and_scan_a_trained_bundle(
    req: ListAtRiskUsersRequest,
    order: tiering::serve::page_token::Order,
    exclude_churned: bool,
) -> (Vec<UserTier>, Vec<(String, f64)>) {
    use tiering::bundle::BundleStore;
    use tiering::serve::at_risk::{scan, AtRiskQuery};
    use tiering::serve::metrics::Metrics;
    use tiering::serve::state::embedded::{EmbeddedState, LogOptions};
    use tiering::serve::state::{StateBackend, UserState};
    let dirs = Dirs::new();
    let data = dirs.root.path().join("data");
    let cli = |args: &[&str]| {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        let (ok, out) = crate::helpers::tiering_cli(&args);
        assert!(ok, "{out}");
    };
    let (d, m) = (data.to_str().unwrap(), dirs.models());
    cli(&[
        "generate",
        "--users",
        "1500",
        "--days",
        "150",
        "--seed",
        "3",
        "--end",
        "2026-06-30",
        "--out",
        d,
    ]);
    cli(&[
        "train",
        "--data",
        d,
        "--models",
        m.to_str().unwrap(),
        "--k",
        "5",
    ]);
    let config = ServeConfig {
        now: Some("2026-06-30T00:00:00Z".into()),
        ..eager(&dirs)
    };
    let server = TestServer::start(config).await;
    server.ready().await;
    let mut client = server.client().await;
    let got = walk(&mut client, req).await;
    server.stop().await.unwrap();

    let store = BundleStore::new(&m);
    let bundle = store.load(&store.current().unwrap().unwrap()).unwrap();
    let snapshot = bundle.load_snapshot().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        fsync: false,
        snapshot_bytes: u64::MAX,
    };
    let metrics = Arc::new(Metrics::new().unwrap());
    let (state, _) = EmbeddedState::open(scratch.path(), 4, opts, metrics).unwrap();
    let state = StateBackend::Embedded(state);
    state.seed("ref".into(), snapshot).await.unwrap();
    let now = tiering::features::time::parse_instant("2026-06-30T00:00:00Z").unwrap();
    let mut q = AtRiskQuery {
        min_probability: 0.0,
        tiers: None,
        stages: None,
        categories: None,
        limit: 100,
        as_of: now,
        after: None,
        filter_hash: 0,
        order,
        exclude_churned,
        pinned: None,
    };
    let mut want = Vec::new();
    for _ in 0..100 {
        let p = scan(&state, &bundle.scorer, &q, &|| false).unwrap();
        let last = p.users.last().map(|(id, s)| (order.value(s), id.clone()));
        want.extend(p.users.into_iter().map(|(id, s)| (id, order.value(&s))));
        if !p.more {
            break;
        }
        q.after = last;
    }
    (got, want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ranking_orders_a_trained_bundle_as_the_old_scan_did() {
    bounded(async {
        let req = ListAtRiskUsersRequest {
            limit: 100,
            ..Default::default()
        };
        let (got, want) = walk_and_scan_a_trained_bundle(req, Default::default(), false).await;
        assert_eq!(want.len(), 1500);
        assert_eq!(pairs(&got), want);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_value_at_risk_order_without_churned_users_equals_the_scan_in_that_order() {
    use tiering::serve::page_token::Order;
    bounded(async {
        let req = ListAtRiskUsersRequest {
            limit: 100,
            order_by: proto::AtRiskOrder::ValueAtRisk as i32,
            exclude_churned: true,
            ..Default::default()
        };
        let (got, want) =
            walk_and_scan_a_trained_bundle(req, Order::ValueAtRiskDescending, true).await;
        let by_value: Vec<(String, f64)> = got
            .iter()
            .map(|u| (u.user_id.clone(), u.value_at_risk))
            .collect();
        assert_eq!(by_value, want);
        assert!(got.len() > 100 && got.len() < 1500, "{} users", got.len());
        assert!(got.iter().all(|u| u.lifecycle_stage != "churned"));
        assert!(
            got[0].value_at_risk > 0.0 && got[0].clv > 0.0,
            "{:?}",
            got[0]
        );
        for u in &got {
            let want = u.churn_probability * u.clv;
            assert!(
                (u.value_at_risk - want).abs() <= 1e-9 * want.max(1.0),
                "{u:?}"
            );
            assert!((0.0..=1.0).contains(&u.p_alive) && u.expected_orders >= 0.0);
        }
    })
    .await;
}
