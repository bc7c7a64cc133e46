// The tiering web console: a page over the HTTP/JSON API (/v1/...). Everything it shows comes
// from the API with the token the user signs in with; the token stays in this tab's session
// storage and goes out only as `Authorization: Bearer` (never a cookie).
"use strict";

const TEXT = {
  en: {
    skip: "Skip to content", title: "tiering console", overview: "Overview", atRisk: "At risk",
    user: "User", models: "Models", token: "API token (empty when authentication is off)",
    signIn: "Sign in", signOut: "Sign out", tier: "Tier", users: "Users", share: "Share",
    playbook: "Playbook", metrics: "Model quality (test set)", model: "Model",
    lift: "Lift (top decile)", transitions: "Tier transitions since the previous model",
    from: "From", to: "To", all: "All", stage: "Lifecycle stage",
    st_new: "new", st_mature_active: "mature, active", st_silent: "silent",
    st_about_to_churn: "about to churn", st_churned: "churned",
    minP: "Minimum churn probability", order: "Order", pageSize: "Per page", apply: "Apply",
    userId: "User", churn: "Churn probability", risk: "Risk", rfm: "RFM segment",
    prev: "Previous page", next: "Next page", csv: "Download CSV", show: "Show",
    percentile: "Risk percentile", asOf: "As of", reasons: "Reasons and recent activity",
    feature: "Feature", value: "Value", contribution: "Contribution to churn",
    version: "Version", created: "Created", signedBy: "Signed by", problem: "Problem",
    adminOnly: "Listing, promoting and rolling back models needs the admin role.",
    rollback: "Roll back to the previous version", promote: "Promote", current: "current",
    signedInAs: "Signed in.", noToken: "Not signed in (works only while authentication is off).",
    matched: (n) => `${n} users match these filters.`, counting: "Counting matching users…",
    page: (p, n) => `Page ${p} · ${n} users on this page`,
    downloading: (rows) => `Downloading… ${rows} rows so far`,
    downloaded: (rows) => `Downloaded ${rows} rows.`,
    modelLine: (m) => `Model ${m.version} (${m.chosenModel}), trained as of ${m.trainedAsOf || "?"}; ${m.usersHeld} users held.`,
    stabilityLine: (s) => `Compared with ${s.previousVersion}: ${s.modelChanged} of ${s.compared} users changed tier with the model; ${s.behaviourChanged} of ${s.behaviourCompared} by behaviour.`,
    noStability: "No previous model to compare with.",
    currentLine: (v) => `Current version: ${v}`, changed: (c) => `Now current: ${c.version} (was ${c.previous || "none"}).`,
    risk_low: "low", risk_medium: "medium", risk_high: "high",
    meanChurn: "Churn (mean probability)", meanClv: "Mean CLV", valueAtRisk: "Value at risk",
    modelChanges: "Changed by the model (the same users and data, previous model → this one)",
    behaviourChanges: "Changed by behaviour (the previous model, then → now)",
    matrixNote: "Rows: the tier before; columns: the tier after; users who changed tier (the diagonal, users who stayed, is not counted).",
    fromTo: "From ↓ / to →", report: "Report", reportOf: (v) => `Report of ${v}`, close: "Close the report",
  },
  zh: {
    skip: "跳到正文", title: "用户分层控制台", overview: "概览", atRisk: "流失风险",
    user: "用户", models: "模型", token: "API 令牌（未开启认证时留空）",
    signIn: "登录", signOut: "退出", tier: "层级", users: "用户数", share: "占比",
    playbook: "运营策略", metrics: "模型质量（测试集）", model: "模型",
    lift: "提升度（前 10%）", transitions: "与上一模型相比的层级变化",
    from: "原层级", to: "新层级", all: "全部", stage: "生命周期阶段",
    st_new: "新用户", st_mature_active: "成熟活跃", st_silent: "沉默", st_about_to_churn: "即将流失",
    st_churned: "已流失", minP: "最低流失概率", order: "排序", pageSize: "每页", apply: "应用",
    userId: "用户", churn: "流失概率", risk: "风险", rfm: "RFM 分群",
    prev: "上一页", next: "下一页", csv: "下载 CSV", show: "查看",
    percentile: "风险百分位", asOf: "计算时间", reasons: "原因与近期活动",
    feature: "特征", value: "取值", contribution: "对流失的贡献",
    version: "版本", created: "创建时间", signedBy: "签名者", problem: "问题",
    adminOnly: "查看、发布和回滚模型需要管理员角色。",
    rollback: "回滚到上一版本", promote: "发布", current: "当前",
    signedInAs: "已登录。", noToken: "未登录（仅在未开启认证时可用）。",
    matched: (n) => `共有 ${n} 位用户符合筛选条件。`, counting: "正在统计符合条件的用户…",
    page: (p, n) => `第 ${p} 页 · 本页 ${n} 位用户`,
    downloading: (rows) => `正在下载… 已收到 ${rows} 行`,
    downloaded: (rows) => `已下载 ${rows} 行。`,
    modelLine: (m) => `模型 ${m.version}（${m.chosenModel}），训练数据截至 ${m.trainedAsOf || "?"}；当前持有 ${m.usersHeld} 位用户。`,
    stabilityLine: (s) => `与 ${s.previousVersion} 相比：${s.compared} 位用户中有 ${s.modelChanged} 位因模型变化换了层级；${s.behaviourCompared} 位中有 ${s.behaviourChanged} 位因行为变化换了层级。`,
    noStability: "没有可比较的上一模型。",
    currentLine: (v) => `当前版本：${v}`, changed: (c) => `当前版本已变为 ${c.version}（之前为 ${c.previous || "无"}）。`,
    risk_low: "低", risk_medium: "中", risk_high: "高",
    meanChurn: "流失概率（均值）", meanClv: "平均客户终身价值", valueAtRisk: "风险价值",
    modelChanges: "因模型变化（同一批用户与数据，上一模型 → 本模型）",
    behaviourChanges: "因行为变化（上一模型，当时 → 现在）",
    matrixNote: "行：变化前的层级；列：变化后的层级；仅统计换了层级的用户（对角线即未变化的用户不计）。",
    fromTo: "原层级 ↓ / 新层级 →", report: "报告", reportOf: (v) => `${v} 的训练报告`, close: "关闭报告",
  },
};

const state = {
  lang: localStorage.getItem("tiering.lang") === "zh" ? "zh" : "en",
  model: null,
  tokens: [""], // page tokens of the pages walked so far (for "previous")
  page: 0,
  next: "",
};

const $ = (id) => document.getElementById(id);
const t = (key, ...args) => {
  const v = TEXT[state.lang][key] ?? TEXT.en[key] ?? key;
  return typeof v === "function" ? v(...args) : v;
};

function applyLanguage() {
  document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  $("lang").textContent = state.lang === "zh" ? "English" : "中文";
  document.title = t("title");
}

function token() {
  return sessionStorage.getItem("tiering.token") || "";
}

function headers(json) {
  const h = {};
  if (token()) h.Authorization = `Bearer ${token()}`;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

class ApiError extends Error {
  constructor(http, body) {
    super(body && body.message ? `${body.status}: ${body.message}` : `HTTP ${http}`);
    this.http = http;
    this.body = body || {};
  }
}

async function api(path, body) {
  const init = body === undefined
    ? { headers: headers(false) }
    : { method: "POST", headers: headers(true), body: JSON.stringify(body) };
  const r = await fetch(path, init);
  const data = await r.json().catch(() => null);
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

function showError(e) {
  const el = $("error");
  if (!e) { el.hidden = true; el.textContent = ""; return; }
  el.hidden = false;
  el.textContent = e.message + (e.body && e.body.field ? ` (${e.body.field})` : "");
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function tierName(obj, en, zh) {
  return state.lang === "zh" ? (obj[zh] || obj[en]) : obj[en];
}

async function loadModel() {
  state.model = await api("/v1/model");
  return state.model;
}

// ---------------------------------------------------------------------------------- overview
async function showOverview() {
  const m = await loadModel();
  $("model-line").textContent = t("modelLine", m);
  const body = $("tiers").tBodies[0];
  body.replaceChildren();
  for (const tier of m.tiers) {
    const tr = document.createElement("tr");
    tr.dataset.tier = tier.id;
    cell(tr, tierName(tier, "nameEn", "nameZh"));
    cell(tr, tier.users, "num");
    cell(tr, `${(tier.share * 100).toFixed(1)}%`, "num");
    cell(tr, `${(Number(tier.meanChurnProbability) * 100).toFixed(1)}%`, "num").dataset.value = tier.meanChurnProbability;
    // Value figures are left out of the answer when the bundle has none.
    for (const key of ["meanClv", "valueAtRisk"]) {
      const known = tier[key] !== undefined;
      const td = cell(tr, known ? money(tier[key]) : "—", "num");
      td.dataset.value = known ? tier[key] : "";
    }
    cell(tr, tier.playbook.join(" · "));
    body.appendChild(tr);
  }
  const metrics = $("metrics").tBodies[0];
  metrics.replaceChildren();
  for (const x of m.metrics) {
    const tr = document.createElement("tr");
    cell(tr, x.model + (x.model === m.chosenModel ? " ✓" : ""));
    for (const v of [x.rocAuc, x.prAuc, x.brier, x.liftTopDecile]) cell(tr, Number(v).toFixed(3), "num");
    metrics.appendChild(tr);
  }
  const s = m.stability;
  const compared = Boolean(s && s.previousVersion);
  $("stability").textContent = compared ? t("stabilityLine", s) : t("noStability");
  $("matrices").hidden = !compared;
  const names = Object.fromEntries(m.tiers.map((x) => [x.id, tierName(x, "nameEn", "nameZh")]));
  matrix($("model-matrix"), compared ? s.modelTransitions : [], m.tiers, names);
  matrix($("behaviour-matrix"), compared ? s.behaviourTransitions : [], m.tiers, names);
}

function money(v) {
  return Number(v).toLocaleString(state.lang === "zh" ? "zh-CN" : "en-US", { maximumFractionDigits: 2, minimumFractionDigits: 2 });
}

// A transition matrix: rows the tier before, columns the tier after, each cell the users who
// moved (the answer lists only the moves, so the diagonal shows a dot). Tier ids of the previous
// model that this one does not have get their own row or column.
function matrix(table, transitions, tiers, names) {
  const ids = tiers.map((x) => x.id);
  for (const x of transitions || []) {
    for (const id of [x.fromTierId, x.toTierId]) if (!ids.includes(id)) ids.push(id);
  }
  const count = new Map((transitions || []).map((x) => [`${x.fromTierId}\u0000${x.toTierId}`, x.users]));
  const head = document.createElement("tr");
  const corner = document.createElement("th");
  corner.scope = "col";
  corner.textContent = t("fromTo");
  head.appendChild(corner);
  for (const id of ids) {
    const th = document.createElement("th");
    th.scope = "col";
    th.className = "num";
    th.textContent = names[id] || id;
    head.appendChild(th);
  }
  const rows = ids.map((from) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = names[from] || from;
    tr.appendChild(th);
    for (const to of ids) {
      const td = cell(tr, from === to ? "·" : String(count.get(`${from}\u0000${to}`) || 0), from === to ? "num same" : "num");
      td.dataset.from = from;
      td.dataset.to = to;
    }
    return tr;
  });
  const thead = document.createElement("thead");
  thead.appendChild(head);
  const tbody = document.createElement("tbody");
  tbody.replaceChildren(...rows);
  table.replaceChildren(thead, tbody);
}

// ----------------------------------------------------------------------------------- at risk
function filters() {
  const p = new URLSearchParams();
  const tier = $("atrisk-tier").value;
  const stage = $("atrisk-stage").value;
  const min = $("atrisk-min").value;
  if (tier) p.append("tierIds", tier);
  if (stage) p.append("lifecycleStages", stage);
  if (min && Number(min) > 0) p.append("minChurnProbability", min);
  if (!$("atrisk-order-label").hidden && $("atrisk-order").value) p.append("order", $("atrisk-order").value);
  return p;
}

async function prepareAtRisk() {
  const m = state.model || (await loadModel());
  const select = $("atrisk-tier");
  const chosen = select.value;
  select.replaceChildren(select.options[0]);
  for (const tier of m.tiers) {
    const o = document.createElement("option");
    o.value = tier.id;
    o.textContent = tierName(tier, "nameEn", "nameZh");
    select.appendChild(o);
  }
  select.value = chosen;
  // Orderings appear when the server's API has them (its OpenAPI description says so).
  const doc = await fetch("/openapi.json").then((r) => r.json()).catch(() => null);
  const params = doc ? doc.paths["/v1/at-risk"].get.parameters : [];
  const order = params.find((p) => p.name === "order");
  if (order && order.schema && order.schema.enum) {
    const s = $("atrisk-order");
    s.replaceChildren(...order.schema.enum.map((v) => Object.assign(document.createElement("option"), { value: v, textContent: v })));
    $("atrisk-order-label").hidden = false;
  }
}

async function loadPage() {
  const p = filters();
  p.append("limit", $("atrisk-limit").value || "50");
  const tok = state.tokens[state.page];
  if (tok) p.append("pageToken", tok);
  const data = await api(`/v1/at-risk?${p}`);
  const body = $("atrisk-rows");
  body.replaceChildren();
  for (const u of data.users) {
    const tr = document.createElement("tr");
    tr.dataset.user = u.userId;
    const a = document.createElement("a");
    a.href = `#/user/${encodeURIComponent(u.userId)}`;
    a.textContent = u.userId;
    cell(tr, "").appendChild(a);
    cell(tr, Number(u.churnProbability).toFixed(6), "num");
    cell(tr, t(`risk_${u.riskLevel}`));
    cell(tr, tierName(u, "tierName", "tierNameZh")).dataset.tier = u.tierId;
    cell(tr, t(`st_${u.lifecycleStage}`));
    cell(tr, u.rfmSegment);
    body.appendChild(tr);
  }
  state.next = data.nextPageToken;
  $("atrisk-page").textContent = t("page", state.page + 1, data.users.length);
  $("atrisk-prev").disabled = state.page === 0;
  $("atrisk-next").disabled = !data.nextPageToken;
}

async function countMatches() {
  const el = $("atrisk-count");
  el.textContent = t("counting");
  const data = await api(`/v1/at-risk:count?${filters()}`);
  el.textContent = t("matched", data.matched);
  el.dataset.matched = data.matched;
}

async function applyFilters() {
  state.tokens = [""];
  state.page = 0;
  await Promise.all([loadPage(), countMatches()]);
}

// Streams the CSV (the same rows as `tiering at-risk --format csv`), counting rows as they come.
async function downloadCsv() {
  const progress = $("atrisk-progress");
  const r = await fetch(`/v1/at-risk.csv?${filters()}`, { headers: headers(false) });
  if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => null));
  const reader = r.body.getReader();
  const chunks = [];
  let rows = -1;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    for (const b of value) if (b === 10) rows++;
    progress.textContent = t("downloading", Math.max(rows, 0));
  }
  const blob = new Blob(chunks, { type: "text/csv" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "at-risk.csv";
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 60000);
  progress.textContent = t("downloaded", Math.max(rows, 0));
  progress.dataset.rows = String(Math.max(rows, 0));
}

// -------------------------------------------------------------------------------------- user
async function showUser(id) {
  $("user-id").value = id;
  $("user-card").hidden = true;
  if (!id) return;
  const u = await api(`/v1/users/${encodeURIComponent(id)}`);
  $("user-tier").textContent = tierName(u, "tierName", "tierNameZh");
  $("user-tier").dataset.tier = u.tierId;
  $("user-churn").textContent = Number(u.churnProbability).toFixed(6);
  $("user-risk").textContent = t(`risk_${u.riskLevel}`);
  $("user-percentile").textContent = Number(u.riskPercentile).toFixed(2);
  $("user-stage").textContent = t(`st_${u.lifecycleStage}`);
  $("user-rfm").textContent = u.rfmSegment;
  $("user-asof").textContent = u.asOf;
  const body = $("user-reasons").tBodies[0];
  body.replaceChildren();
  for (const f of u.topFactors) {
    const tr = document.createElement("tr");
    cell(tr, f.feature);
    cell(tr, Number(f.value).toFixed(2), "num");
    cell(tr, (f.contribution >= 0 ? "+" : "") + Number(f.contribution).toFixed(3), "num");
    body.appendChild(tr);
  }
  $("user-playbook").replaceChildren(...u.recommendedActions.map((x) => Object.assign(document.createElement("li"), { textContent: x })));
  $("user-card").hidden = false;
}

// ------------------------------------------------------------------------------------ models
async function showModels() {
  const m = await loadModel().catch(() => null);
  $("models-current").textContent = m ? t("currentLine", m.version) : "";
  let list;
  try {
    list = await api("/v1/models");
  } catch (e) {
    if (e.http === 403 || e.http === 401) {
      $("models-note").hidden = false;
      $("models-table").hidden = true;
      $("models-rollback").hidden = true;
      return;
    }
    throw e;
  }
  $("models-note").hidden = true;
  const body = $("models-table").tBodies[0];
  body.replaceChildren();
  for (const v of list.models) {
    const tr = document.createElement("tr");
    tr.dataset.version = v.version;
    cell(tr, v.version + (v.current ? ` (${t("current")})` : ""));
    cell(tr, v.createdAt || "");
    cell(tr, v.model);
    cell(tr, Number(v.rocAuc).toFixed(3), "num");
    cell(tr, v.users, "num");
    cell(tr, v.signedBy);
    cell(tr, v.problem);
    const td = cell(tr, "");
    const rb = document.createElement("button");
    rb.type = "button";
    rb.className = "report";
    rb.textContent = t("report");
    rb.setAttribute("aria-label", t("reportOf", v.version));
    rb.addEventListener("click", () => run(() => showReport(v.version)));
    td.appendChild(rb);
    if (!v.current && !v.problem) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = t("promote");
      b.addEventListener("click", () => run(async () => {
        $("models-status").textContent = t("changed", await api("/v1/models:promote", { version: v.version }));
        await showModels();
      }));
      td.appendChild(b);
    }
    body.appendChild(tr);
  }
  $("models-table").hidden = false;
  $("models-rollback").hidden = false;
}

// A bundle's report: fetched with the token (a frame cannot send it), shown in a sandboxed
// frame (no script, an opaque origin).
async function showReport(version) {
  state.opener = document.activeElement;
  const r = await fetch(`/v1/models/${encodeURIComponent(version)}/report`, { headers: headers(false) });
  if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => null));
  const html = await r.text();
  $("report-frame").srcdoc = html;
  $("report-frame").title = t("reportOf", version);
  $("report-frame").dataset.version = version;
  $("report-title").textContent = t("reportOf", version);
  $("report-panel").hidden = false;
  $("report-title").focus();
}

function closeReport() {
  $("report-panel").hidden = true;
  $("report-frame").srcdoc = "";
  delete $("report-frame").dataset.version;
  if (state.opener && document.contains(state.opener)) state.opener.focus();
}

// ---------------------------------------------------------------------------------- plumbing
async function run(f) {
  showError(null);
  try {
    await f();
  } catch (e) {
    showError(e);
  }
}

function route() {
  const hash = location.hash || "#/overview";
  const [, view, arg] = hash.match(/^#\/([^/]*)\/?(.*)$/) || [null, "overview", ""];
  for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== `view-${view}`;
  for (const a of document.querySelectorAll("nav a")) {
    if (a.id === `nav-${view}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  run(async () => {
    if (view === "overview") await showOverview();
    else if (view === "at-risk") { await prepareAtRisk(); await applyFilters(); }
    else if (view === "user") await showUser(decodeURIComponent(arg || ""));
    else if (view === "models") await showModels();
  });
}

function signedLine() {
  $("signed").textContent = token() ? t("signedInAs") : t("noToken");
  $("signout").hidden = !token();
}

document.addEventListener("DOMContentLoaded", () => {
  applyLanguage();
  signedLine();
  // The skip link moves focus only: following its #main would change the hash route.
  document.querySelector(".skip").addEventListener("click", (e) => {
    e.preventDefault();
    $("main").focus();
  });
  $("lang").addEventListener("click", () => {
    state.lang = state.lang === "zh" ? "en" : "zh";
    localStorage.setItem("tiering.lang", state.lang);
    applyLanguage();
    signedLine();
    route();
  });
  $("signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("tiering.token", $("token").value.trim());
    $("token").value = "";
    state.model = null;
    signedLine();
    route();
  });
  $("signout").addEventListener("click", () => {
    sessionStorage.removeItem("tiering.token");
    signedLine();
    route();
  });
  $("atrisk-form").addEventListener("submit", (e) => { e.preventDefault(); run(applyFilters); });
  $("atrisk-next").addEventListener("click", () => run(async () => {
    state.tokens[state.page + 1] = state.next;
    state.page += 1;
    await loadPage();
  }));
  $("atrisk-prev").addEventListener("click", () => run(async () => {
    state.page = Math.max(0, state.page - 1);
    await loadPage();
  }));
  $("atrisk-csv").addEventListener("click", () => run(downloadCsv));
  $("user-form").addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = `#/user/${encodeURIComponent($("user-id").value.trim())}`;
  });
  $("report-close").addEventListener("click", closeReport);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !$("report-panel").hidden) closeReport();
  });
  $("models-rollback").addEventListener("click", () => run(async () => {
    $("models-status").textContent = t("changed", await api("/v1/models:rollback", {}));
    await showModels();
  }));
  window.addEventListener("hashchange", route);
  route();
});
