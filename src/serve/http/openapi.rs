//! The OpenAPI 3.0 description of the HTTP API, made from [`super::ROUTES`] and the proto's
//! descriptors (so it cannot drift from the router or the messages): served at
//! `/openapi.json`, checked route by route against the running router in
//! `tests/it/http_api.rs`.

use super::json::{Codec, JsonError};
use super::{Input, Output, Verb, ROUTES};
use prost_reflect::{Kind, MessageDescriptor};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The path parameters of an axum path (`/v1/users/{user_id}` → `user_id`).
pub fn path_params(path: &str) -> Vec<&str> {
    path.split('{')
        .skip(1)
        .filter_map(|s| s.split_once('}').map(|(p, _)| p))
        .collect()
}

/// The operation id of a route (unique: the RPC, with a suffix for the CSV and count routes).
pub fn operation_id(route: &super::Route) -> String {
    match route.output {
        Output::AtRiskCsv => format!("{}Csv", route.rpc),
        Output::AtRiskCount => format!("{}Count", route.rpc),
        Output::Report => "GetModelReport".to_string(),
        _ => route.rpc.to_string(),
    }
}

/// The whole document.
pub(crate) fn document(codec: &Codec) -> Result<Value, JsonError> {
    let mut schemas = BTreeMap::new();
    let mut paths = Map::new();
    for route in ROUTES {
        let req = codec.message(route.request)?;
        let params = path_params(route.path);
        let mut parameters: Vec<Value> = params
            .iter()
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut op = json!({
            "operationId": operation_id(route),
            "summary": route.summary,
            "x-grpc-method": super::grpc_path(route.rpc),
            "security": [{"bearer": []}],
        });
        match route.input {
            Input::Query => {
                for f in req.fields().filter(|f| !params.contains(&f.name())) {
                    parameters.push(json!({
                        "name": f.json_name(),
                        "in": "query",
                        "required": false,
                        "schema": field_schema(&f, &mut schemas),
                    }));
                }
            }
            Input::Body => {
                op["requestBody"] = json!({"required": true, "content": {"application/json":
                    {"schema": message_ref(&req, &mut schemas)}}});
            }
        }
        op["parameters"] = Value::Array(parameters);
        op["responses"] = json!({
            "200": ok_response(codec, route.output, &mut schemas)?,
            "default": {"description": "An error: the gRPC status, with the HTTP status of its code", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        });
        let entry = paths
            .entry(route.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[match route.verb {
            Verb::Get => "get",
            Verb::Post => "post",
        }] = op;
    }
    let mut components: Map<String, Value> = schemas.into_iter().collect();
    components.insert("Error".into(), json!({
        "type": "object",
        "properties": {
            "code": {"type": "integer", "description": "The gRPC status code"},
            "status": {"type": "string", "description": "Its name, e.g. NOT_FOUND"},
            "message": {"type": "string"},
            "field": {"type": "string", "description": "The request field the error is about (proto names, e.g. events[3].ts)"},
        },
        "required": ["code", "status", "message"],
    }));
    Ok(json!({
        "openapi": "3.0.3",
        "info": {
            "title": "tiering HTTP/JSON API",
            "version": "v1",
            "description": "The gRPC service tiering.v1.Tiering over HTTP with the proto's canonical JSON mapping. Errors: 400 INVALID_ARGUMENT / FAILED_PRECONDITION, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 NOT_FOUND, 408 DEADLINE_EXCEEDED (the request body did not arrive within request_body_timeout_ms), 409 ABORTED, 413 RESOURCE_EXHAUSTED (a body over max_message_bytes), 429 RESOURCE_EXHAUSTED (more ids than max_batch_size, or every max_concurrent_requests slot busy: Retry-After), 503 UNAVAILABLE, 504 DEADLINE_EXCEEDED (the deadline of a grpc-timeout header passed).",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }))
}

fn ok_response(
    codec: &Codec,
    output: Output,
    schemas: &mut BTreeMap<String, Value>,
) -> Result<Value, JsonError> {
    Ok(match output {
        Output::Message(name) => {
            let schema = message_ref(&codec.message(name)?, schemas);
            json!({"description": name, "content": {"application/json": {"schema": schema}}})
        }
        Output::AtRiskPage => {
            let user = message_ref(&codec.message("UserTier")?, schemas);
            json!({"description": "One page", "content": {"application/json": {"schema": {
                "type": "object",
                "properties": {"users": {"type": "array", "items": user}, "nextPageToken": {"type": "string"}},
            }}}})
        }
        Output::AtRiskCsv => {
            json!({"description": "CSV, streamed", "content": {"text/csv": {"schema": {"type": "string"}}}})
        }
        Output::AtRiskCount => {
            json!({"description": "The count", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"matched": {"type": "string", "format": "uint64"}},
            }}}})
        }
        Output::Report => {
            json!({"description": "The bundle's report.html, under a Content-Security-Policy that allows no script, no network and sandboxes it", "content": {"text/html": {"schema": {"type": "string"}}}})
        }
    })
}

/// `{"$ref": ...}` to the message's schema, adding it (and the messages it holds) to `schemas`.
fn message_ref(desc: &MessageDescriptor, schemas: &mut BTreeMap<String, Value>) -> Value {
    let name = desc.name().to_string();
    if !schemas.contains_key(&name) {
        schemas.insert(name.clone(), Value::Null);
        let mut props = Map::new();
        for f in desc.fields() {
            props.insert(f.json_name().to_string(), field_schema(&f, schemas));
        }
        schemas.insert(name.clone(), json!({"type": "object", "properties": props}));
    }
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn field_schema(
    f: &prost_reflect::FieldDescriptor,
    schemas: &mut BTreeMap<String, Value>,
) -> Value {
    let one = match f.kind() {
        Kind::Double | Kind::Float => json!({"type": "number"}),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            json!({"type": "integer", "format": "int32"})
        }
        Kind::Uint32 | Kind::Fixed32 => json!({"type": "integer", "format": "int32", "minimum": 0}),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({"type": "string", "format": "int64"}),
        Kind::Uint64 | Kind::Fixed64 => json!({"type": "string", "format": "uint64"}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::String => json!({"type": "string"}),
        Kind::Bytes => json!({"type": "string", "format": "byte"}),
        Kind::Enum(e) => {
            json!({"type": "string", "enum": e.values().map(|v| v.name().to_string()).collect::<Vec<_>>()})
        }
        Kind::Message(m) if m.full_name() == "google.protobuf.Timestamp" => {
            json!({"type": "string", "format": "date-time"})
        }
        Kind::Message(m) => message_ref(&m, schemas),
    };
    if f.is_list() {
        json!({"type": "array", "items": one})
    } else {
        one
    }
}
