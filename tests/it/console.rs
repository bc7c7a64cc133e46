//! The web console in a real browser: Debian's chromium, headless, driven over WebDriver by
//! chromedriver (both installed by scripts/test.sh; missing ones fail the test). The test signs
//! in with a token, loads the overview, filters the at-risk list by a tier and checks the rows
//! against the gRPC walk, downloads the CSV and compares it with `tiering at-risk --format csv`,
//! opens a user page, switches to Chinese, and reads the page at phone width. Screenshots go to
//! `target/console-screenshots/` (git-ignored).
//!
//! The WebDriver client is the protocol's few JSON calls over the HTTP client of
//! [`super::http_api`] (no extra crate).

use super::http_api::{bearer, grpc_walk, keys_file, request, start};
use crate::helpers::{manifest, publish, scorer, snapshot, Dirs};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tiering::pb as proto;
use tiering::serve::auth::Role;
use tiering::serve::ServeConfig;

/// A chromedriver process, killed by its PID when dropped.
struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Driver {
        let addr = super::http_api::free_addr();
        let child = Command::new("chromedriver")
            .arg(format!("--port={}", addr.port()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian package chromium-driver; scripts/test.sh installs it)");
        let driver = Driver { child, addr };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                let r = request(addr, "GET", "/status", &[], None).await;
                if r.status == 200 && r.json()["value"]["ready"] == true {
                    return driver;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not become ready within 20 s");
    }
}

/// One browser session.
struct Browser {
    driver: SocketAddr,
    session: String,
    shots: PathBuf,
}

impl Browser {
    async fn open(driver: &Driver, downloads: &Path, shots: PathBuf) -> Browser {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900", "--lang=en-US"],
                "prefs": {
                    "download.default_directory": downloads.to_str().unwrap(),
                    "download.prompt_for_download": false,
                },
            },
        }}});
        let r = request(
            driver.addr,
            "POST",
            "/session",
            &[("content-type", "application/json")],
            Some(&caps.to_string()),
        )
        .await;
        assert_eq!(r.status, 200, "new session: {}", r.text());
        let session = r.json()["value"]["sessionId"].as_str().unwrap().to_string();
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            driver: driver.addr,
            session,
            shots,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("/session/{}{path}", self.session);
        let body = body.map(|b| b.to_string());
        let r = request(
            self.driver,
            method,
            &url,
            &[("content-type", "application/json")],
            body.as_deref(),
        )
        .await;
        assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
        r.json()["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url }))).await;
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .call(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn click(&self, css: &str) {
        let el = self.find(css).await;
        self.call("POST", &format!("/element/{el}/click"), Some(json!({})))
            .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        self.call(
            "POST",
            &format!("/element/{el}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Presses and releases one key (a WebDriver key code, e.g. `\u{E004}` for Tab).
    async fn key(&self, key: &str) {
        let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
            {"type": "keyDown", "value": key}, {"type": "keyUp", "value": key}]}]});
        self.call("POST", "/actions", Some(actions)).await;
    }

    /// The page's sideways overflow in CSS pixels (0: none).
    async fn overflow(&self) -> i64 {
        self.js(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
        )
        .await
        .as_i64()
        .unwrap()
    }

    async fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Polls `script` (a JS expression) until it is truthy; its value.
    async fn until(&self, what: &str, script: &str) -> Value {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            let v = self.js(&format!("return ({script});")).await;
            if !(v.is_null() || v == false || v == "" || v == 0) {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let error = self
            .js("return document.getElementById('error').textContent;")
            .await;
        self.screenshot(&format!("failed-{}", what.replace(' ', "-")))
            .await;
        panic!("{what}: not within 20 s (page error: {error})");
    }

    async fn screenshot(&self, name: &str) {
        use base64::Engine;
        let v = self.call("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    async fn close(self) {
        let _ = request(
            self.driver,
            "DELETE",
            &format!("/session/{}", self.session),
            &[],
            None,
        )
        .await;
    }
}

fn chromium() -> String {
    for p in ["/usr/bin/chromium", "/usr/lib/chromium/chromium"] {
        if Path::new(p).exists() {
            return p.to_string();
        }
    }
    panic!("chromium is not installed (Debian package chromium; scripts/test.sh installs it)");
}

/// The rows of the at-risk table: (user id, churn text, tier id).
async fn rows(b: &Browser) -> Vec<(String, String, String)> {
    let v = b
        .js("return [...document.querySelectorAll('#atrisk-rows tr')].map(tr => [tr.dataset.user, tr.children[1].textContent, tr.children[3].dataset.tier]);")
        .await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |i: usize| r[i].as_str().unwrap().to_string();
            (s(0), s(1), s(2))
        })
        .collect()
}

/// The downloaded file, once complete.
async fn downloaded(dir: &Path, name: &str) -> String {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        let partial = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".crdownload"));
        let path = dir.join(name);
        if path.exists() && !partial {
            return std::fs::read_to_string(path).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} was not downloaded within 20 s");
}

/// The counts of the transition matrices of [`publish_compared`]: `from * 10 + to + 1` users
/// moved from tier `from` to tier `to` (indices), the diagonal 50.
fn moved(from: usize, to: usize) -> u64 {
    if from == to {
        50
    } else {
        (from * 10 + to + 1) as u64
    }
}

/// Bundle `version` compared with `previous` (its stability figures and transition matrices
/// as training writes them) with a report, made current.
fn publish_compared(models: &Path, version: &str, previous: &str) {
    use tiering::bundle::manifest::{Stability, TransitionCounts};
    let store = tiering::bundle::BundleStore::new(models);
    let s = scorer(1.0);
    let mut m = manifest(version, &s);
    let ids: Vec<String> = m.tiers.iter().map(|t| t.id.clone()).collect();
    let counts = TransitionCounts {
        from: ids.clone(),
        to: ids.clone(),
        counts: (0..ids.len())
            .map(|i| (0..ids.len()).map(|j| moved(i, j)).collect())
            .collect(),
    };
    m.metrics.stability = Some(Stability {
        previous_version: previous.into(),
        compared: 200,
        model_changed: 20,
        model_changed_share: 0.1,
        behaviour_compared: 200,
        behaviour_changed: 20,
        behaviour_changed_share: 0.1,
        model: counts.clone(),
        behaviour: counts,
    });
    let pending = store.begin(version).unwrap();
    std::fs::write(
        pending.path(tiering::bundle::REPORT),
        format!("<!doctype html><html><head><style>h1{{color:teal}}</style></head><body><h1 id=\"r\">training report {version}</h1></body></html>"),
    )
    .unwrap();
    pending.commit(m, &s, &snapshot()).unwrap();
    store.promote(version).unwrap();
}

#[tokio::test]
async fn the_console_signs_in_filters_downloads_opens_a_user_and_speaks_chinese_in_chromium() {
    let dirs = Dirs::new();
    publish(&dirs.models(), "v1", 1.0);
    publish_compared(&dirs.models(), "v2", "v1");
    let keys = dirs.root.path().join("keys.toml");
    let token = keys_file(
        &keys,
        &[("crm", &[Role::Reader, Role::Retention, Role::Admin])],
    )
    .remove(0);
    let (server, http) = start(ServeConfig {
        keys_file: Some(keys),
        ..dirs.config()
    })
    .await;
    let driver = Driver::start().await;
    let downloads = dirs.root.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    let b = Browser::open(&driver, &downloads, shots).await;

    // Sign in; the overview lists the model's tiers.
    b.go(&format!("http://{http}/#/overview")).await;
    // By keyboard: the first Tab reaches the skip link, Enter moves focus to the content
    // without leaving the page's view.
    b.key("\u{E004}").await;
    let focused = b.js("return document.activeElement.className;").await;
    assert_eq!(focused, "skip");
    b.key("\u{E007}").await;
    let (focused, hash) = (
        b.js("return document.activeElement.id;").await,
        b.js("return location.hash;").await,
    );
    assert_eq!(
        (focused.as_str(), hash.as_str()),
        (Some("main"), Some("#/overview"))
    );
    b.type_into("#token", &token).await;
    b.click("#signin").await;
    b.until("signed in", "sessionStorage.getItem('tiering.token')")
        .await;
    let tiers = b
        .until(
            "the overview's tiers",
            "document.querySelectorAll('#tiers tbody tr').length",
        )
        .await;
    let mut grpc = server.client().await;
    let info = grpc
        .get_model_info(bearer(proto::GetModelInfoRequest {}, Some(&token)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tiers, info.tiers.len());
    // Per tier: churn (the mean probability), and value where the bundle has it (this one has
    // no value model: a dash).
    let shown = b
        .js("return [...document.querySelectorAll('#tiers tbody tr')].map(tr => [tr.dataset.tier, tr.children[3].dataset.value, tr.children[4].textContent, tr.children[5].textContent]);")
        .await;
    for (row, t) in shown.as_array().unwrap().iter().zip(&info.tiers) {
        assert_eq!(row[0], t.id.as_str());
        assert_eq!(row[1], t.mean_churn_probability.to_string().as_str());
        assert_eq!((row[2].as_str(), row[3].as_str()), (Some("—"), Some("—")));
    }
    // The transitions since v1, as matrices (rows before, columns after).
    b.until(
        "the matrices",
        "!document.getElementById('matrices').hidden",
    )
    .await;
    for (i, from) in info.tiers.iter().enumerate() {
        for (j, to) in info.tiers.iter().enumerate() {
            for table in ["model-matrix", "behaviour-matrix"] {
                let cell = b
                    .js(&format!("return document.querySelector(\"#{table} td[data-from='{}'][data-to='{}']\").textContent;", from.id, to.id))
                    .await;
                let want = if i == j {
                    "·".to_string()
                } else {
                    moved(i, j).to_string()
                };
                assert_eq!(cell, want.as_str(), "{table} {} -> {}", from.id, to.id);
            }
        }
    }
    b.screenshot("1-overview").await;

    // The at-risk list, filtered by one tier: the first page equals the gRPC walk's first 50.
    let all = grpc_walk(&server, Default::default(), Some(&token)).await;
    let tier = all[0].tier_id.clone();
    let want = grpc_walk(
        &server,
        proto::ListAtRiskUsersRequest {
            tier_ids: vec![tier.clone()],
            ..Default::default()
        },
        Some(&token),
    )
    .await;
    b.click("#nav-at-risk").await;
    b.until(
        "the at-risk rows",
        "document.querySelectorAll('#atrisk-rows tr').length",
    )
    .await;
    b.click(&format!("#atrisk-tier option[value='{tier}']"))
        .await;
    b.click("#atrisk-apply").await;
    let matched = b
        .until(
            "the filtered count",
            &format!("document.getElementById('atrisk-count').dataset.matched === '{}' && document.getElementById('atrisk-count').dataset.matched", want.len()),
        )
        .await;
    assert_eq!(matched, want.len().to_string());
    b.until(
        "the filtered rows",
        &format!("[...document.querySelectorAll('#atrisk-rows tr')].every(tr => tr.children[3].dataset.tier === '{tier}')"),
    )
    .await;
    let got = rows(&b).await;
    let expected: Vec<(String, String, String)> = want
        .iter()
        .take(50)
        .map(|u| {
            (
                u.user_id.clone(),
                format!("{:.6}", u.churn_probability),
                u.tier_id.clone(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    b.screenshot("2-at-risk-filtered").await;

    // The CSV download: the same bytes as `tiering at-risk --format csv` with the same filter.
    b.click("#atrisk-csv").await;
    let csv = downloaded(&downloads, "at-risk.csv").await;
    // On a blocking thread: the server runs on this test's runtime.
    let (grpc_url, tok, t) = (
        format!("http://{}", server.addr),
        token.clone(),
        tier.clone(),
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_tiering"))
            .args(["at-risk", "--server", &grpc_url])
            // The console's list: the gRPC default order, churned users kept.
            .args(["--order-by", "churn-probability", "--include-churned"])
            .args(["--format", "csv", "--min-probability", "0", "--tier", &t])
            .env("TIERING_TOKEN", &tok)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(csv, String::from_utf8(out.stdout).unwrap());
    assert_eq!(csv.lines().count(), want.len() + 1);

    // A user page, from the list.
    let first = &want[0];
    b.click(&format!("#atrisk-rows tr[data-user='{}'] a", first.user_id))
        .await;
    b.until(
        "the user card",
        "!document.getElementById('user-card').hidden",
    )
    .await;
    let shown = b
        .js("return [document.getElementById('user-tier').dataset.tier, document.getElementById('user-churn').textContent, document.querySelectorAll('#user-reasons tbody tr').length];")
        .await;
    assert_eq!(shown[0], first.tier_id.as_str());
    assert_eq!(shown[1], format!("{:.6}", first.churn_probability).as_str());
    assert_eq!(shown[2], first.top_factors.len());
    b.screenshot("3-user").await;

    // 中文: the page's language, its labels and the tier's Chinese name.
    b.click("#lang").await;
    b.until("Chinese", "document.documentElement.lang === 'zh-CN'")
        .await;
    let nav = b
        .js("return document.getElementById('nav-at-risk').textContent;")
        .await;
    assert_eq!(nav, "流失风险");
    let zh = b
        .until(
            "the Chinese tier name",
            &format!("document.getElementById('user-tier').textContent === '{}' && document.getElementById('user-tier').textContent", first.tier_name_zh),
        )
        .await;
    assert_eq!(zh, first.tier_name_zh.as_str());
    b.screenshot("4-user-zh").await;

    // Models: each bundle's report, in a sandboxed frame.
    b.click("#nav-models").await;
    b.until(
        "the models table",
        "document.querySelectorAll('#models-table tbody tr').length === 2",
    )
    .await;
    b.click("#models-table tr[data-version='v2'] button.report")
        .await;
    b.until(
        "the report",
        "document.getElementById('report-frame').dataset.version === 'v2'",
    )
    .await;
    let frame = b
        .js("const f = document.getElementById('report-frame'); return [f.srcdoc.includes('training report v2'), f.getAttribute('sandbox'), f.getBoundingClientRect().height > 100, document.activeElement.id];")
        .await;
    assert_eq!(frame, json!([true, "", true, "report-title"]));
    b.screenshot("5-models-report-zh").await;

    // Phone width (390 CSS px, emulated: a desktop window cannot be that narrow): no view is
    // wider than the screen (tables scroll inside their box).
    b.call(
        "POST",
        "/goog/cdp/execute",
        Some(
            json!({"cmd": "Emulation.setDeviceMetricsOverride", "params":
            {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}}),
        ),
    )
    .await;
    b.until("a phone-wide viewport", "window.innerWidth <= 400")
        .await;
    assert_eq!(b.overflow().await, 0, "models with the report open");
    b.screenshot("6-models-phone-zh").await;
    b.key("\u{E00C}").await;
    b.until(
        "the report closed by Escape",
        "document.getElementById('report-panel').hidden",
    )
    .await;
    b.click("#nav-at-risk").await;
    b.until(
        "the rows at phone width",
        "document.querySelectorAll('#atrisk-rows tr').length",
    )
    .await;
    assert_eq!(b.overflow().await, 0, "at risk");
    b.screenshot("7-at-risk-phone-zh").await;
    for (view, ready) in [
        (
            "overview",
            "document.querySelectorAll('#tiers tbody tr').length",
        ),
        ("user", "!document.getElementById('view-user').hidden"),
    ] {
        b.click(&format!("#nav-{view}")).await;
        b.until(view, ready).await;
        assert_eq!(b.overflow().await, 0, "{view}");
    }
    b.screenshot("8-overview-phone-zh").await;

    b.close().await;
    server.stop().await.unwrap();
}
