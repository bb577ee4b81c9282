//! Reading a `serde_json::Value` with a path in hand, so every error can say where it is.

use alloc::borrow::ToOwned;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use serde_json::{Map, Value};

use super::error::{err, ConfigError, Reason};

/// A JSON object being read, with its path and the fields it may have.
pub(super) struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Obj<'a> {
    pub(super) fn new(
        v: &'a Value,
        path: &str,
        fields: &'static [&'static str],
    ) -> Result<Obj<'a>, ConfigError> {
        let Value::Object(map) = v else {
            return err(
                path,
                Reason::WrongType {
                    expected: "an object",
                },
            );
        };
        if let Some(unknown) = map.keys().find(|k| !fields.contains(&k.as_str())) {
            return err(
                join(path, unknown),
                Reason::UnknownField { expected: fields },
            );
        }
        Ok(Obj {
            map,
            path: path.to_owned(),
        })
    }

    pub(super) fn at(&self, field: &str) -> String {
        join(&self.path, field)
    }

    pub(super) fn opt(&self, field: &str) -> Option<&'a Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    pub(super) fn req(&self, field: &str) -> Result<&'a Value, ConfigError> {
        match self.opt(field) {
            Some(v) => Ok(v),
            None => err(self.at(field), Reason::Missing),
        }
    }
}

pub(super) fn join(path: &str, field: &str) -> String {
    if path == "$" {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

pub(super) fn string<'v>(v: &'v Value, path: &str) -> Result<&'v str, ConfigError> {
    v.as_str().ok_or_else(|| ConfigError {
        path: path.to_owned(),
        reason: Reason::WrongType {
            expected: "a string",
        },
    })
}

pub(super) fn boolean(v: &Value, path: &str) -> Result<bool, ConfigError> {
    v.as_bool().ok_or_else(|| ConfigError {
        path: path.to_owned(),
        reason: Reason::WrongType {
            expected: "true or false",
        },
    })
}

pub(super) fn array<'v>(v: &'v Value, path: &str) -> Result<&'v Vec<Value>, ConfigError> {
    v.as_array().ok_or_else(|| ConfigError {
        path: path.to_owned(),
        reason: Reason::WrongType { expected: "a list" },
    })
}

/// A positive whole number up to `max`.
pub(super) fn positive(v: &Value, path: &str, max: u64) -> Result<u64, ConfigError> {
    let Some(n) = v.as_u64() else {
        if v.as_i64() == Some(0) || v.as_f64() == Some(0.0) {
            return err(path, Reason::NotPositive);
        }
        return err(
            path,
            Reason::WrongType {
                expected: "a positive whole number",
            },
        );
    };
    if n == 0 {
        return err(path, Reason::NotPositive);
    }
    if n > max {
        return err(path, Reason::TooLarge { max });
    }
    Ok(n)
}

pub(super) fn name(v: &Value, path: &str) -> Result<String, ConfigError> {
    let s = string(v, path)?;
    if s.is_empty()
        || s.len() > 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return err(path, Reason::BadName);
    }
    Ok(s.to_owned())
}

pub(super) fn header_name(v: &Value, path: &str) -> Result<String, ConfigError> {
    let s = string(v, path)?;
    let token =
        |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b);
    let body = s.strip_prefix(':').unwrap_or(s);
    if body.is_empty() || !body.bytes().all(token) {
        return err(path, Reason::BadHeaderName);
    }
    Ok(s.to_owned())
}
