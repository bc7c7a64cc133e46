//! The proto's canonical JSON mapping (field names in lowerCamelCase, 64-bit integers as
//! strings, timestamps in RFC 3339), done at run time from the server's own descriptor set with
//! `prost-reflect`: a message goes proto bytes → `DynamicMessage` → JSON and back. Nothing here
//! names a field, so fields added to the proto appear in the HTTP API by themselves.
//!
//! Request JSON that does not fit its message is INVALID_ARGUMENT naming the field's path in
//! proto names (`events[0].ts`), like the handlers' own validation.

use crate::serve::error::RequestError;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, Kind, MessageDescriptor, SerializeOptions,
};
use serde_json::{Map, Value};

/// The descriptors of `tiering.v1`.
pub(crate) struct Codec {
    pool: DescriptorPool,
}

/// Why a JSON answer could not be made (a message the descriptor set does not hold, bytes
/// that do not decode as it): a defect of the server, reported as INTERNAL.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("the descriptor set: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    #[error("no message tiering.v1.{0} in the descriptor set")]
    UnknownMessage(String),
    #[error("decoding a {message} answer: {source}")]
    Decode {
        message: String,
        source: prost::DecodeError,
    },
    #[error("encoding a {message} answer as JSON: {source}")]
    Encode {
        message: String,
        source: serde_json::Error,
    },
}

impl Codec {
    pub(crate) fn new() -> Result<Codec, JsonError> {
        Ok(Codec {
            pool: DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET)?,
        })
    }

    /// The descriptor of `tiering.v1.{name}`.
    pub(crate) fn message(&self, name: &str) -> Result<MessageDescriptor, JsonError> {
        self.pool
            .get_message_by_name(&format!("tiering.v1.{name}"))
            .ok_or_else(|| JsonError::UnknownMessage(name.to_string()))
    }

    /// The encoded message `name` as canonical JSON, default values included (so a client
    /// sees `"applied": false` rather than no key).
    pub(crate) fn to_json(&self, name: &str, wire: &[u8]) -> Result<Value, JsonError> {
        let desc = self.message(name)?;
        let msg = DynamicMessage::decode(desc, wire).map_err(|source| JsonError::Decode {
            message: name.to_string(),
            source,
        })?;
        let opts = SerializeOptions::new().skip_default_fields(false);
        msg.serialize_with_options(serde_json::value::Serializer, &opts)
            .map_err(|source| JsonError::Encode {
                message: name.to_string(),
                source,
            })
    }

    /// A typed message from its JSON; unknown fields are refused.
    pub(crate) fn parse_json<M: Message + Default>(
        &self,
        name: &str,
        value: Value,
    ) -> Result<M, RequestError> {
        let desc = self
            .message(name)
            .map_err(|e| RequestError::invalid("", e.to_string()))?;
        let mut track = serde_path_to_error::Track::new();
        let de = serde_path_to_error::Deserializer::new(value, &mut track);
        let opts = DeserializeOptions::new().deny_unknown_fields(true);
        let msg = DynamicMessage::deserialize_with_options(desc, de, &opts).map_err(|e| {
            let path = proto_path(&track.path().to_string());
            RequestError::invalid(
                if path == "." { String::new() } else { path },
                e.to_string(),
            )
        })?;
        M::decode(msg.encode_to_vec().as_slice())
            .map_err(|e| RequestError::invalid("", format!("not a {name}: {e}")))
    }
}

/// A JSON path (`events[0].userId`) in proto field names (`events[0].user_id`): canonical JSON
/// names are the proto names in lowerCamelCase.
fn proto_path(json: &str) -> String {
    let mut out = String::with_capacity(json.len() + 4);
    for c in json.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Adds URL query parameters (`?tierIds=a&tierIds=b&minChurnProbability=0.5`; proto names are
/// accepted too) to a request's JSON object: repeated fields collect every value, booleans are
/// `true`/`false`, other scalars go as strings (canonical JSON accepts numbers as strings).
/// An unknown parameter is INVALID_ARGUMENT naming it.
pub(crate) fn add_query(
    desc: &MessageDescriptor,
    query: &str,
    into: &mut Map<String, Value>,
) -> Result<(), RequestError> {
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let field = desc
            .get_field_by_json_name(&k)
            .or_else(|| desc.get_field_by_name(&k))
            .ok_or_else(|| RequestError::invalid(k.to_string(), "unknown query parameter"))?;
        let value = match field.kind() {
            Kind::Bool => match v.as_ref() {
                "true" | "1" => Value::Bool(true),
                "false" | "0" => Value::Bool(false),
                _ => {
                    return Err(RequestError::invalid(
                        field.name(),
                        format!("{} is not true or false", crate::serve::error::quote(&v)),
                    ))
                }
            },
            _ => Value::String(v.into_owned()),
        };
        let key = field.json_name().to_string();
        if field.is_list() {
            if let Value::Array(a) = into.entry(key).or_insert_with(|| Value::Array(Vec::new())) {
                a.push(value);
            }
        } else if into.insert(key, value).is_some() {
            // Which of two values was meant is not ours to guess (a threshold given as 0.9,
            // then as 0, would export every user).
            return Err(RequestError::invalid(
                field.name(),
                "given more than once (only repeated fields take several values)",
            ));
        }
    }
    Ok(())
}

/// Sets a path parameter (`user_id`) on a request's JSON object, by its proto field name.
pub(crate) fn add_param(
    desc: &MessageDescriptor,
    name: &str,
    value: &str,
    into: &mut Map<String, Value>,
) {
    let key = desc
        .get_field_by_name(name)
        .map(|f| f.json_name().to_string())
        .unwrap_or_else(|| name.to_string());
    into.insert(key, Value::String(value.to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb as proto;

    #[test]
    fn a_user_tier_reads_in_camel_case_with_timestamps_in_rfc3339() {
        let codec = Codec::new().unwrap();
        let u = proto::UserTier {
            user_id: "u1".into(),
            churn_probability: 0.25,
            as_of: Some(prost_types::Timestamp {
                seconds: 1_717_200_000,
                nanos: 0,
            }),
            ..Default::default()
        };
        let v = codec.to_json("UserTier", &u.encode_to_vec()).unwrap();
        assert_eq!(v["userId"], "u1");
        assert_eq!(v["churnProbability"], 0.25);
        assert_eq!(v["asOf"], "2024-06-01T00:00:00Z");
        assert_eq!(v["tierId"], "", "defaults are written");
    }

    #[test]
    fn a_bad_timestamp_names_its_field_in_proto_names() {
        let codec = Codec::new().unwrap();
        let body = serde_json::json!({"events": [{"userId": "u", "ts": "yesterday"}]});
        let e = codec
            .parse_json::<proto::RecordEventsRequest>("RecordEventsRequest", body)
            .unwrap_err();
        match e {
            RequestError::InvalidArgument { field, .. } => assert_eq!(field, "events[0].ts"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn query_parameters_collect_repeated_fields() {
        let codec = Codec::new().unwrap();
        let desc = codec.message("ListAtRiskUsersRequest").unwrap();
        let mut m = Map::new();
        add_query(
            &desc,
            "tierIds=a&tier_ids=b&minChurnProbability=0.5&limit=3",
            &mut m,
        )
        .unwrap();
        let req: proto::ListAtRiskUsersRequest = codec
            .parse_json("ListAtRiskUsersRequest", Value::Object(m))
            .unwrap();
        assert_eq!(req.tier_ids, vec!["a", "b"]);
        assert_eq!(req.min_churn_probability, 0.5);
        assert_eq!(req.limit, 3);
        assert!(add_query(&desc, "colour=red", &mut Map::new()).is_err());
    }
}
