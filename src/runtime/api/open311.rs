//! Open311 GeoReport v2 (http://wiki.open311.org/GeoReport_v2), in both of its formats: the
//! path's extension (`.json`, `.xml`) chooses, and errors come in the same format. Services are
//! the case categories of
//! categories.toml (service_code = category id, group = department, no metadata); service
//! requests are cases, phone-created or POSTed here, with the spec's field names and statuses
//! open and closed. Reading is public, as the spec intends; creating needs an `api_key` from
//! `[open311] api_keys` (stored hashed). Errors are `[{"code": n, "description": "..."}]`.
//! POSTed contact fields (email, names, phone) are not stored: the case needs none of them.

use std::collections::HashMap;

use axum::extract::{Form, Path, State};
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::auth::{constant_time_eq, parse_hash, sha256};
use super::cases::{comma_list, params};
use super::export::utc;
use super::ApiState;
use crate::config::Open311Key;
use crate::runtime::store::{CaseFilter, CaseRecord, NewCase};
use crate::runtime::unix_ms_now;

const DAY_MS: i64 = 86_400_000;
const MAX_REQUESTS: i64 = 1000;
const MAX_DESCRIPTION: usize = 4000;

/// One service (a case category).
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub code: String,
    pub name: String,
    pub name_es: String,
    pub department: String,
    pub keywords: Vec<String>,
}

/// Services and keys, loaded at start.
#[derive(Debug, Default)]
pub struct Open311 {
    pub services: Vec<Service>,
    keys: Vec<([u8; 32], String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum Open311Error {
    #[error("[open311] api key {0:?}: key_sha256 must be 64 hex digits (civicline api-token prints one)")]
    BadKeyHash(String),
    #[error("{path}: {reason}")]
    Categories { path: String, reason: String },
}

#[derive(serde::Deserialize)]
struct CategoriesFile {
    #[serde(default)]
    category: Vec<CategoryRow>,
}

/// The keys of categories.toml this needs (the speech stage validates the whole file).
#[derive(serde::Deserialize)]
struct CategoryRow {
    id: String,
    name_en: String,
    #[serde(default)]
    name_es: String,
    department: String,
    #[serde(default)]
    keywords: Vec<String>,
}

impl Open311 {
    /// `categories`: the categories file ("" for none: no services).
    pub fn load(
        categories: &std::path::Path,
        keys: &[Open311Key],
    ) -> Result<Open311, Open311Error> {
        let keys = keys
            .iter()
            .map(|k| {
                parse_hash(&k.key_sha256)
                    .map(|h| (h, k.name.clone()))
                    .ok_or_else(|| Open311Error::BadKeyHash(k.name.clone()))
            })
            .collect::<Result<_, _>>()?;
        let mut services = Vec::new();
        if !categories.as_os_str().is_empty() {
            let fail = |reason: String| Open311Error::Categories {
                path: categories.display().to_string(),
                reason,
            };
            let text = std::fs::read_to_string(categories).map_err(|e| fail(e.to_string()))?;
            let file: CategoriesFile = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
            services = file
                .category
                .into_iter()
                .map(|c| Service {
                    code: c.id,
                    name: c.name_en,
                    name_es: c.name_es,
                    department: c.department,
                    keywords: c.keywords.into_iter().take(8).collect(),
                })
                .collect();
        }
        Ok(Open311 { services, keys })
    }

    pub fn service(&self, code: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.code == code)
    }

    /// Departments named in the categories, each once, in file order.
    pub fn departments(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in &self.services {
            if !out.contains(&s.department) {
                out.push(s.department.clone());
            }
        }
        out
    }

    /// The key's holder, compared in constant time against every key.
    fn key_holder(&self, key: &str) -> Option<String> {
        let hash = sha256(key.as_bytes());
        let mut found = None;
        for (expected, name) in &self.keys {
            if constant_time_eq(&hash, expected) && found.is_none() {
                found = Some(name.clone());
            }
        }
        found
    }
}

/// GeoReport's two formats, named by the path's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    /// `name.json` or `name.xml`: the name and the format; None for anything else.
    pub fn split(last_segment: &str) -> Option<(&str, Format)> {
        if let Some(name) = last_segment.strip_suffix(".json") {
            Some((name, Format::Json))
        } else {
            Some((last_segment.strip_suffix(".xml")?, Format::Xml))
        }
    }

    /// The format of a fixed route (`services.xml`, `requests.json`, ...).
    fn of(uri: &Uri) -> Format {
        match uri.path().ends_with(".xml") {
            true => Format::Xml,
            false => Format::Json,
        }
    }
}

/// A GeoReport answer: a list of records, as a JSON array of objects or as the spec's XML
/// (`<root><item><field>value</field>...</item>...</root>`; a null field is an empty element).
fn answer(
    format: Format,
    status: StatusCode,
    root: &str,
    item: &str,
    records: &[Value],
) -> Response {
    match format {
        Format::Json => (status, Json(records)).into_response(),
        Format::Xml => match xml_document(root, item, records) {
            Ok(text) => (
                status,
                [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
                text,
            )
                .into_response(),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("writing XML: {e}"),
            )
                .into_response(),
        },
    }
}

fn xml_document(root: &str, item: &str, records: &[Value]) -> std::io::Result<String> {
    use quick_xml::events::{BytesDecl, BytesText, Event};
    let mut writer = quick_xml::Writer::new(Vec::new());
    writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("utf-8"), None)))?;
    writer.create_element(root).write_inner_content(|w| {
        for record in records {
            let Some(fields) = record.as_object() else {
                continue;
            };
            w.create_element(item).write_inner_content(|w| {
                for (name, value) in fields {
                    let text = match value {
                        Value::Null => {
                            w.create_element(name.as_str()).write_empty()?;
                            continue;
                        }
                        Value::String(text) => text.clone(),
                        other => other.to_string(),
                    };
                    w.create_element(name.as_str())
                        .write_text_content(BytesText::new(&text))?;
                }
                Ok(())
            })?;
        }
        Ok(())
    })?;
    Ok(String::from_utf8_lossy(&writer.into_inner()).into_owned())
}

/// A GeoReport error answer, in the format asked for.
pub fn error(format: Format, status: StatusCode, description: impl Into<String>) -> Response {
    let record = json!({ "code": status.as_u16(), "description": description.into() });
    answer(format, status, "errors", "error", &[record])
}

/// `GET /open311/v2/services.json` (or `.xml`)
pub async fn services(State(state): State<ApiState>, uri: Uri) -> Response {
    let list: Vec<Value> = state
        .open311
        .services
        .iter()
        .map(|s| {
            json!({
                "service_code": s.code,
                "service_name": s.name,
                "description": if s.name_es.is_empty() {
                    format!("{} ({})", s.name, s.department)
                } else {
                    format!("{} / {} ({})", s.name, s.name_es, s.department)
                },
                "metadata": false,
                "type": "realtime",
                "keywords": s.keywords.join(","),
                "group": s.department,
            })
        })
        .collect();
    answer(
        Format::of(&uri),
        StatusCode::OK,
        "services",
        "service",
        &list,
    )
}

/// `GET /open311/v2/services/{code}.json` (or `.xml`): no service has metadata, so there is
/// no definition to give (the spec asks for one only when metadata is true).
pub async fn service_definition(
    State(state): State<ApiState>,
    Path(code): Path<String>,
) -> Response {
    let Some((code, format)) = Format::split(&code) else {
        return error(
            Format::Json,
            StatusCode::BAD_REQUEST,
            "ask for {service_code}.json or {service_code}.xml",
        );
    };
    match state.open311.service(code) {
        Some(_) => error(
            format,
            StatusCode::NOT_FOUND,
            format!("service {code} has no metadata, so no definition"),
        ),
        None => error(format, StatusCode::NOT_FOUND, format!("no service {code}")),
    }
}

/// A case with the spec's field names.
fn request_json(state: &ApiState, case: &CaseRecord) -> Value {
    let service = case
        .category
        .as_deref()
        .and_then(|c| state.open311.service(c));
    json!({
        "service_request_id": case.case_number,
        "status": case.status,
        "status_notes": null,
        "service_name": service.map(|s| s.name.clone()),
        "service_code": case.category,
        "description": case.description,
        "agency_responsible": case.department,
        "service_notice": null,
        "requested_datetime": rfc3339(case.created_at_ms),
        "updated_datetime": rfc3339(case.updated_at_ms),
        "expected_datetime": null,
        "address": case.address,
        "address_id": null,
        "zipcode": null,
        "lat": case.lat,
        "long": case.lon,
        "media_url": null,
    })
}

fn rfc3339(ms: i64) -> String {
    // Whole seconds, as the spec's examples.
    format!("{}Z", &utc(ms)[..19])
}

/// RFC 3339 / W3C date-time: `2010-01-01T00:00:00Z`, with optional fraction and an offset
/// (`+01:00`), or a bare date (midnight UTC).
pub fn parse_datetime(text: &str) -> Option<i64> {
    let text = text.trim();
    if text.len() == 10 {
        return super::super::report::parse_time(text);
    }
    let (body, offset_min) = if let Some(body) = text.strip_suffix(['Z', 'z']) {
        (body, 0)
    } else if text.len() > 6 && matches!(&text[text.len() - 6..text.len() - 5], "+" | "-") {
        let (body, offset) = text.split_at(text.len() - 6);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let hours: i64 = offset.get(1..3)?.parse().ok()?;
        let minutes: i64 = offset.get(4..6)?.parse().ok()?;
        if offset.get(3..4)? != ":" {
            return None;
        }
        (body, sign * (hours * 60 + minutes))
    } else {
        return None;
    };
    let (seconds_part, fraction_ms) = match body.split_once('.') {
        Some((s, frac)) => {
            if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let ms: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
            (s, ms)
        }
        None => (body, 0),
    };
    // parse_time takes `YYYY-MM-DDTHH:MM:SS`; insist on that shape here.
    if seconds_part.len() != 19 || seconds_part.as_bytes()[10] != b'T' {
        return None;
    }
    let local = super::super::report::parse_time(seconds_part)?;
    Some(local + fraction_ms - offset_min * 60_000)
}

/// `GET /open311/v2/requests.json` (or `.xml`)
pub async fn requests(State(state): State<ApiState>, uri: Uri) -> Response {
    let format = Format::of(&uri);
    let error = |status, description: String| error(format, status, description);
    let params = match params(&uri) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.message),
    };
    let now = unix_ms_now();
    let mut filter = CaseFilter {
        limit: MAX_REQUESTS,
        newest_first: true,
        ..CaseFilter::default()
    };
    let ids = comma_list(params.get("service_request_id"));
    if !ids.is_empty() {
        // The spec: service_request_id overrides every other parameter.
        filter.numbers = ids;
    } else {
        filter.categories = comma_list(params.get("service_code"));
        filter.statuses = comma_list(params.get("status"));
        if let Some(bad) = filter
            .statuses
            .iter()
            .find(|s| *s != "open" && *s != "closed")
        {
            return error(
                StatusCode::BAD_REQUEST,
                format!("status is open or closed (comma list), not {bad:?}"),
            );
        }
        // Errors as descriptions; the GeoReport answer is made once below.
        let date = |name: &str| match params.get(name) {
            None => Ok(None),
            Some(text) => parse_datetime(text).map(Some).ok_or(format!(
                "{name} must be a W3C date-time such as 2010-01-01T00:00:00Z"
            )),
        };
        let (start, end) = match (date("start_date"), date("end_date")) {
            (Ok(s), Ok(e)) => (s, e),
            (Err(r), _) | (_, Err(r)) => return error(StatusCode::BAD_REQUEST, r),
        };
        let (start, end) = match (start, end) {
            (Some(s), Some(e)) => (s, e),
            (Some(s), None) => (s, (s + 90 * DAY_MS).min(now.max(s))),
            (None, Some(e)) => (e - 90 * DAY_MS, e),
            (None, None) => (now - 90 * DAY_MS, now),
        };
        if end < start {
            return error(
                StatusCode::BAD_REQUEST,
                "end_date is before start_date".into(),
            );
        }
        if end - start > 90 * DAY_MS {
            return error(
                StatusCode::BAD_REQUEST,
                "start_date to end_date may not span more than 90 days".into(),
            );
        }
        filter.created_from_ms = Some(start);
        // end_date is inclusive in the spec.
        filter.created_before_ms = Some(end + 1);
    }
    match state.store.list_cases(&filter).await {
        Ok((_, cases)) => {
            let records: Vec<Value> = cases.iter().map(|c| request_json(&state, c)).collect();
            answer(
                format,
                StatusCode::OK,
                "service_requests",
                "request",
                &records,
            )
        }
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the database is unavailable: {e}"),
        ),
    }
}

/// `GET /open311/v2/requests/{id}.json` (or `.xml`)
pub async fn request(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    let Some((number, format)) = Format::split(&id) else {
        return error(
            Format::Json,
            StatusCode::BAD_REQUEST,
            "ask for {id}.json or {id}.xml",
        );
    };
    match state.store.find_case(number).await {
        Ok(Some(case)) => answer(
            format,
            StatusCode::OK,
            "service_requests",
            "request",
            &[request_json(&state, &case)],
        ),
        Ok(None) => error(
            format,
            StatusCode::NOT_FOUND,
            format!("no service request {number}"),
        ),
        Err(e) => error(
            format,
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the database is unavailable: {e}"),
        ),
    }
}

/// `POST /open311/v2/requests.json` (or `.xml`; form-encoded either way).
pub async fn create(
    State(state): State<ApiState>,
    uri: Uri,
    form: Result<Form<HashMap<String, String>>, axum::extract::rejection::FormRejection>,
) -> Response {
    let format = Format::of(&uri);
    let error = |status, description: String| error(format, status, description);
    let form = match form {
        Ok(Form(form)) => form,
        Err(rejection) => {
            let status = rejection.status();
            let status = if status == StatusCode::PAYLOAD_TOO_LARGE
                || status == StatusCode::UNSUPPORTED_MEDIA_TYPE
            {
                status
            } else {
                StatusCode::BAD_REQUEST
            };
            return error(
                status,
                format!(
                    "send the request as application/x-www-form-urlencoded: {}",
                    rejection.body_text()
                ),
            );
        }
    };
    let Some(key) = form.get("api_key").filter(|k| !k.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "api_key is required".into());
    };
    let Some(holder) = state.open311.key_holder(key) else {
        return error(StatusCode::FORBIDDEN, "invalid api_key".into());
    };
    let Some(code) = form.get("service_code").filter(|c| !c.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "service_code is required".into());
    };
    let Some(service) = state.open311.service(code) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("service_code {code:?} is not a service (GET services.json)"),
        );
    };
    let number =
        |name: &str, range: std::ops::RangeInclusive<f64>| -> Result<Option<f64>, String> {
            match form.get(name).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(text) => match text.trim().parse::<f64>() {
                    Ok(v) if range.contains(&v) => Ok(Some(v)),
                    _ => Err(format!("{name} must be a number in {range:?}")),
                },
            }
        };
    let (lat, lon) = match (number("lat", -90.0..=90.0), number("long", -180.0..=180.0)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(r), _) | (_, Err(r)) => return error(StatusCode::BAD_REQUEST, r),
    };
    if lat.is_some() != lon.is_some() {
        return error(
            StatusCode::BAD_REQUEST,
            "give both lat and long, or neither".into(),
        );
    }
    let address = form
        .get("address_string")
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty());
    if lat.is_none() && address.is_none() && form.get("address_id").is_none_or(|a| a.is_empty()) {
        return error(
            StatusCode::BAD_REQUEST,
            "a location is required: lat and long, address_string or address_id".into(),
        );
    }
    if address.as_ref().is_some_and(|a| a.len() > 500) {
        return error(
            StatusCode::BAD_REQUEST,
            "address_string is at most 500 characters".into(),
        );
    }
    let description = form.get("description").map(|d| d.trim().to_string());
    if description
        .as_ref()
        .is_some_and(|d| d.len() > MAX_DESCRIPTION)
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!("description is at most {MAX_DESCRIPTION} characters"),
        );
    }
    let case = NewCase {
        category: service.code.clone(),
        department: Some(service.department.clone()),
        address,
        description: description.filter(|d| !d.is_empty()),
        lat,
        lon,
    };
    match state
        .store
        .create_case_from(&case, &format!("open311:{holder}"), unix_ms_now())
        .await
    {
        Ok(case) => answer(
            format,
            StatusCode::CREATED,
            "service_requests",
            "request",
            &[json!({
                "service_request_id": case.case_number,
                "service_notice": format!("Case {} is with {}.", case.case_number, service.department),
                "account_id": null,
            })],
        ),
        Err(e) => {
            tracing::error!(error = %e, "storing an Open311 request failed");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the request was not stored, try again: {e}"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w3c_datetimes_parse() {
        assert_eq!(
            parse_datetime("2010-01-01T00:00:00Z"),
            Some(1_262_304_000_000)
        );
        assert_eq!(
            parse_datetime("2010-01-01T01:00:00+01:00"),
            Some(1_262_304_000_000)
        );
        assert_eq!(
            parse_datetime("2009-12-31T16:00:00-08:00"),
            Some(1_262_304_000_000)
        );
        assert_eq!(
            parse_datetime("2010-01-01T00:00:00.25Z"),
            Some(1_262_304_000_250)
        );
        assert_eq!(parse_datetime("2010-01-01"), Some(1_262_304_000_000));
        assert_eq!(parse_datetime("2010-01-01T00:00:00"), None);
        assert_eq!(parse_datetime("'; DROP TABLE cases; --"), None);
    }
}
