//! Interests and channels (issue 14): training and the server agree on a hand-made history
//! (ties, decay across the snapshot boundary, more categories than the structure holds); the
//! at-risk filter by category; channels leave RFM alone, unknown values are reported, a
//! malformed value is named.

use crate::helpers::{self as common, Dirs, TestServer, AS_OF, NOW};
use std::time::Duration;
use tiering::bundle::{BundleStore, Snapshot};
use tiering::features::interests::INTEREST_SLOTS;
use tiering::features::{build_aggregates, hash_str, EventTable, Interests, Timestamp, DAY};
use tiering::io::read::{read_dataset, ReadOptions};
use tiering::pb::{self as proto, GetUserTierRequest, ListAtRiskUsersRequest, RecordEventsRequest};

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(90), f)
        .await
        .expect("test finished within 90 s");
}

/// One row of the hand-made history: (seconds before NOW, kind, amount, watch, category).
type Row = (i64, &'static str, f64, u32, &'static str);

/// The documented example: as of NOW,
/// - beauty: two orders 40 days back: 2 * 10 * 2^(-40/30) = 7.94;
/// - fashion: four 10-minute views 10 days back: 4 * 2 * 2^(-10/30) = 6.35;
/// - home and sports: one comment each, 5 days back, at the same instant: 2 * 2^(-5/30) = 1.78
///   each, a tie;
/// - food: one order an hour back (after the snapshot): 10 * 2^(-1/720) = 9.99.
///
/// Five categories, one more than the structure holds: food arrives with every slot taken and
/// replaces the lowest of the tied pair (the one with the smaller hash), inheriting its 1.78.
fn history() -> Vec<Row> {
    vec![
        (40 * DAY, "order", 30.0, 0, "beauty"),
        (40 * DAY - 60, "order", 12.0, 0, "beauty"),
        (10 * DAY, "view", 0.0, 600, "fashion"),
        (10 * DAY - 700, "view", 0.0, 600, "fashion"),
        (10 * DAY - 1400, "view", 0.0, 600, "fashion"),
        (10 * DAY - 2100, "view", 0.0, 600, "fashion"),
        (5 * DAY, "comment", 0.0, 0, "home"),
        (5 * DAY, "comment", 0.0, 0, "sports"),
        (3600, "order", 25.0, 0, "food"),
    ]
}

fn csv(user: &str, rows: &[Row], channel: Option<&[&str]>) -> String {
    let mut out = String::from("user_id,ts,kind,amount,watch_seconds,category");
    if channel.is_some() {
        out.push_str(",channel");
    }
    out.push('\n');
    for (i, (back, kind, amount, watch, cat)) in rows.iter().enumerate() {
        let t = tiering::features::format_rfc3339(NOW - back);
        out.push_str(&format!("{user},{t},{kind},{amount},{watch},{cat}"));
        if let Some(ch) = channel {
            out.push_str(&format!(",{}", ch[i % ch.len()]));
        }
        out.push('\n');
    }
    out
}

fn read(dir: &std::path::Path, name: &str, text: &str) -> EventTable {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    read_dataset(&path, &ReadOptions::default()).unwrap().events
}

fn proto_event(user: &str, r: &Row) -> proto::Event {
    proto::Event {
        user_id: user.into(),
        ts: Some(prost_types::Timestamp {
            seconds: NOW - r.0,
            nanos: 0,
        }),
        kind: r.1.into(),
        amount: r.2,
        watch_seconds: r.3,
        category: r.4.into(),
        ..Default::default()
    }
}

/// The fixture bundle plus `extra` users, naming the categories of `table` as training does.
fn publish(
    models: &std::path::Path,
    table: &EventTable,
    extra: &[(String, tiering::features::UserAggregate)],
) {
    let mut snap: Snapshot = common::snapshot();
    for (id, a) in extra {
        snap.user_ids.push(id.clone());
        snap.aggregates.push(*a);
    }
    let s = common::scorer(1.0);
    let mut m = common::manifest("v1", &s);
    m.data.categories = table
        .kind_tally
        .categories()
        .sorted()
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    let store = BundleStore::new(models);
    store.begin("v1").unwrap().commit(m, &s, &snap).unwrap();
    store.promote("v1").unwrap();
}

fn names(i: &[proto::Interest]) -> Vec<&str> {
    i.iter().map(|x| x.category.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_and_the_server_give_the_documented_interest_ranking() {
    bounded(async {
        let dirs = Dirs::new();
        let rows = history();
        // Training: every event, swept as of NOW (events strictly before it).
        let all = read(dirs.root.path(), "all.csv", &csv("fan", &rows, None));
        let trained = build_aggregates(&all, &[NOW]).remove(0).remove(0);
        // The documented ranking.
        let survivor = if hash_str("home") < hash_str("sports") {
            "sports"
        } else {
            "home"
        };
        let ranked: Vec<(u32, f32)> = trained.interests.ranked();
        assert_eq!(ranked.len(), INTEREST_SLOTS);
        let want_ids: Vec<u32> = ["food", "beauty", "fashion", survivor]
            .iter()
            .map(|c| hash_str(c))
            .collect();
        assert_eq!(ranked.iter().map(|x| x.0).collect::<Vec<_>>(), want_ids);
        let score = |i: usize| Interests::score_at(ranked[i].1, NOW);
        let near = |a: f64, b: f64| (a - b).abs() < 1e-3 * b;
        let comment = 2.0 * (-5.0f64 / 30.0).exp2();
        assert!(
            near(score(0), 10.0 * (-1.0f64 / 720.0).exp2() + comment),
            "{}",
            score(0)
        );
        assert!(
            near(score(1), 20.0 * (-40.0f64 / 30.0).exp2()),
            "{}",
            score(1)
        );
        assert!(
            near(score(2), 8.0 * (-10.0f64 / 30.0).exp2()),
            "{}",
            score(2)
        );
        assert!(near(score(3), comment), "{}", score(3));

        // The server: the events before the snapshot time are in the bundle's snapshot (as
        // training writes it), the rest arrive through RecordEvents; a second user gets every
        // event through RecordEvents, in the same order.
        let before: Vec<Row> = rows.iter().copied().filter(|r| NOW - r.0 < AS_OF).collect();
        let after: Vec<Row> = rows
            .iter()
            .copied()
            .filter(|r| NOW - r.0 >= AS_OF)
            .collect();
        assert_eq!(after.len(), 1, "the food order is after the snapshot");
        let early = read(dirs.root.path(), "before.csv", &csv("fan", &before, None));
        let snap_fan = build_aggregates(&early, &[AS_OF]).remove(0).remove(0);
        publish(&dirs.models(), &all, &[("fan".to_string(), snap_fan)]);
        let server = TestServer::start(dirs.config()).await;
        server.ready().await;
        let mut client = server.client().await;
        let mut events: Vec<proto::Event> = after.iter().map(|r| proto_event("fan", r)).collect();
        events.extend(rows.iter().map(|r| proto_event("direct", r)));
        let r = client
            .record_events(RecordEventsRequest { events })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.accepted as usize, 1 + rows.len());
        for user in ["fan", "direct"] {
            let t = client
                .get_user_tier(GetUserTierRequest {
                    user_id: user.into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                names(&t.interests),
                vec!["food", "beauty", "fashion", survivor],
                "{user}"
            );
            for (i, got) in t.interests.iter().enumerate() {
                assert!(
                    near(got.score, score(i)),
                    "{user} {i}: {} vs {}",
                    got.score,
                    score(i)
                );
            }
            assert!(t.channels.is_empty(), "no channel data, no mix");
        }
        server.stop().await.unwrap();
    })
    .await;
}

/// With at most INTEREST_SLOTS categories the structure is exact: any arrival order gives the
/// same ranking (a tie broken by name), in training and in the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_categories_rank_the_same_in_any_arrival_order() {
    bounded(async {
        let dirs = Dirs::new();
        let rows: Vec<Row> = history().into_iter().filter(|r| r.4 != "fashion").collect();
        let all = read(dirs.root.path(), "all.csv", &csv("x", &rows, None));
        publish(&dirs.models(), &all, &[]);
        let server = TestServer::start(dirs.config()).await;
        server.ready().await;
        let mut client = server.client().await;
        let mut reversed = rows.clone();
        reversed.reverse();
        let mut rotated = rows.clone();
        rotated.rotate_left(3);
        for (user, order) in [("fwd", &rows), ("rev", &reversed), ("rot", &rotated)] {
            let events = order.iter().map(|r| proto_event(user, r)).collect();
            client
                .record_events(RecordEventsRequest { events })
                .await
                .unwrap();
            let t = client
                .get_user_tier(GetUserTierRequest {
                    user_id: user.into(),
                })
                .await
                .unwrap()
                .into_inner();
            // food 9.99, beauty 7.94, then the home/sports tie by name.
            assert_eq!(
                names(&t.interests),
                vec!["food", "beauty", "home", "sports"],
                "{user}"
            );
            let (h, s) = (t.interests[2].score, t.interests[3].score);
            assert_eq!(h, s, "a tie of one event each is exact");
        }
        server.stop().await.unwrap();
    })
    .await;
}

/// Every page of a listing.
async fn list_all(
    client: &mut proto::tiering_client::TieringClient<tonic::transport::Channel>,
    mut req: ListAtRiskUsersRequest,
) -> Vec<proto::UserTier> {
    let mut out = Vec::new();
    for _ in 0..100 {
        let mut stream = client
            .list_at_risk_users(req.clone())
            .await
            .unwrap()
            .into_inner();
        let mut next = String::new();
        while let Some(u) = stream.message().await.unwrap() {
            next = u.next_page_token.clone();
            out.push(u);
        }
        if next.is_empty() {
            return out;
        }
        req.page_token = next;
    }
    panic!("pagination does not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_at_risk_list_filtered_by_category_holds_only_users_interested_in_it() {
    bounded(async {
        let dirs = Dirs::new();
        // Fixture users have no categories; give some of them beauty, some food.
        let mut extra = Vec::new();
        let mut table = EventTable::default();
        for i in 0..40 {
            let cat = if i % 2 == 0 { "beauty" } else { "food" };
            let back = 60 * DAY + i as Timestamp * DAY;
            let t = read(
                dirs.root.path(),
                &format!("u{i}.csv"),
                &csv(
                    &format!("cat-{i:02}"),
                    &[(back, "order", 10.0, 0, cat)],
                    None,
                ),
            );
            table.kind_tally.merge(&t.kind_tally);
            let a = build_aggregates(&t, &[AS_OF]).remove(0).remove(0);
            extra.push((format!("cat-{i:02}"), a));
        }
        publish(&dirs.models(), &table, &extra);
        let server = TestServer::start(dirs.config()).await;
        server.ready().await;
        let mut client = server.client().await;
        let list = |cats: Vec<String>| ListAtRiskUsersRequest {
            min_churn_probability: 0.0,
            limit: 1000,
            interest_categories: cats,
            ..Default::default()
        };
        let all_users = list_all(&mut client, list(vec![])).await;
        assert_eq!(all_users.len(), 200 + 40);
        let mut got = Vec::new();
        for u in list_all(&mut client, list(vec!["beauty".into()])).await {
            assert!(
                u.interests.iter().any(|i| i.category == "beauty"),
                "{} has no beauty interest: {:?}",
                u.user_id,
                u.interests
            );
            got.push(u.user_id);
        }
        got.sort();
        let want: Vec<String> = (0..40)
            .filter(|i| i % 2 == 0)
            .map(|i| format!("cat-{i:02}"))
            .collect();
        assert_eq!(got, want);
        let e = client
            .list_at_risk_users(list(vec![String::new()]))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("interest_categories[0]"), "{e:?}");
        server.stop().await.unwrap();
    })
    .await;
}

/// Channels: the same purchases with and without a `channel` column give the same RFM (every
/// feature, in fact) and the same interests; the mix appears only with the column.
#[test]
fn the_same_purchases_with_and_without_a_channel_column_give_the_same_rfm() {
    use tiering::features::{Channel, FeatureSet};
    let dir = tempfile::tempdir().unwrap();
    let rows = history();
    let plain = read(dir.path(), "plain.csv", &csv("u", &rows, None));
    let channels: &[&str] = &["live", "Short Video", "social", "live", "offline-store"];
    let with = read(dir.path(), "with.csv", &csv("u", &rows, Some(channels)));
    assert!(!plain.columns.channel && with.columns.channel);
    let a = build_aggregates(&plain, &[NOW]).remove(0).remove(0);
    let b = build_aggregates(&with, &[NOW]).remove(0).remove(0);
    let fs = FeatureSet::all();
    let (mut fa, mut fb) = (vec![0.0; fs.len()], vec![0.0; fs.len()]);
    fs.raw_into(&a, NOW, &mut fa);
    fs.raw_into(&b, NOW, &mut fb);
    assert_eq!(fa, fb);
    assert_eq!(a.interests, b.interests);
    assert!(a.channel_shares().is_empty());
    let mix = b.channel_shares();
    let names: Vec<Channel> = mix.iter().map(|m| m.0).collect();
    assert_eq!(
        names,
        vec![
            Channel::Live,
            Channel::ShortVideo,
            Channel::Social,
            Channel::Other
        ],
        "two slots, then the rest as other: {mix:?}"
    );
    let activity: f64 = mix.iter().map(|m| m.2).sum();
    let spend: f64 = mix.iter().map(|m| m.1).sum();
    assert!(
        (activity - 1.0).abs() < 1e-9 && (spend - 1.0).abs() < 1e-9,
        "{mix:?}"
    );
    assert_eq!(b.channels.channels_used(), 4);
}

#[test]
fn unknown_channel_values_are_accepted_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let rows = history();
    let t = read(
        dir.path(),
        "u.csv",
        &csv(
            "u",
            &rows,
            Some(&["live", "TV_Shopping", "tv_shopping", "kiosk"]),
        ),
    );
    assert_eq!(t.len(), rows.len(), "every row accepted");
    let unknown = t.kind_tally.unknown_channels();
    assert_eq!(
        unknown,
        vec![("tv_shopping".to_string(), 4), ("kiosk".to_string(), 2)]
    );
    let by_name: std::collections::HashMap<&str, u64> =
        t.kind_tally.channel_rows().into_iter().collect();
    assert_eq!(by_name["other"], 6);
    assert_eq!(by_name["live"], 3);
}

#[test]
fn a_malformed_channel_value_names_its_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let rows = history();
    let mut text = csv("u", &rows, Some(&["live"]));
    // The third data row (line 4) gets a control character in its channel.
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[3] = lines[3].replace(",live", ",li\u{7}ve");
    text = lines.join("\n") + "\n";
    let path = dir.path().join("bad.csv");
    std::fs::write(&path, text).unwrap();
    let e = read_dataset(&path, &ReadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.csv"), "{e}");
    assert!(e.contains(":4:7"), "line 4, column 7: {e}");
    assert!(
        e.contains("column channel") && e.contains("malformed channel"),
        "{e}"
    );
}
