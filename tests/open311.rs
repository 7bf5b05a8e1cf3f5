//! Open311 GeoReport v2 over 127.0.0.1: services from categories.toml, requests created with
//! an api_key (and refused without one, in the spec's error format), phone-created cases with
//! the spec's field names, the filters, the XML format beside JSON, and the PyPI client
//! `georeport` listing services and requests from the running server
//! (scripts/install-georeport puts it in a venv).

mod common;

use std::path::{Path, PathBuf};

use civicline::config::{Config, Open311Key};
use civicline::runtime::api::auth::{hex, sha256};
use serde_json::Value;

const KEY: &str = "open311-test-key";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn configure(config: &mut Config) {
    config.speech.categories = root().join("routing-rules/categories.toml");
    config.speech.streets = root().join("routing-rules/streets.txt");
    config.open311.api_keys = vec![Open311Key {
        name: "city-web".into(),
        key_sha256: hex(&sha256(KEY.as_bytes())),
    }];
}

async fn get(server: &common::TestServer, path: &str) -> (u16, Value) {
    let (status, _, body) = common::http(server.server.http, "GET", path, &[], None).await;
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")),
    )
}

async fn post(server: &common::TestServer, form: &str) -> (u16, Value) {
    let (status, _, body) = common::http(
        server.server.http,
        "POST",
        "/open311/v2/requests.json",
        &[],
        Some(("application/x-www-form-urlencoded", form.as_bytes())),
    )
    .await;
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

/// A GeoReport error: `[{"code": status, "description": ...}]`.
fn assert_error(status: u16, body: &Value, expected: u16) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body[0]["code"], expected, "{body}");
    assert!(body[0]["description"].is_string(), "{body}");
}

#[tokio::test]
async fn services_and_requests_follow_georeport_v2() {
    let server = common::start_with(configure).await;
    let (status, services) = get(&server, "/open311/v2/services.json").await;
    assert_eq!(status, 200);
    let pothole = services
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service_code"] == "pothole")
        .expect("pothole");
    assert_eq!(pothole["service_name"], "Pothole");
    assert_eq!(pothole["group"], "Streets & Sanitation");
    assert_eq!(pothole["metadata"], false);
    assert_eq!(pothole["type"], "realtime");
    assert!(pothole["keywords"].as_str().unwrap().contains("pothole"));

    // Creating needs a key; errors in the spec's format.
    let (status, body) = post(&server, "service_code=pothole&address_string=1+Main+St").await;
    assert_error(status, &body, 400);
    let (status, body) = post(
        &server,
        "api_key=wrong&service_code=pothole&address_string=1+Main+St",
    )
    .await;
    assert_error(status, &body, 403);
    let (status, body) = post(&server, &format!("api_key={KEY}&address_string=x")).await;
    assert_error(status, &body, 400);
    let (status, body) = post(
        &server,
        &format!("api_key={KEY}&service_code=unicorns&lat=1&long=2"),
    )
    .await;
    assert_error(status, &body, 400);
    let (status, body) = post(&server, &format!("api_key={KEY}&service_code=pothole")).await;
    assert_error(status, &body, 400);
    assert!(body[0]["description"]
        .as_str()
        .unwrap()
        .contains("location"));
    let (status, body) = post(
        &server,
        &format!("api_key={KEY}&service_code=pothole&lat=91&long=0"),
    )
    .await;
    assert_error(status, &body, 400);
    let (status, _, _) = common::http(
        server.server.http,
        "POST",
        "/open311/v2/requests.json",
        &[],
        Some(("application/json", br#"{"api_key":"x"}"#)),
    )
    .await;
    assert_eq!(status, 415);

    let (status, created) = post(
        &server,
        &format!(
            "api_key={KEY}&service_code=pothole&address_string=125+Main+Street&lat=41.88&long=-87.63\
             &description=Deep+hole+by+the+bus+stop&email=someone%40example.org"
        ),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let posted_id = created[0]["service_request_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(created[0]["service_notice"].is_string());

    // A phone-created case appears too, and a closed one filters out.
    let store = &server.server.store;
    let now = civicline::runtime::unix_ms_now();
    let phone = store
        .create_case("c-phone", None, now - 1000)
        .await
        .unwrap();
    let closed = store
        .create_case("c-closed", None, now - 500)
        .await
        .unwrap();
    store
        .change_case(
            &closed.case_number,
            Some("closed"),
            Some("Water"),
            "test",
            now,
        )
        .await
        .unwrap();

    let (status, one) = get(&server, &format!("/open311/v2/requests/{posted_id}.json")).await;
    assert_eq!(status, 200);
    let one = &one[0];
    for field in [
        "service_request_id",
        "status",
        "status_notes",
        "service_name",
        "service_code",
        "description",
        "agency_responsible",
        "service_notice",
        "requested_datetime",
        "updated_datetime",
        "expected_datetime",
        "address",
        "address_id",
        "zipcode",
        "lat",
        "long",
        "media_url",
    ] {
        assert!(one.get(field).is_some(), "{field} missing: {one}");
    }
    assert_eq!(one["status"], "open");
    assert_eq!(one["service_code"], "pothole");
    assert_eq!(one["agency_responsible"], "Streets & Sanitation");
    assert_eq!(one["address"], "125 Main Street");
    assert_eq!(one["lat"], 41.88);
    assert_eq!(one["long"], -87.63);
    assert!(one["requested_datetime"].as_str().unwrap().ends_with('Z'));
    // Contact details were not stored anywhere visible.
    assert!(!one.to_string().contains("example.org"));

    let (status, all) = get(&server, "/open311/v2/requests.json").await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["service_request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{all}");
    assert!(ids.contains(&phone.case_number.as_str()));
    let (_, open) = get(&server, "/open311/v2/requests.json?status=open").await;
    assert_eq!(open.as_array().unwrap().len(), 2);
    let (_, closed_list) = get(&server, "/open311/v2/requests.json?status=closed").await;
    assert_eq!(
        closed_list[0]["service_request_id"],
        closed.case_number.as_str()
    );
    assert_eq!(closed_list[0]["status"], "closed");
    let (_, by_id) = get(
        &server,
        &format!(
            "/open311/v2/requests.json?service_request_id={},{}&status=closed",
            phone.case_number, posted_id
        ),
    )
    .await;
    assert_eq!(
        by_id.as_array().unwrap().len(),
        2,
        "ids override other filters"
    );
    let (_, pothole_only) = get(&server, "/open311/v2/requests.json?service_code=pothole").await;
    assert_eq!(pothole_only.as_array().unwrap().len(), 1);
    let (_, none) = get(&server, "/open311/v2/requests.json?start_date=2010-01-01T00:00:00Z&end_date=2010-02-01T00:00:00-05:00").await;
    assert_eq!(none.as_array().unwrap().len(), 0);
    let (_, injected) = get(
        &server,
        "/open311/v2/requests.json?service_code=x%27%20OR%20%271%27%3D%271",
    )
    .await;
    assert_eq!(injected.as_array().unwrap().len(), 0);

    let (status, body) = get(&server, "/open311/v2/requests.json?status=pending").await;
    assert_error(status, &body, 400);
    let (status, body) = get(&server, "/open311/v2/requests.json?start_date=yesterday").await;
    assert_error(status, &body, 400);
    let (status, body) = get(
        &server,
        "/open311/v2/requests.json?start_date=2020-01-01T00:00:00Z&end_date=2021-01-01T00:00:00Z",
    )
    .await;
    assert_error(status, &body, 400);
    let (status, body) = get(&server, "/open311/v2/requests/9999999.json").await;
    assert_error(status, &body, 404);
    let (status, body) = get(&server, &format!("/open311/v2/requests/{posted_id}.txt")).await;
    assert_error(status, &body, 400);

    // Reading needs no token, as the spec intends; the API proper still does.
    let (status, _, _) = common::http(server.server.http, "GET", "/api/v1/cases", &[], None).await;
    assert_eq!(status, 401);
    server.server.shutdown();
    server.server.wait().await.unwrap();
}

/// GeoReport XML (`<root><item><field>text</field>...</item>...</root>`) read back: one map of
/// field to unescaped text per item, an empty element giving "".
fn xml_records(xml: &str, item: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut records = Vec::new();
    let mut record: Option<std::collections::BTreeMap<String, String>> = None;
    // The field being read and its raw text (entities kept as written, unescaped at its end).
    let mut field: Option<(String, String)> = None;
    let name_of = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).unwrap();
    loop {
        match reader.read_event().unwrap_or_else(|e| panic!("{e}: {xml}")) {
            Event::Start(e) if name_of(e.name().as_ref()) == item => {
                record = Some(Default::default());
            }
            Event::Start(e) if record.is_some() => {
                field = Some((name_of(e.name().as_ref()), String::new()));
            }
            Event::Empty(e) => {
                if let Some(record) = record.as_mut() {
                    record.insert(name_of(e.name().as_ref()), String::new());
                }
            }
            Event::Text(text) => {
                if let Some((_, raw)) = field.as_mut() {
                    raw.push_str(&text.decode().unwrap());
                }
            }
            Event::GeneralRef(entity) => {
                if let Some((_, raw)) = field.as_mut() {
                    raw.push_str(&format!("&{};", entity.decode().unwrap()));
                }
            }
            Event::End(e) if name_of(e.name().as_ref()) == item => {
                records.push(record.take().unwrap());
            }
            Event::End(_) => {
                if let (Some((name, raw)), Some(record)) = (field.take(), record.as_mut()) {
                    let text = quick_xml::escape::unescape(&raw).unwrap().into_owned();
                    record.insert(name, text);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    records
}

/// Both of GeoReport's formats carry the same records, errors included, and text that looks
/// like markup comes back as the text it was.
#[tokio::test]
async fn the_xml_format_carries_the_same_records_as_json() {
    let server = common::start_with(configure).await;
    let http = |method: &'static str, path: String, form: Option<String>| {
        let addr = server.server.http;
        async move {
            let body = form
                .as_ref()
                .map(|f| ("application/x-www-form-urlencoded", f.as_bytes()));
            common::http(addr, method, &path, &[], body).await
        }
    };
    let (status, headers, xml) = http("GET", "/open311/v2/services.xml".into(), None).await;
    assert_eq!(status, 200, "{xml}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: text/xml"),
        "{headers}"
    );
    assert!(
        xml.starts_with("<?xml version=\"1.0\" encoding=\"utf-8\"?><services><service>"),
        "{xml}"
    );
    let (_, json) = get(&server, "/open311/v2/services.json").await;
    let from_xml: Vec<String> = xml_records(&xml, "service")
        .into_iter()
        .map(|s| s["service_code"].clone())
        .collect();
    let from_json: Vec<String> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["service_code"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(from_xml, from_json);
    assert!(from_xml.len() >= 12);

    // Created through the XML endpoint, with a description that looks like markup.
    let description = "Hole <b>deep</b> & \"wide\" at O'Brien's";
    let form = format!(
        "api_key={KEY}&service_code=pothole&address_string=5+Elm+St&description={}",
        description
            .bytes()
            .map(|b| format!("%{b:02X}"))
            .collect::<String>()
    );
    let (status, _, xml) = http("POST", "/open311/v2/requests.xml".into(), Some(form)).await;
    assert_eq!(status, 201, "{xml}");
    let created = xml_records(&xml, "request");
    assert_eq!(created.len(), 1, "{xml}");
    let id = created[0]["service_request_id"].clone();
    assert!(created[0]["service_notice"].contains(&id));
    assert_eq!(
        created[0]["account_id"], "",
        "null is an empty element: {xml}"
    );

    let (status, _, xml) = http("GET", format!("/open311/v2/requests/{id}.xml"), None).await;
    assert_eq!(status, 200, "{xml}");
    let (_, json) = get(&server, &format!("/open311/v2/requests/{id}.json")).await;
    let request = &xml_records(&xml, "request")[0];
    assert_eq!(request["description"], description, "{xml}");
    for field in [
        "service_request_id",
        "status",
        "service_code",
        "address",
        "agency_responsible",
        "requested_datetime",
    ] {
        assert_eq!(
            request[field],
            json[0][field].as_str().unwrap(),
            "{field}: {xml}"
        );
    }
    let (status, _, xml) = http(
        "GET",
        "/open311/v2/requests.xml?service_code=pothole".into(),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert!(xml_records(&xml, "request")
        .iter()
        .any(|r| r["service_request_id"] == id));

    // Errors in the format asked for.
    for (method, path, form, code) in [
        (
            "GET",
            "/open311/v2/requests.xml?status=pending".to_string(),
            None,
            "400",
        ),
        (
            "GET",
            "/open311/v2/requests/9999999.xml".to_string(),
            None,
            "404",
        ),
        (
            "GET",
            "/open311/v2/services/unicorns.xml".to_string(),
            None,
            "404",
        ),
        (
            "POST",
            "/open311/v2/requests.xml".to_string(),
            Some("api_key=wrong&service_code=pothole&lat=1&long=2".to_string()),
            "403",
        ),
    ] {
        let (status, _, xml) = http(method, path.clone(), form).await;
        assert_eq!(status.to_string(), code, "{path}: {xml}");
        let errors = xml_records(&xml, "error");
        assert_eq!(errors.len(), 1, "{path}: {xml}");
        assert_eq!(errors[0]["code"], code, "{path}: {xml}");
        assert!(!errors[0]["description"].is_empty(), "{path}: {xml}");
    }
    server.server.shutdown();
    server.server.wait().await.unwrap();
}

fn georeport_python() -> PathBuf {
    let python = std::env::var("CIVICLINE_GEOREPORT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("data/venv-georeport/bin/python"));
    assert!(
        python.is_file(),
        "{} missing: run scripts/install-georeport (scripts/test does)",
        python.display()
    );
    python
}

#[tokio::test]
async fn the_georeport_client_lists_services_and_requests() {
    let python = georeport_python();
    let server = common::start_with(configure).await;
    let (status, created) = post(
        &server,
        &format!("api_key={KEY}&service_code=graffiti&address_string=9+Elm+Street&description=Tags+on+the+wall"),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let posted = created[0]["service_request_id"]
        .as_str()
        .unwrap()
        .to_string();
    let phone = server
        .server
        .store
        .create_case("c-phone", None, civicline::runtime::unix_ms_now())
        .await
        .unwrap();

    let url = format!("http://{}/open311/v2", server.server.http);
    let script = root().join("tests/open311/georeport_client.py");
    let id = posted.clone();
    // A blocking child on the blocking pool, so the server keeps answering meanwhile.
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("timeout")
            .arg("60")
            .arg(&python)
            .arg(&script)
            .arg(&url)
            .arg(&id)
            // Loopback only: no proxy may intercept.
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .output()
    })
    .await
    .unwrap()
    .expect("the client runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "georeport client failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    let codes: Vec<&str> = got["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["service_code"].as_str().unwrap())
        .collect();
    assert!(
        codes.contains(&"pothole") && codes.contains(&"graffiti"),
        "{codes:?}"
    );
    let ids: Vec<&str> = got["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["service_request_id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&posted.as_str()), "{ids:?}");
    assert!(ids.contains(&phone.case_number.as_str()), "{ids:?}");
    assert_eq!(got["open"].as_array().unwrap().len(), 2);
    assert_eq!(got["pothole"].as_array().unwrap().len(), 0);
    assert_eq!(got["one"]["service_request_id"], posted.as_str());
    assert_eq!(got["one"]["service_code"], "graffiti");
    assert_eq!(got["one"]["status"], "open");
    server.server.shutdown();
    server.server.wait().await.unwrap();
}
