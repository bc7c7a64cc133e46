//! The `tiering.v1.Tiering` handlers. Each is thin: check the deadline, validate and convert the
//! request ([`super::convert`]), call domain code (the user state through its trait, the scorer,
//! the at-risk ranking), convert the answer, and record metrics.

use super::admission::RequestDeadline;
use super::at_risk;
use super::audit;
use super::config::Clock;
use super::convert::{self, EventRules, PageLimits};
use super::error::RequestError;
use super::events::{self, EventSink};
use super::metrics::{Metrics, Rpc};
use super::page_token::TokenKeys;
use super::ranking::{self, Ranking, RankingBackend, VersionId};
use super::slot::{LiveModel, ModelSlot};
use super::state::{StateBackend, UserState};
use crate::features::Timestamp;
use crate::model::scorer::Score;
use crate::pb as proto;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status};

/// Request limits, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_batch_size: usize,
    pub max_events_per_request: usize,
    pub page: PageLimits,
    /// Seconds an event may lie in the future.
    pub future_tolerance: i64,
    /// Events before this are refused (`earliest_event_time`).
    pub earliest_event: Timestamp,
}

/// Shared by every handler.
pub struct Context {
    pub limits: Limits,
    pub clock: Clock,
    pub model: Arc<ModelSlot>,
    pub state: Arc<StateBackend>,
    /// Where RecordEvents' events go: the local state, or the event topic.
    pub sink: Arc<EventSink>,
    pub metrics: Arc<Metrics>,
    /// One permit per ListAtRiskUsers answer being computed or streamed
    /// (`max_open_at_risk_streams`).
    pub at_risk_streams: Arc<Semaphore>,
    /// Signs and checks page tokens.
    pub token_keys: Arc<TokenKeys>,
    /// The at-risk ranking ListAtRiskUsers reads; RecordEvents tells it which users changed.
    pub ranking: Arc<RankingBackend>,
    /// ListModels, PromoteModel, RollbackModel (see [`super::admin`]).
    pub admin: Arc<super::admin::ModelAdmin>,
    /// Erasure, export, objection, and the lists every answer honours (see [`super::privacy`]).
    pub privacy: Arc<super::privacy::Privacy>,
    /// Replaces request user ids by their keyed hash (`pseudonymize_key_file`; see
    /// [`super::pseudonym`]).
    pub pseudonyms: super::pseudonym::Pseudonyms,
}

#[derive(Clone)]
pub(crate) struct TieringService {
    ctx: Arc<Context>,
}

impl TieringService {
    /// A ranking page without the users who were erased or objected since its version was
    /// published. A page whose users are all hidden is followed by the next page of the same
    /// version (at most [`MAX_HIDDEN_PAGES`] of them), so a walk never ends early on it.
    async fn visible_page(
        &self,
        mut q: at_risk::AtRiskQuery,
        deadline: Option<Instant>,
    ) -> Result<(ranking::RankedPage, Vec<(String, crate::model::Score)>), ranking::RankingError>
    {
        let mut rounds = 0;
        loop {
            let mut page = self.ctx.ranking.page(&q, deadline).await?;
            let last = page
                .users
                .last()
                .map(|(id, s)| (s.churn_probability, id.clone()));
            let users: Vec<_> = std::mem::take(&mut page.users)
                .into_iter()
                .filter(|(id, _)| !self.ctx.privacy.hidden(id))
                .collect();
            rounds += 1;
            match last {
                Some(after) if users.is_empty() && page.more && rounds < MAX_HIDDEN_PAGES => {
                    q.after = Some(after);
                    q.pinned = Some(page.version);
                    q.as_of = page.as_of;
                }
                _ => return Ok((page, users)),
            }
        }
    }

    pub fn new(ctx: Arc<Context>) -> Self {
        TieringService { ctx }
    }

    /// The model administration the admin RPCs call (the HTTP API's report route uses it too).
    pub(crate) fn model_admin(&self) -> &super::admin::ModelAdmin {
        &self.ctx.admin
    }

    fn finish<T>(
        &self,
        rpc: Rpc,
        started: Instant,
        r: Result<T, RequestError>,
    ) -> Result<Response<T>, Status> {
        self.ctx.metrics.observe(
            rpc,
            started.elapsed(),
            r.as_ref().err().map(RequestError::code),
        );
        r.map(Response::new).map_err(Status::from)
    }

    /// `model`: the served bundle, whose kind mapping the events are read with.
    fn rules<'a>(&self, only_user: Option<&'a str>, model: &'a LiveModel) -> EventRules<'a> {
        EventRules {
            now: self.ctx.clock.now(),
            future_tolerance: self.ctx.limits.future_tolerance,
            earliest: self.ctx.limits.earliest_event,
            only_user,
            kinds: &model.kinds,
        }
    }
}

fn deadline<T>(req: &Request<T>) -> Result<RequestDeadline, RequestError> {
    let d = req
        .extensions()
        .get::<RequestDeadline>()
        .copied()
        .unwrap_or(RequestDeadline(None));
    if d.passed() {
        return Err(RequestError::DeadlineExceeded);
    }
    Ok(d)
}

/// Request metadata asking RecordEvents (topic mode) to wait until its events are applied.
pub const WAIT_APPLIED_HEADER: &str = "tiering-wait-applied-ms";
/// Longest wait [`WAIT_APPLIED_HEADER`] may ask for.
const MAX_WAIT_APPLIED: Duration = Duration::from_secs(30);

/// The wait [`WAIT_APPLIED_HEADER`] asks for (capped, and ending a little before the request's
/// deadline); `None` when absent, zero or not a number.
fn wait_applied_ms<T>(req: &Request<T>, dl: RequestDeadline) -> Option<Duration> {
    let ms: u64 = req
        .metadata()
        .get(WAIT_APPLIED_HEADER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let mut within = Duration::from_millis(ms).min(MAX_WAIT_APPLIED);
    if let Some(end) = dl.0 {
        let left = end.saturating_duration_since(Instant::now());
        within = within.min(left.saturating_sub(Duration::from_millis(20)));
    }
    (!within.is_zero()).then_some(within)
}

/// A ListAtRiskUsers page, converted to messages one at a time as the transport asks for them
/// (under HTTP/2 flow control): a client that does not read costs the page's scores (at most
/// `max_page_size` of them), never the encoded messages. Holds one of the
/// `max_open_at_risk_streams` permits until the answer ends or the client leaves (dropped).
pub(crate) struct AtRiskStream {
    users: std::vec::IntoIter<(String, crate::model::Score)>,
    more: bool,
    query: at_risk::AtRiskQuery,
    /// The page's ranking version and its `as_of` (the next token pins them).
    version: (VersionId, Timestamp),
    model: Arc<LiveModel>,
    keys: Arc<TokenKeys>,
    metrics: Arc<Metrics>,
    _permit: OwnedSemaphorePermit,
}

impl tokio_stream::Stream for AtRiskStream {
    type Item = Result<proto::UserTier, Status>;

    fn poll_next(
        self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some((id, score)) = this.users.next() else {
            return Poll::Ready(None);
        };
        let mut out = convert::user_tier(&id, &score, &this.model, this.query.as_of);
        if this.more && this.users.len() == 0 {
            out.next_page_token = convert::next_page_token(
                &this.query,
                this.version,
                (&out.user_id, convert::order_value(this.query.order, &out)),
                &this.keys,
            );
        }
        Poll::Ready(Some(Ok(out)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.users.size_hint()
    }
}

impl Drop for AtRiskStream {
    fn drop(&mut self) {
        self.metrics.at_risk_streams(-1);
    }
}

type UserTierStream = AtRiskStream;

/// Ranking pages of hidden users (erased or objected after the version was published) skipped
/// in one ListAtRiskUsers call before it answers with an empty page.
const MAX_HIDDEN_PAGES: usize = 64;

/// A ranking failure as the request's error.
fn ranking_error(e: ranking::RankingError) -> RequestError {
    use ranking::RankingError as R;
    match e {
        R::VersionGone {
            max_age_secs,
            max_versions,
        } => RequestError::PageVersionGone {
            max_age_secs,
            max_versions,
        },
        R::NotBuilt => RequestError::RankingNotBuilt,
        R::OtherModel { .. } => RequestError::RankingNotBuilt,
        R::NoModel => RequestError::NoModel,
        R::State(e) => RequestError::State(e),
        R::Task(e) => RequestError::ScanTask(e),
    }
}

#[tonic::async_trait]
impl proto::tiering_server::Tiering for TieringService {
    async fn get_user_tier(
        &self,
        req: Request<proto::GetUserTierRequest>,
    ) -> Result<Response<proto::UserTier>, Status> {
        let started = Instant::now();
        let req = self.ctx.pseudonyms.apply(req);
        let r = async {
            deadline(&req)?;
            let id = convert::user_id("user_id", &req.get_ref().user_id)?;
            self.ctx.privacy.check_profiling(id)?;
            // The embedded state answers at once (a completed future); the model is checked
            // first, so a server without one answers UNAVAILABLE whatever the user.
            let found = self.ctx.state.get(id).await;
            self.ctx.model.with(|model| {
                let now = self.ctx.clock.now();
                let agg = found?.ok_or_else(|| RequestError::UserNotFound(id.to_string()))?;
                Ok(convert::user_tier(
                    id,
                    &model.scorer.score(&agg, now),
                    model,
                    now,
                ))
            })
        }
        .await;
        self.finish(Rpc::GetUserTier, started, r)
    }

    async fn batch_get_user_tiers(
        &self,
        req: Request<proto::BatchGetUserTiersRequest>,
    ) -> Result<Response<proto::BatchGetUserTiersResponse>, Status> {
        let started = Instant::now();
        let req = self.ctx.pseudonyms.apply(req);
        let r = async {
            deadline(&req)?;
            let ids = &req.get_ref().user_ids;
            convert::within_limit("user_ids", ids.len(), self.ctx.limits.max_batch_size)?;
            for (i, id) in ids.iter().enumerate() {
                convert::user_id(&format!("user_ids[{i}]"), id)?;
            }
            let found = self.ctx.state.get_many(ids).await;
            self.ctx.model.with(|model| {
                let now = self.ctx.clock.now();
                let mut out = proto::BatchGetUserTiersResponse::default();
                let mut held = Vec::with_capacity(ids.len());
                let mut aggs = Vec::with_capacity(ids.len());
                for (id, agg) in ids.iter().zip(found?) {
                    match agg {
                        Some(_) if self.ctx.privacy.objected(id) => out.objected.push(id.clone()),
                        Some(agg) => {
                            held.push(id);
                            aggs.push(agg);
                        }
                        None => out.not_found.push(id.clone()),
                    }
                }
                // Scored together: the forest walks several users at once (same figures).
                let mut scores = vec![Score::default(); aggs.len()];
                model.scorer.score_many(&aggs, now, &mut scores);
                out.users = held
                    .into_iter()
                    .zip(&scores)
                    .map(|(id, s)| convert::user_tier(id, s, model, now))
                    .collect();
                Ok(out)
            })
        }
        .await;
        self.finish(Rpc::BatchGetUserTiers, started, r)
    }

    async fn score_user(
        &self,
        req: Request<proto::ScoreUserRequest>,
    ) -> Result<Response<proto::UserTier>, Status> {
        let started = Instant::now();
        let req = self.ctx.pseudonyms.apply(req);
        let r = deadline(&req).and_then(|_| {
            let body = req.get_ref();
            self.ctx.privacy.check_profiling(&body.user_id)?;
            let now = self.ctx.clock.now();
            let model = self.ctx.model.get()?;
            let rules = EventRules {
                now,
                ..self.rules(None, &model)
            };
            let agg = convert::score_user(body, self.ctx.limits.max_events_per_request, rules)?;
            Ok(convert::user_tier(
                &body.user_id,
                &model.scorer.score(&agg, now),
                &model,
                now,
            ))
        });
        self.finish(Rpc::ScoreUser, started, r)
    }

    async fn record_events(
        &self,
        req: Request<proto::RecordEventsRequest>,
    ) -> Result<Response<proto::RecordEventsResponse>, Status> {
        let started = Instant::now();
        let req = self.ctx.pseudonyms.apply(req);
        let r = async {
            let dl = deadline(&req)?;
            let model = self.ctx.model.get()?;
            let mut events = convert::record_events(
                req.get_ref(),
                self.ctx.limits.max_events_per_request,
                self.rules(None, &model),
            )?;
            drop(model);
            // Held until the events are applied: an erasure waits for them, or they for it.
            let gate = self.ctx.privacy.ingest_gate().await;
            self.ctx.privacy.drop_suppressed(&mut events);
            // Last look before the point of no return.
            if dl.passed() {
                return Err(RequestError::DeadlineExceeded);
            }
            let touched = ranking::touched_users(&events);
            let wait = wait_applied_ms(&req, dl);
            let users: Vec<String> = match wait {
                Some(_) => events.iter().map(|e| e.user_id.clone()).collect(),
                None => Vec::new(),
            };
            let recorded = self.ctx.sink.record(&*self.ctx.state, events).await?;
            drop(gate);
            let applied = match wait {
                _ if self.ctx.sink.is_local() => true,
                None => false,
                Some(within) => {
                    let produced: Vec<(&str, _)> = users
                        .iter()
                        .map(String::as_str)
                        .zip(recorded.positions.iter().copied())
                        .collect();
                    events::wait_applied(&*self.ctx.state, &produced, within).await?
                }
            };
            self.ctx.ranking.users_changed(touched).await;
            Ok(proto::RecordEventsResponse {
                accepted: recorded.applied.accepted,
                new_users: recorded.applied.new_users,
                positions: recorded
                    .positions
                    .iter()
                    .map(|p| proto::LogPosition {
                        partition: p.partition,
                        offset: p.offset,
                    })
                    .collect(),
                applied,
            })
        }
        .await;
        self.finish(Rpc::RecordEvents, started, r)
    }

    type ListAtRiskUsersStream = UserTierStream;

    async fn list_at_risk_users(
        &self,
        req: Request<proto::ListAtRiskUsersRequest>,
    ) -> Result<Response<Self::ListAtRiskUsersStream>, Status> {
        let started = Instant::now();
        let r = async {
            let dl = deadline(&req)?;
            let model = self.ctx.model.get()?;
            let q = convert::at_risk_query(
                req.get_ref(),
                &model,
                self.ctx.limits.page,
                self.ctx.clock.now(),
                &self.ctx.token_keys,
            )?;
            let permit = self
                .ctx
                .at_risk_streams
                .clone()
                .try_acquire_owned()
                .map_err(|_| {
                    self.ctx.metrics.refused("at_risk_streams");
                    RequestError::TooManyStreams
                })?;
            self.ctx.metrics.at_risk_streams(1);
            let (page, users) = match self.visible_page(q.clone(), dl.0).await {
                Ok(page) => page,
                Err(e) => {
                    // No stream was made, so its Drop will not count this one out.
                    self.ctx.metrics.at_risk_streams(-1);
                    drop(permit);
                    return Err(ranking_error(e));
                }
            };
            let mut query = q;
            query.as_of = page.as_of;
            let stream = AtRiskStream {
                users: users.into_iter(),
                more: page.more,
                query,
                version: (page.version, page.as_of),
                model: page.model,
                keys: self.ctx.token_keys.clone(),
                metrics: self.ctx.metrics.clone(),
                _permit: permit,
            };
            Ok(stream)
        }
        .await;
        self.finish(Rpc::ListAtRiskUsers, started, r)
    }

    async fn get_model_info(
        &self,
        req: Request<proto::GetModelInfoRequest>,
    ) -> Result<Response<proto::ModelInfo>, Status> {
        let started = Instant::now();
        let r = deadline(&req).and_then(|_| {
            let model = self.ctx.model.get()?;
            Ok(convert::model_info(&model, self.ctx.state.users()))
        });
        self.finish(Rpc::GetModelInfo, started, r)
    }

    async fn list_models(
        &self,
        _req: Request<proto::ListModelsRequest>,
    ) -> Result<Response<proto::ListModelsResponse>, Status> {
        let r = self.ctx.admin.list().await;
        r.map(Response::new).map_err(Status::from)
    }

    async fn promote_model(
        &self,
        req: Request<proto::PromoteModelRequest>,
    ) -> Result<Response<proto::ModelChange>, Status> {
        let who = audit::who(&req);
        let r = self.ctx.admin.promote(who, req.into_inner().version).await;
        r.map(Response::new).map_err(Status::from)
    }

    async fn rollback_model(
        &self,
        req: Request<proto::RollbackModelRequest>,
    ) -> Result<Response<proto::ModelChange>, Status> {
        let r = self.ctx.admin.rollback(audit::who(&req)).await;
        r.map(Response::new).map_err(Status::from)
    }

    async fn erase_user(
        &self,
        req: Request<proto::EraseUserRequest>,
    ) -> Result<Response<proto::EraseUserResponse>, Status> {
        let who = audit::who(&req);
        let req = self.ctx.pseudonyms.apply(req);
        let r = async {
            let id = convert::user_id("user_id", &req.get_ref().user_id)?;
            self.ctx.privacy.erase(&self.ctx.ranking, who, id).await
        }
        .await;
        r.map(Response::new).map_err(Status::from)
    }

    async fn export_user(
        &self,
        req: Request<proto::ExportUserRequest>,
    ) -> Result<Response<proto::ExportUserResponse>, Status> {
        let who = audit::who(&req);
        let req = self.ctx.pseudonyms.apply(req);
        let r = async {
            let id = convert::user_id("user_id", &req.get_ref().user_id)?;
            let now = self.ctx.clock.now();
            let json = self
                .ctx
                .privacy
                .export(&self.ctx.model, now, who, id)
                .await?;
            Ok::<_, RequestError>(proto::ExportUserResponse { json })
        }
        .await;
        r.map(Response::new).map_err(Status::from)
    }

    async fn set_profiling_objection(
        &self,
        req: Request<proto::SetProfilingObjectionRequest>,
    ) -> Result<Response<proto::SetProfilingObjectionResponse>, Status> {
        let who = audit::who(&req);
        let req = self.ctx.pseudonyms.apply(req);
        let r = async {
            let body = req.get_ref();
            let id = convert::user_id("user_id", &body.user_id)?;
            let privacy = &self.ctx.privacy;
            let previously_objected = privacy
                .set_objection(&self.ctx.ranking, who, id, body.objected)
                .await?;
            Ok::<_, RequestError>(proto::SetProfilingObjectionResponse {
                previously_objected,
            })
        }
        .await;
        r.map(Response::new).map_err(Status::from)
    }
}
