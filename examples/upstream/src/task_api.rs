//! The Task API demo service: the upstream that tollgate's examples rate-limit.
//!
//! `GET /api/tasks` answers in the server's own version (`--version`), `GET /api/v1/tasks` and
//! `GET /api/v2/tasks` in the version their path names, `GET /healthz` reports liveness. Every
//! response carries `x-upstream-version` so a test can see which upstream Envoy picked.

use std::fmt;
use std::str::FromStr;

use http::{Method, StatusCode};
use serde::Serialize;

use crate::request::Request;
use crate::response::Response;
use crate::server::Handler;

/// Version of the Task API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    /// The original shape.
    V1,
    /// Adds `priority` and `tags` to each task and a `next_cursor`.
    V2,
}

impl ApiVersion {
    /// `"v1"` or `"v2"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a version string that is neither `v1` nor `v2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownVersion(pub String);

impl fmt::Display for UnknownVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown API version {:?} (expected v1 or v2)", self.0)
    }
}

impl std::error::Error for UnknownVersion {}

impl FromStr for ApiVersion {
    type Err = UnknownVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "v1" => Ok(Self::V1),
            "v2" => Ok(Self::V2),
            other => Err(UnknownVersion(other.to_owned())),
        }
    }
}

struct Task {
    id: u32,
    title: &'static str,
    done: bool,
    priority: &'static str,
    tags: &'static [&'static str],
}

const TASKS: &[Task] = &[
    Task {
        id: 1,
        title: "Write the rate-limit policy",
        done: true,
        priority: "high",
        tags: &["policy"],
    },
    Task {
        id: 2,
        title: "Attach the filter in Envoy",
        done: true,
        priority: "high",
        tags: &["envoy"],
    },
    Task {
        id: 3,
        title: "Load-test the premium tier",
        done: false,
        priority: "medium",
        tags: &["perf", "premium"],
    },
    Task {
        id: 4,
        title: "Add token budgets for the LLM route",
        done: false,
        priority: "low",
        tags: &["llm"],
    },
];

/// A task as v1 shows it.
#[derive(Serialize)]
struct TaskV1 {
    id: u32,
    title: &'static str,
    done: bool,
}

/// A task as v2 shows it.
#[derive(Serialize)]
struct TaskV2 {
    id: u32,
    title: &'static str,
    status: &'static str,
    priority: &'static str,
    tags: &'static [&'static str],
}

/// `GET /api/v1/tasks` (fields in this order on the wire: tests read `{"version":…,"tasks":[`).
#[derive(Serialize)]
struct ListV1 {
    version: ApiVersion,
    tasks: Vec<TaskV1>,
}

/// `GET /api/v2/tasks`: a cursor too (always `null`: the list is short).
#[derive(Serialize)]
struct ListV2 {
    version: ApiVersion,
    tasks: Vec<TaskV2>,
    next_cursor: Option<String>,
}

/// `GET /healthz`.
#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: ApiVersion,
}

/// An error body: `{"error":"not_found"}`.
#[derive(Serialize)]
struct Error {
    error: &'static str,
}

impl Serialize for ApiVersion {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// The Task API handler.
#[derive(Debug, Clone, Copy)]
pub struct TaskApi {
    version: ApiVersion,
}

impl TaskApi {
    /// A Task API whose unversioned paths answer in `version`.
    pub fn new(version: ApiVersion) -> Self {
        Self { version }
    }

    fn tasks(&self, version: ApiVersion) -> Response {
        let response = match version {
            ApiVersion::V1 => Response::json_of(
                StatusCode::OK,
                &ListV1 {
                    version,
                    tasks: TASKS
                        .iter()
                        .map(|t| TaskV1 {
                            id: t.id,
                            title: t.title,
                            done: t.done,
                        })
                        .collect(),
                },
            ),
            ApiVersion::V2 => Response::json_of(
                StatusCode::OK,
                &ListV2 {
                    version,
                    tasks: TASKS
                        .iter()
                        .map(|t| TaskV2 {
                            id: t.id,
                            title: t.title,
                            status: if t.done { "done" } else { "open" },
                            priority: t.priority,
                            tags: t.tags,
                        })
                        .collect(),
                    next_cursor: None,
                },
            ),
        };
        self.respond(response)
    }

    fn respond(&self, response: Response) -> Response {
        response.with_header("x-upstream-version", self.version.as_str())
    }
}

impl Handler for TaskApi {
    fn handle(&self, request: &Request) -> Response {
        let version = match request.path() {
            "/api/tasks" => Some(self.version),
            "/api/v1/tasks" => Some(ApiVersion::V1),
            "/api/v2/tasks" => Some(ApiVersion::V2),
            "/healthz" => None,
            _ => {
                let body = Error { error: "not_found" };
                return self.respond(Response::json_of(StatusCode::NOT_FOUND, &body));
            }
        };
        if request.method != Method::GET && request.method != Method::HEAD {
            let body = Error {
                error: "method_not_allowed",
            };
            return self.respond(
                Response::json_of(StatusCode::METHOD_NOT_ALLOWED, &body)
                    .with_header("allow", "GET, HEAD"),
            );
        }
        match version {
            Some(version) => self.tasks(version),
            None => self.respond(Response::json_of(
                StatusCode::OK,
                &Health {
                    status: "ok",
                    version: self.version,
                },
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &'static str) -> Request {
        Request::new(Method::GET, http::Uri::from_static(path))
    }

    fn body(response: &Response) -> String {
        String::from_utf8(response.body_bytes().to_vec()).unwrap()
    }

    #[test]
    fn unversioned_path_answers_in_the_servers_version() {
        let api = TaskApi::new(ApiVersion::V2);
        let response = api.handle(&get("/api/tasks?limit=2"));
        assert_eq!(response.status, StatusCode::OK);
        assert!(body(&response).starts_with(r#"{"version":"v2","tasks":[{"id":1,"#));
        assert!(body(&response).ends_with(r#""tags":["llm"]}],"next_cursor":null}"#));
        assert_eq!(response.header("x-upstream-version"), Some("v2"));
    }

    #[test]
    fn versioned_paths_answer_in_their_own_version() {
        let api = TaskApi::new(ApiVersion::V1);
        assert!(body(&api.handle(&get("/api/v2/tasks"))).contains(r#""priority":"high""#));
        let v1 = body(&api.handle(&get("/api/v1/tasks")));
        assert!(v1.starts_with(
            r#"{"version":"v1","tasks":[{"id":1,"title":"Write the rate-limit policy","done":true},"#
        ));
        assert!(!v1.contains("next_cursor"));
    }

    #[test]
    fn other_paths_and_methods_are_refused() {
        let api = TaskApi::new(ApiVersion::V1);
        let missing = api.handle(&get("/nope"));
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(body(&missing), r#"{"error":"not_found"}"#);
        let mut post = get("/api/tasks");
        post.method = Method::POST;
        let refused = api.handle(&post);
        assert_eq!(refused.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(refused.header("allow"), Some("GET, HEAD"));
        let health = api.handle(&get("/healthz"));
        assert_eq!(body(&health), r#"{"status":"ok","version":"v1"}"#);
    }
}
