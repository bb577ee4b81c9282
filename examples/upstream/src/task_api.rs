//! The Task API demo service: the upstream that tollgate's examples rate-limit.
//!
//! `GET /api/tasks` answers in the server's own version (`--version`), `GET /api/v1/tasks` and
//! `GET /api/v2/tasks` in the version their path names, `GET /healthz` reports liveness. Every
//! response carries `x-upstream-version` so a test can see which upstream Envoy picked.

use std::fmt;
use std::str::FromStr;

use crate::http::{Request, Response};
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
        let items: Vec<String> = TASKS
            .iter()
            .map(|t| match version {
                ApiVersion::V1 => format!(
                    r#"{{"id":{},"title":"{}","done":{}}}"#,
                    t.id, t.title, t.done
                ),
                ApiVersion::V2 => {
                    let tags: Vec<String> = t.tags.iter().map(|tag| format!("\"{tag}\"")).collect();
                    format!(
                        r#"{{"id":{},"title":"{}","status":"{}","priority":"{}","tags":[{}]}}"#,
                        t.id,
                        t.title,
                        if t.done { "done" } else { "open" },
                        t.priority,
                        tags.join(",")
                    )
                }
            })
            .collect();
        let extra = match version {
            ApiVersion::V1 => "",
            ApiVersion::V2 => r#","next_cursor":null"#,
        };
        let body = format!(
            r#"{{"version":"{version}","tasks":[{}]{extra}}}"#,
            items.join(",")
        );
        self.respond(Response::json(200, body))
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
                return self.respond(Response::json(404, r#"{"error":"not_found"}"#));
            }
        };
        if request.method != "GET" && request.method != "HEAD" {
            return self.respond(
                Response::json(405, r#"{"error":"method_not_allowed"}"#)
                    .with_header("allow", "GET, HEAD"),
            );
        }
        match version {
            Some(version) => self.tasks(version),
            None => self.respond(Response::json(
                200,
                format!(r#"{{"status":"ok","version":"{}"}}"#, self.version),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Version;

    fn get(path: &str) -> Request {
        Request {
            method: "GET".into(),
            target: path.into(),
            version: Version::Http11,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn body(response: &Response) -> &str {
        std::str::from_utf8(&response.body).unwrap()
    }

    #[test]
    fn unversioned_path_answers_in_the_servers_version() {
        let api = TaskApi::new(ApiVersion::V2);
        let response = api.handle(&get("/api/tasks?limit=2"));
        assert_eq!(response.status, 200);
        assert!(body(&response).starts_with(r#"{"version":"v2","tasks":[{"id":1,"#));
    }

    #[test]
    fn versioned_paths_answer_in_their_own_version() {
        let api = TaskApi::new(ApiVersion::V1);
        assert!(body(&api.handle(&get("/api/v2/tasks"))).contains(r#""priority":"high""#));
        assert!(body(&api.handle(&get("/api/v1/tasks"))).contains(r#""done":true"#));
    }

    #[test]
    fn other_paths_and_methods_are_refused() {
        let api = TaskApi::new(ApiVersion::V1);
        assert_eq!(api.handle(&get("/nope")).status, 404);
        let mut post = get("/api/tasks");
        post.method = "POST".into();
        assert_eq!(api.handle(&post).status, 405);
        assert_eq!(api.handle(&get("/healthz")).status, 200);
    }
}
