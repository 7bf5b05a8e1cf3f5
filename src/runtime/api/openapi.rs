//! The OpenAPI 3.0 document at `/api/v1/openapi.json`, generated from [`super::ROUTES`] (the
//! table the router is built from) plus the request body schemas below, so the document lists
//! exactly the routes that exist. No build step: it is plain `serde_json`.

use axum::Json;
use serde_json::{json, Map, Value};

use super::{Access, ROUTES};

/// Request body schemas by the names `ROUTES` uses.
fn schemas() -> Value {
    json!({
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {"type": "string"},
                "fields": {"type": "object", "additionalProperties": {"type": "string"},
                           "description": "422 only: each invalid field and why"},
                "errors": {"type": "array", "description": "rules errors: file, line, reason",
                           "items": {"type": "object", "properties": {
                               "file": {"type": "string"}, "line": {"type": "integer", "nullable": true},
                               "reason": {"type": "string"}}}}
            }
        },
        "AgentStateChange": {
            "type": "object",
            "required": ["state"],
            "additionalProperties": false,
            "properties": {
                "state": {"type": "string", "enum": ["ready", "not_ready"]},
                "reason": {"type": "string", "maxLength": 64}
            }
        },
        "CaseChange": {
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "status": {"type": "string", "enum": ["open", "closed"]},
                "department": {"type": "string", "description": "a department of categories.toml"}
            }
        },
        "RulesSet": {
            "type": "object",
            "required": ["queues_toml"],
            "additionalProperties": false,
            "properties": {
                "queues_toml": {"type": "string", "description": "the whole queues.toml"},
                "agents_toml": {"type": "string", "description": "validate only: checked against the proposed queues (apply refuses it: agents change at restart)"}
            }
        },
        "AgentSkillsChange": {
            "type": "object",
            "required": ["skills"],
            "additionalProperties": false,
            "properties": {
                "skills": {"type": "object", "description": "skill -> proficiency 1..5; skills must be declared in queues.toml",
                           "additionalProperties": {"type": "integer", "minimum": 1, "maximum": 5}}
            }
        },
        "SimulationRequest": {
            "type": "object",
            "required": ["queues_toml", "from", "to"],
            "additionalProperties": false,
            "properties": {
                "queues_toml": {"type": "string", "description": "the proposed queues.toml"},
                "agents_toml": {"type": "string", "description": "the proposed agents.toml (default: the one in use)"},
                "from": {"type": "string", "description": "start, UTC: 2026-11-27T08:00 or unix ms"},
                "to": {"type": "string", "description": "end, exclusive, at most 31 days after from"},
                "seed": {"type": "integer", "description": "for patience the log cannot show (default 311)"}
            }
        },
        "RulesRollback": {
            "type": "object",
            "required": ["version"],
            "additionalProperties": false,
            "properties": {"version": {"type": "integer"}}
        },
        "Open311Request": {
            "type": "object",
            "required": ["api_key", "service_code"],
            "properties": {
                "api_key": {"type": "string"},
                "service_code": {"type": "string"},
                "lat": {"type": "number"},
                "long": {"type": "number"},
                "address_string": {"type": "string"},
                "address_id": {"type": "string"},
                "description": {"type": "string", "maxLength": 4000}
            }
        }
    })
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for spec in ROUTES {
        let mut parameters: Vec<Value> = spec
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        parameters.extend(spec.query.iter().map(|(name, description)| {
            json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": "string"}})
        }));
        let content = match spec.produces {
            "csv" => json!({"text/csv": {"schema": {"type": "string"}}}),
            "text" => json!({"text/plain": {"schema": {"type": "string"}}}),
            "sse" => json!({"text/event-stream": {"schema": {"type": "string"}}}),
            "xml" => json!({"text/xml": {"schema": {"type": "string"}}}),
            _ => json!({"application/json": {"schema": {}}}),
        };
        let ok = match spec.method {
            "POST" if spec.path.starts_with("/open311") => "201",
            "POST" if spec.path.ends_with("/state") => "202",
            _ => "200",
        };
        let mut responses = Map::new();
        responses.insert(
            ok.into(),
            json!({"description": "success", "content": content}),
        );
        let error = json!({"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
        let mut error_response = |code: &str, description: &str| {
            let mut e = error.clone();
            e["description"] = json!(description);
            responses.insert(code.into(), e);
        };
        let (security, role) = match spec.access {
            Access::Role(role) => (json!([{"bearer": []}]), Some(role.as_str())),
            Access::Metrics => (json!([{"bearer": []}, {}]), Some("read_only")),
            Access::Public | Access::Open311Key => (json!([]), None),
        };
        if role.is_some() {
            error_response("401", "missing, malformed or unknown token");
            error_response("403", "the token's role is too low");
        }
        if spec.body.is_some() && !spec.path.starts_with("/open311") {
            error_response("400", "malformed JSON");
            error_response("413", "body too large");
            error_response("415", "not application/json");
            error_response("422", "invalid fields, named in `fields`");
        }
        let mut operation = json!({
            "summary": spec.summary,
            "operationId": format!("{} {}", spec.method, spec.path),
            "parameters": parameters,
            "responses": responses,
            "security": security,
        });
        if let Some(role) = role {
            operation["x-required-role"] = json!(role);
        }
        if let Some(body) = spec.body {
            let media = if spec.path.starts_with("/open311") {
                "application/x-www-form-urlencoded"
            } else {
                "application/json"
            };
            operation["requestBody"] = json!({
                "required": true,
                "content": {media: {"schema": {"$ref": format!("#/components/schemas/{body}")}}}
            });
        }
        let entry = paths
            .entry(spec.path.to_string())
            .or_insert_with(|| json!({}));
        entry[spec.method.to_ascii_lowercase()] = operation;
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "civicline",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "311 IVR and queue routing: agents, queues, live state, cases, routing rules, metrics, exports; Prometheus; Open311 GeoReport v2. Tokens: `civicline api-token NAME ROLE`."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas(),
        }
    })
}

/// `GET /api/v1/openapi.json`
pub async fn serve() -> Json<Value> {
    Json(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_body_schema_exists_and_every_route_is_documented() {
        let doc = document();
        for spec in ROUTES {
            let op = &doc["paths"][spec.path][spec.method.to_ascii_lowercase()];
            assert!(op.is_object(), "{} {}", spec.method, spec.path);
            if let Some(body) = spec.body {
                assert!(doc["components"]["schemas"][body].is_object(), "{body}");
            }
        }
    }
}
