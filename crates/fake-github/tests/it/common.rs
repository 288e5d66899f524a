//! Shared test helpers: a tiny HTTP client and OpenAPI response-schema validation.

use std::collections::BTreeSet;
use std::sync::{Mutex, OnceLock};

use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use fake_github::{Config, FakeGithub};

pub type Bytes = axum::body::Bytes;

/// An answer: status, headers and the body parsed as JSON (`Null` when empty).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    pub fn new() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends one request; `auth` is the whole `Authorization` value, e.g. `Bearer T`.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        auth: Option<&str>,
        body: Option<&Value>,
    ) -> Resp {
        let mut builder = Request::builder()
            .method(method)
            .uri(url)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28");
        if let Some(auth) = auth {
            builder = builder.header("authorization", auth);
        }
        let payload = match body {
            Some(v) => {
                builder = builder.header("content-type", "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let request = builder.body(Full::new(payload)).expect("valid request");
        let response = self.client.request(request).await.expect("request sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body read")
            .to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "body of {status} is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        Resp {
            status,
            headers,
            body,
        }
    }
}

/// A fake plus a client that knows its URL and token.
pub struct Gh {
    pub fake: FakeGithub,
    pub http: Http,
    pub auth: String,
}

impl Gh {
    pub async fn start(config: Config) -> Gh {
        let fake = FakeGithub::start(config).await.expect("fake starts");
        let auth = format!("Bearer {}", fake.token());
        Gh {
            fake,
            http: Http::new(),
            auth,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.fake.url())
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, path, None).await
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Resp {
        self.http
            .send(method, &self.url(path), Some(&self.auth), body)
            .await
    }
}

// ---- OpenAPI schemas ----------------------------------------------------------------------

fn spec() -> &'static Value {
    static SPEC: OnceLock<Value> = OnceLock::new();
    SPEC.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/github-api/runners.openapi.json"
        );
        let text = std::fs::read_to_string(path).expect("OpenAPI description readable");
        serde_json::from_str(&text).expect("OpenAPI description is JSON")
    })
}

/// OpenAPI 3.0 says "may be null" with `nullable: true` beside `type`; JSON Schema has no such
/// keyword, so a validator would ignore it and then reject the `null`s GitHub really sends.
/// Rewrite it the way OpenAPI 3.1 does: `type: T` becomes `type: [T, "null"]` (and `null` joins
/// an `enum`); a nullable schema without `type` (an `anyOf`/`oneOf`/`allOf`) becomes
/// `anyOf: [schema, {type: null}]`. Nothing else is relaxed.
pub fn openapi_to_json_schema(schema: &mut Value) {
    match schema {
        Value::Array(items) => items.iter_mut().for_each(openapi_to_json_schema),
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                // These hold data, not schemas.
                if !matches!(key.as_str(), "example" | "examples" | "enum" | "default") {
                    openapi_to_json_schema(child);
                }
            }
            // Checked by value: inside `properties` a key "nullable" would be a property name.
            if map.get("nullable") != Some(&Value::Bool(true)) {
                return;
            }
            map.remove("nullable");
            if let Some(Value::Array(values)) = map.get_mut("enum") {
                values.push(Value::Null);
            }
            match map.get("type").cloned() {
                Some(Value::String(t)) => {
                    map.insert("type".into(), serde_json::json!([t, "null"]));
                }
                Some(_) => {}
                None => {
                    let inner = Value::Object(std::mem::take(map));
                    map.insert("anyOf".into(), serde_json::json!([inner, {"type": "null"}]));
                }
            }
        }
        _ => {}
    }
}

/// The response schema the description gives for `path` `method` `status`, if any.
fn response_schema(path: &str, method: &str, status: u16) -> Option<Value> {
    let operation = spec().get("paths")?.get(path)?.get(method)?;
    operation
        .get("responses")?
        .get(status.to_string())?
        .get("content")?
        .get("application/json")?
        .get("schema")
        .cloned()
}

/// GitHub's "Basic Error" schema, for error answers an operation does not document
/// (401 and 404 happen on every endpoint).
fn basic_error_schema() -> Value {
    response_schema(
        "/repos/{owner}/{repo}/actions/runners/generate-jitconfig",
        "post",
        404,
    )
    .expect("Basic Error schema in the description")
}

/// Which (path, method, status) triples were checked against a documented schema.
pub fn coverage() -> &'static Mutex<BTreeSet<(String, String, u16)>> {
    static SEEN: OnceLock<Mutex<BTreeSet<(String, String, u16)>>> = OnceLock::new();
    SEEN.get_or_init(|| Mutex::new(BTreeSet::new()))
}

/// Validates `resp.body` against the schema for (`path`, `method`, `resp.status`); an error
/// status the operation does not document is checked against Basic Error.
pub fn check_schema(resp: &Resp, path: &str, method: &str) {
    assert!(
        spec()["paths"][path].get(method).is_some(),
        "{method} {path} is not in the OpenAPI description"
    );
    let schema = match response_schema(path, method, resp.status) {
        Some(schema) => {
            coverage()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((path.to_owned(), method.to_owned(), resp.status));
            schema
        }
        None if resp.status >= 400 => basic_error_schema(),
        None => {
            assert!(
                resp.body.is_null(),
                "{method} {path} answered {} with a body the description does not describe: {}",
                resp.status,
                resp.body
            );
            return;
        }
    };
    let mut schema = schema;
    openapi_to_json_schema(&mut schema);
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .should_validate_formats(true)
        .build(&schema)
        .expect("schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&resp.body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {} does not match its schema:\n{}\nbody: {}",
        resp.status,
        errors.join("\n"),
        resp.body
    );
    if resp.status >= 400 {
        assert!(resp.body["message"].is_string(), "error without message");
        assert!(
            resp.body["documentation_url"].is_string(),
            "error without documentation_url"
        );
    }
}

/// GitHub's headers, present on every API answer.
pub fn check_github_headers(resp: &Resp) {
    for name in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-used",
        "x-ratelimit-reset",
        "x-github-request-id",
    ] {
        assert!(resp.header(name).is_some(), "{name} missing: {resp:?}");
    }
    assert_eq!(resp.header("x-ratelimit-limit"), Some("5000"));
    assert_eq!(resp.header("x-ratelimit-resource"), Some("core"));
    if !resp.body.is_null() {
        assert_eq!(
            resp.header("content-type"),
            Some("application/json; charset=utf-8")
        );
    }
}

/// An App JWT with the given `iss` and `exp` (the fake does not check the signature).
pub fn app_jwt(iss: Value, exp: u64) -> String {
    use base64::Engine as _;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let now = now();
    format!(
        "{}.{}.c2lnbmF0dXJl",
        b64(serde_json::json!({"alg": "RS256", "typ": "JWT"})),
        b64(serde_json::json!({"iat": now - 60, "exp": exp, "iss": iss}))
    )
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The `Link` header as (rel, url) pairs.
pub fn links(resp: &Resp) -> Vec<(String, String)> {
    let Some(header) = resp.header("link") else {
        return Vec::new();
    };
    header
        .split(", ")
        .map(|part| {
            let (url, rel) = part.split_once("; ").expect("<url>; rel=\"x\"");
            let url = url
                .strip_prefix('<')
                .and_then(|u| u.strip_suffix('>'))
                .expect("url in angle brackets");
            let rel = rel
                .strip_prefix("rel=\"")
                .and_then(|r| r.strip_suffix('"'))
                .expect("rel=\"x\"");
            (rel.to_owned(), url.to_owned())
        })
        .collect()
}

pub fn link<'a>(links: &'a [(String, String)], rel: &str) -> Option<&'a str> {
    links
        .iter()
        .find(|(r, _)| r == rel)
        .map(|(_, u)| u.as_str())
}
