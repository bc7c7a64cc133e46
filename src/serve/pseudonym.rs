//! Request-side pseudonymisation (`--pseudonymize-key-file`): the user ids of GetUserTier,
//! BatchGetUserTiers, ScoreUser and RecordEvents are replaced by their keyed hash
//! ([`crate::io::read::pseudonym`]) as the request arrives, before any lookup or write, so the
//! state, the logs' aggregates, the event topic and every answer (including ListAtRiskUsers)
//! carry pseudonyms only. An id that fails validation (empty, too long) is left as it is, for
//! the handler to refuse with its usual message.

use super::convert;
use crate::io::read::pseudonym::PseudonymKey;
use crate::pb as proto;
use std::sync::Arc;
use tonic::Request;

/// A request message whose user ids can be replaced.
pub trait HasUserIds {
    /// Calls `f` on each user id field.
    fn user_ids_mut(&mut self, f: &mut dyn FnMut(&mut String));
}

impl HasUserIds for proto::GetUserTierRequest {
    fn user_ids_mut(&mut self, f: &mut dyn FnMut(&mut String)) {
        f(&mut self.user_id);
    }
}

impl HasUserIds for proto::BatchGetUserTiersRequest {
    fn user_ids_mut(&mut self, f: &mut dyn FnMut(&mut String)) {
        self.user_ids.iter_mut().for_each(f);
    }
}

impl HasUserIds for proto::ScoreUserRequest {
    fn user_ids_mut(&mut self, f: &mut dyn FnMut(&mut String)) {
        f(&mut self.user_id);
        self.events.iter_mut().for_each(|e| f(&mut e.user_id));
    }
}

impl HasUserIds for proto::RecordEventsRequest {
    fn user_ids_mut(&mut self, f: &mut dyn FnMut(&mut String)) {
        self.events.iter_mut().for_each(|e| f(&mut e.user_id));
    }
}

impl HasUserIds for proto::EraseUserRequest {
    fn user_ids_mut(&mut self, f: &mut dyn FnMut(&mut String)) {
        f(&mut self.user_id);
    }
}

impl HasUserIds for proto::ExportUserRequest {
    fn user_ids_mut(&mut self, f: &mut dyn FnMut(&mut String)) {
        f(&mut self.user_id);
    }
}

impl HasUserIds for proto::SetProfilingObjectionRequest {
    fn user_ids_mut(&mut self, f: &mut dyn FnMut(&mut String)) {
        f(&mut self.user_id);
    }
}

/// The server's pseudonymisation: none (ids as sent) or a key.
#[derive(Debug, Clone, Default)]
pub struct Pseudonyms(pub Option<Arc<PseudonymKey>>);

impl Pseudonyms {
    /// `req` with each valid user id replaced by its pseudonym (unchanged without a key).
    pub fn apply<T: HasUserIds>(&self, mut req: Request<T>) -> Request<T> {
        if let Some(key) = &self.0 {
            req.get_mut().user_ids_mut(&mut |id: &mut String| {
                if convert::user_id("user_id", id).is_ok() {
                    *id = key.pseudonym(id);
                }
            });
        }
        req
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_are_replaced_and_empty_ones_left_for_validation() {
        let key = Arc::new(PseudonymKey::from_bytes(&[3u8; 32]).unwrap());
        let p = Pseudonyms(Some(key.clone()));
        let req = Request::new(proto::ScoreUserRequest {
            user_id: "alice".into(),
            events: vec![
                proto::Event {
                    user_id: "alice".into(),
                    ..Default::default()
                },
                proto::Event::default(),
            ],
            ..Default::default()
        });
        let out = p.apply(req).into_inner();
        assert_eq!(out.user_id, key.pseudonym("alice"));
        assert_eq!(out.events[0].user_id, out.user_id);
        assert_eq!(out.events[1].user_id, "");
        let plain = Pseudonyms(None).apply(Request::new(proto::GetUserTierRequest {
            user_id: "bob".into(),
        }));
        assert_eq!(plain.into_inner().user_id, "bob");
    }
}
