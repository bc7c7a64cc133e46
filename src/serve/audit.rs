//! The audit log of administrative actions: model promote and rollback, erasure, export,
//! objection (the server), state repair (`tiering state repair`). Each entry says who (the
//! authenticated identity from [`super::auth::Caller`]; `anonymous` when authentication is off,
//! the local user for the CLI), what (the action, its outcome and details), and when.
//!
//! An entry is a structured log line with target `audit` (filter with
//! `RUST_LOG=audit=info`) and, with `audit_log` / `--audit-log FILE`, a JSON line appended to
//! that file and fsynced before the action answers. An entry about a person carries the keyed
//! hash of the id ([`PrivacyKey::hash`], the hash the suppression list
//! holds), never the id itself.

use super::auth::Caller;
use crate::io::privacy::{IdHash, PrivacyKey};
use serde_json::{json, Map, Value};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// Why the audit file could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One administrative action.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The acting identity.
    pub who: String,
    /// What was done: `PromoteModel`, `EraseUser`, `state repair`...
    pub action: &'static str,
    /// The person concerned, already hashed (never the id).
    pub subject: Option<IdHash>,
    /// `ok`, `refused`, `failed`.
    pub outcome: &'static str,
    /// Anything else worth keeping (versions, counts, the error text): never a user id.
    pub detail: Map<String, Value>,
}

impl Entry {
    pub fn new(who: String, action: &'static str) -> Entry {
        Entry {
            who,
            action,
            subject: None,
            outcome: "ok",
            detail: Map::new(),
        }
    }

    pub fn subject(mut self, h: IdHash) -> Entry {
        self.subject = Some(h);
        self
    }

    pub fn outcome(mut self, outcome: &'static str) -> Entry {
        self.outcome = outcome;
        self
    }

    pub fn detail(mut self, name: &str, value: impl Into<Value>) -> Entry {
        self.detail.insert(name.to_string(), value.into());
        self
    }
}

/// The identity a request acted as: the auth layer's [`Caller`], else `anonymous`.
pub fn who<T>(req: &tonic::Request<T>) -> String {
    req.extensions()
        .get::<Caller>()
        .map_or_else(|| "anonymous".to_string(), |c| c.0.to_string())
}

/// Where entries go.
pub struct Audit {
    file: Option<(PathBuf, Mutex<File>)>,
    key: Option<PrivacyKey>,
}

impl Audit {
    /// Log lines only, or log lines and the JSON-lines file `path` (created if missing, mode
    /// 0600, appended). `key` hashes the ids of [`Audit::hash`].
    pub fn open(path: Option<&Path>, key: Option<PrivacyKey>) -> Result<Audit, AuditError> {
        let file = match path {
            None => None,
            Some(p) => {
                let mut o = OpenOptions::new();
                o.append(true).create(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
                let f = o.open(p).map_err(|source| AuditError::Open {
                    path: p.to_path_buf(),
                    source,
                })?;
                Some((p.to_path_buf(), Mutex::new(f)))
            }
        };
        Ok(Audit { file, key })
    }

    /// The keyed hash of `id` (`None` without a key: the entry then names no person).
    pub fn hash(&self, id: &str) -> Option<IdHash> {
        self.key.as_ref().map(|k| k.hash(id))
    }

    /// Records `e`: the log line, then the file line (written and fsynced). A file that cannot
    /// be written is logged as an error; the action has happened either way.
    pub fn record(&self, e: Entry) {
        let subject = e.subject.map(|h| h.to_hex()).unwrap_or_default();
        let detail = Value::Object(e.detail.clone());
        tracing::info!(
            target: "audit",
            who = %e.who,
            action = e.action,
            subject = %subject,
            outcome = e.outcome,
            detail = %detail,
            "audit"
        );
        let Some((path, file)) = &self.file else {
            return;
        };
        let line = json!({
            "ts": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "who": e.who,
            "action": e.action,
            "subject": if subject.is_empty() { Value::Null } else { Value::String(subject) },
            "outcome": e.outcome,
            "detail": detail,
        });
        let mut f = file.lock().unwrap_or_else(PoisonError::into_inner);
        let written = writeln!(f, "{line}").and_then(|()| f.sync_data());
        if let Err(err) = written {
            tracing::error!(path = %path.display(), error = %err, "the audit log could not be written");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_lands_in_the_file_with_the_hash_and_never_the_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let key = PrivacyKey::parse(&"cd".repeat(32), "t").unwrap();
        let audit = Audit::open(Some(&path), Some(key.clone())).unwrap();
        let h = audit.hash("person-42").unwrap();
        audit.record(
            Entry::new("ops".into(), "EraseUser")
                .subject(h)
                .detail("existed", true),
        );
        audit.record(Entry::new("ops".into(), "RollbackModel").outcome("refused"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("person-42"), "{text}");
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["who"], "ops");
        assert_eq!(lines[0]["subject"], key.hash("person-42").to_hex());
        assert_eq!(lines[1]["outcome"], "refused");
        assert!(lines[1]["subject"].is_null());
    }
}
