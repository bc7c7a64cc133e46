//! Model administration over gRPC (ListModels, PromoteModel, RollbackModel; role `admin`, checked
//! by [`super::auth`]): the same library calls as `tiering models` — [`BundleStore::list`],
//! [`BundleStore::promote`], [`BundleStore::rollback`] on a store with the server's verify keys —
//! so a bundle the CLI refuses (checksums, model, state seed, signature) is refused here too,
//! and CURRENT stays unchanged. The running server then switches through its usual watcher.
//!
//! Every change, and every refused change, is an audit entry ([`super::audit`]): who (the
//! authenticated identity), what (the action, the version, the previous one, the outcome).

use super::audit::{Audit, Entry};
use super::error::RequestError;
use crate::bundle::{BundleStore, Manifest, VersionInfo, MANIFEST};
use crate::pb as proto;
use std::sync::Arc;

/// The models directory as the administration calls see it.
pub struct ModelAdmin {
    store: Arc<BundleStore>,
    audit: Arc<Audit>,
}

impl ModelAdmin {
    pub fn new(store: BundleStore, audit: Arc<Audit>) -> ModelAdmin {
        ModelAdmin {
            store: Arc::new(store),
            audit,
        }
    }

    /// Runs `f` on the store on a blocking thread (the calls read and fsync files).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&BundleStore) -> Result<T, RequestError> + Send + 'static,
    ) -> Result<T, RequestError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(RequestError::AdminTask)?
    }

    pub async fn list(&self) -> Result<proto::ListModelsResponse, RequestError> {
        self.blocking(|store| {
            let current = store.current().map_err(RequestError::ModelAdmin)?;
            let versions = store.list().map_err(RequestError::ModelAdmin)?;
            Ok(proto::ListModelsResponse {
                models: versions.iter().map(|v| version_row(store, v)).collect(),
                current: current.unwrap_or_default(),
                verify_key_ids: store
                    .verify_keys()
                    .map(|k| k.key_ids().iter().map(|s| s.to_string()).collect())
                    .unwrap_or_default(),
            })
        })
        .await
    }

    /// The training report of bundle `version` ([`BundleStore::report`]: the version id and
    /// the file checked); the HTTP API serves it (`GET /v1/models/{version}/report`).
    pub async fn report(&self, version: String) -> Result<Vec<u8>, RequestError> {
        self.blocking(move |store| store.report(&version).map_err(RequestError::ModelAdmin))
            .await
    }

    pub async fn promote(
        &self,
        who: String,
        version: String,
    ) -> Result<proto::ModelChange, RequestError> {
        let audit = self.audit.clone();
        self.blocking(move |store| {
            let previous = store.current().ok().flatten().unwrap_or_default();
            let entry = Entry::new(who, "PromoteModel")
                .detail("version", version.as_str())
                .detail("previous", previous.as_str());
            let bundle = store.promote(&version).map_err(|e| {
                audit.record(
                    entry
                        .clone()
                        .outcome("refused")
                        .detail("error", e.to_string()),
                );
                RequestError::ModelAdmin(e)
            })?;
            audit.record(entry);
            Ok(proto::ModelChange {
                version: bundle.version().to_string(),
                previous,
            })
        })
        .await
    }

    pub async fn rollback(&self, who: String) -> Result<proto::ModelChange, RequestError> {
        let audit = self.audit.clone();
        self.blocking(move |store| {
            let previous = store.current().ok().flatten().unwrap_or_default();
            let entry = Entry::new(who, "RollbackModel").detail("previous", previous.as_str());
            let bundle = store.rollback().map_err(|e| {
                audit.record(
                    entry
                        .clone()
                        .outcome("refused")
                        .detail("error", e.to_string()),
                );
                RequestError::ModelAdmin(e)
            })?;
            audit.record(entry.detail("version", bundle.version()));
            Ok(proto::ModelChange {
                version: bundle.version().to_string(),
                previous,
            })
        })
        .await
    }
}

/// One bundle's row, with details from its manifest when it loads.
fn version_row(store: &BundleStore, v: &VersionInfo) -> proto::ModelVersion {
    let manifest: Option<Manifest> = if v.problem.is_none() {
        std::fs::read(store.dir(&v.version).join(MANIFEST))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    } else {
        None
    };
    let m = manifest.as_ref();
    let chosen = m.and_then(|m| {
        m.metrics
            .models
            .iter()
            .find(|x| x.name == m.metrics.chosen_model)
    });
    proto::ModelVersion {
        version: v.version.clone(),
        current: v.current,
        created_at: v
            .created_at
            .map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
        as_of: m.map(|m| m.as_of.clone()).unwrap_or_default(),
        model: m
            .map(|m| m.metrics.chosen_model.clone())
            .unwrap_or_default(),
        roc_auc: chosen.map_or(0.0, |c| c.metrics.roc_auc),
        users: m.map_or(0, |m| m.data.users),
        signed_by: v.signed_by.clone().unwrap_or_default(),
        problem: v.problem.clone().unwrap_or_default(),
    }
}
