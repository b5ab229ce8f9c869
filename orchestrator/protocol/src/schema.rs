//! A small, closed subset of JSON Schema for action parameters.
//!
//! Agents declare their parameters with it, the runtime validates every request against it,
//! and the orchestrator validates every planned step against it and shows it to the LLM. Only
//! the keywords below exist; a schema using anything else is refused when it is parsed, so what
//! a schema promises is exactly what is checked:
//!
//! - `{"type": "object", "properties": {..}, "required": [..], "additionalProperties": false,
//!   "minProperties": n}`: objects must forbid additional properties.
//! - `{"type": "string", "minLength", "maxLength", "enum": [..]}`: `maxLength` is required.
//! - `{"type": "integer", "minimum", "maximum"}` and `{"type": "number", "minimum", "maximum"}`:
//!   both bounds are required.
//! - `{"type": "boolean"}`
//! - `{"type": "array", "items": {..}, "minItems", "maxItems"}`: `maxItems` is required.
//! - `"description"` is allowed everywhere.
//!
//! Every string, number and list is bounded, so a valid value is always small.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// Deepest nesting a schema may have.
const MAX_DEPTH: usize = 8;

/// A parsed schema.
#[derive(Debug, Clone, PartialEq)]
pub enum Schema {
    /// An object with known properties only.
    Object {
        /// Properties by name.
        properties: BTreeMap<String, Schema>,
        /// Names that must be present.
        required: Vec<String>,
        /// At least this many properties must be present.
        min_properties: usize,
    },
    /// A bounded string.
    String {
        /// Shortest length in characters.
        min_length: usize,
        /// Longest length in characters.
        max_length: usize,
        /// If set, the only values allowed.
        allowed: Option<Vec<String>>,
    },
    /// A bounded integer.
    Integer {
        /// Smallest value.
        minimum: i64,
        /// Largest value.
        maximum: i64,
    },
    /// A bounded number.
    Number {
        /// Smallest value.
        minimum: f64,
        /// Largest value.
        maximum: f64,
    },
    /// `true` or `false`.
    Boolean,
    /// A bounded list.
    Array {
        /// Each item's schema.
        items: Box<Schema>,
        /// Fewest items.
        min_items: usize,
        /// Most items.
        max_items: usize,
    },
}

/// Why a schema was refused when parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schema at {path}: {reason}")]
pub struct SchemaDefinitionError {
    /// JSON pointer to the offending schema.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

impl SchemaDefinitionError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        "schema_unsupported"
    }
}

/// One way a value failed its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer to the offending value (`""` is the root).
    pub path: String,
    /// What is wrong, for a user or a model to read.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.message)
    }
}

fn def_err(path: &str, reason: impl Into<String>) -> SchemaDefinitionError {
    SchemaDefinitionError {
        path: if path.is_empty() {
            "/".to_owned()
        } else {
            path.to_owned()
        },
        reason: reason.into(),
    }
}

fn check_keys(
    path: &str,
    obj: &serde_json::Map<String, Value>,
    allowed: &[&str],
) -> Result<(), SchemaDefinitionError> {
    for k in obj.keys() {
        if k != "description" && k != "type" && !allowed.contains(&k.as_str()) {
            return Err(def_err(
                path,
                format!("keyword {k:?} is not supported here"),
            ));
        }
    }
    Ok(())
}

fn get_usize(
    path: &str,
    obj: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<usize>, SchemaDefinitionError> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| def_err(path, format!("{key} must be a non-negative integer"))),
    }
}

impl Schema {
    /// Parses and checks a schema.
    pub fn parse(value: &Value) -> Result<Schema, SchemaDefinitionError> {
        Self::parse_at(value, "", 0)
    }

    fn parse_at(value: &Value, path: &str, depth: usize) -> Result<Schema, SchemaDefinitionError> {
        if depth > MAX_DEPTH {
            return Err(def_err(path, "nested too deeply"));
        }
        let obj = value
            .as_object()
            .ok_or_else(|| def_err(path, "a schema must be an object"))?;
        if let Some(d) = obj.get("description")
            && !d.is_string()
        {
            return Err(def_err(path, "description must be a string"));
        }
        let ty = obj
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| def_err(path, "type must be one of the supported type names"))?;
        match ty {
            "object" => {
                check_keys(
                    path,
                    obj,
                    &[
                        "properties",
                        "required",
                        "additionalProperties",
                        "minProperties",
                    ],
                )?;
                if obj.get("additionalProperties") != Some(&Value::Bool(false)) {
                    return Err(def_err(
                        path,
                        "objects must set additionalProperties: false",
                    ));
                }
                let mut properties = BTreeMap::new();
                if let Some(props) = obj.get("properties") {
                    let props = props
                        .as_object()
                        .ok_or_else(|| def_err(path, "properties must be an object"))?;
                    for (name, sub) in props {
                        let sub_path = format!("{path}/properties/{name}");
                        properties.insert(name.clone(), Self::parse_at(sub, &sub_path, depth + 1)?);
                    }
                }
                let mut required = Vec::new();
                if let Some(req) = obj.get("required") {
                    for r in req
                        .as_array()
                        .ok_or_else(|| def_err(path, "required must be a list"))?
                    {
                        let name = r
                            .as_str()
                            .ok_or_else(|| def_err(path, "required must list names"))?;
                        if !properties.contains_key(name) {
                            return Err(def_err(
                                path,
                                format!("required {name:?} is not a property"),
                            ));
                        }
                        required.push(name.to_owned());
                    }
                }
                let min_properties = get_usize(path, obj, "minProperties")?.unwrap_or(0);
                Ok(Schema::Object {
                    properties,
                    required,
                    min_properties,
                })
            }
            "string" => {
                check_keys(path, obj, &["minLength", "maxLength", "enum"])?;
                let max_length = get_usize(path, obj, "maxLength")?
                    .ok_or_else(|| def_err(path, "strings need maxLength"))?;
                let min_length = get_usize(path, obj, "minLength")?.unwrap_or(0);
                if min_length > max_length {
                    return Err(def_err(path, "minLength is over maxLength"));
                }
                let allowed = match obj.get("enum") {
                    None => None,
                    Some(e) => Some(
                        e.as_array()
                            .ok_or_else(|| def_err(path, "enum must be a list"))?
                            .iter()
                            .map(|v| {
                                v.as_str()
                                    .map(str::to_owned)
                                    .ok_or_else(|| def_err(path, "enum must list strings"))
                            })
                            .collect::<Result<Vec<_>, _>>()?,
                    ),
                };
                Ok(Schema::String {
                    min_length,
                    max_length,
                    allowed,
                })
            }
            "integer" => {
                check_keys(path, obj, &["minimum", "maximum"])?;
                let bound = |k: &str| {
                    obj.get(k)
                        .and_then(Value::as_i64)
                        .ok_or_else(|| def_err(path, format!("integers need an integer {k}")))
                };
                let (minimum, maximum) = (bound("minimum")?, bound("maximum")?);
                if minimum > maximum {
                    return Err(def_err(path, "minimum is over maximum"));
                }
                Ok(Schema::Integer { minimum, maximum })
            }
            "number" => {
                check_keys(path, obj, &["minimum", "maximum"])?;
                let bound = |k: &str| {
                    obj.get(k)
                        .and_then(Value::as_f64)
                        .ok_or_else(|| def_err(path, format!("numbers need a numeric {k}")))
                };
                let (minimum, maximum) = (bound("minimum")?, bound("maximum")?);
                if minimum > maximum {
                    return Err(def_err(path, "minimum is over maximum"));
                }
                Ok(Schema::Number { minimum, maximum })
            }
            "boolean" => {
                check_keys(path, obj, &[])?;
                Ok(Schema::Boolean)
            }
            "array" => {
                check_keys(path, obj, &["items", "minItems", "maxItems"])?;
                let items = obj
                    .get("items")
                    .ok_or_else(|| def_err(path, "arrays need items"))?;
                let items = Box::new(Self::parse_at(items, &format!("{path}/items"), depth + 1)?);
                let max_items = get_usize(path, obj, "maxItems")?
                    .ok_or_else(|| def_err(path, "arrays need maxItems"))?;
                let min_items = get_usize(path, obj, "minItems")?.unwrap_or(0);
                if min_items > max_items {
                    return Err(def_err(path, "minItems is over maxItems"));
                }
                Ok(Schema::Array {
                    items,
                    min_items,
                    max_items,
                })
            }
            other => Err(def_err(path, format!("type {other:?} is not supported"))),
        }
    }

    /// Checks `value`; returns every violation found (at most 32).
    pub fn validate(&self, value: &Value) -> Result<(), Vec<Violation>> {
        let mut out = Vec::new();
        self.check(value, "", &mut out);
        out.truncate(32);
        if out.is_empty() { Ok(()) } else { Err(out) }
    }

    fn check(&self, value: &Value, path: &str, out: &mut Vec<Violation>) {
        let mut fail = |message: String| {
            out.push(Violation {
                path: path.to_owned(),
                message,
            })
        };
        match (self, value) {
            (
                Schema::Object {
                    properties,
                    required,
                    min_properties,
                },
                Value::Object(map),
            ) => {
                for name in required {
                    if !map.contains_key(name) {
                        fail(format!("missing required property {name:?}"));
                    }
                }
                if map.len() < *min_properties {
                    fail(format!("needs at least {min_properties} of its properties"));
                }
                for (k, v) in map {
                    match properties.get(k) {
                        Some(s) => s.check(v, &format!("{path}/{k}"), out),
                        None => out.push(Violation {
                            path: path.to_owned(),
                            message: format!("unknown property {k:?}"),
                        }),
                    }
                }
            }
            (
                Schema::String {
                    min_length,
                    max_length,
                    allowed,
                },
                Value::String(s),
            ) => {
                let n = s.chars().count();
                if n < *min_length || n > *max_length {
                    fail(format!(
                        "must be {min_length} to {max_length} characters long, got {n}"
                    ));
                }
                if s.chars().any(char::is_control) {
                    fail("must not hold control characters".to_owned());
                }
                if let Some(allowed) = allowed
                    && !allowed.iter().any(|a| a == s)
                {
                    fail(format!("must be one of {allowed:?}"));
                }
            }
            (Schema::Integer { minimum, maximum }, Value::Number(n)) => match n.as_i64() {
                Some(i) if i >= *minimum && i <= *maximum => {}
                Some(i) => fail(format!("must be between {minimum} and {maximum}, got {i}")),
                None => fail("must be an integer".to_owned()),
            },
            (Schema::Number { minimum, maximum }, Value::Number(n)) => match n.as_f64() {
                Some(f) if f >= *minimum && f <= *maximum => {}
                _ => fail(format!("must be a number between {minimum} and {maximum}")),
            },
            (Schema::Boolean, Value::Bool(_)) => {}
            (
                Schema::Array {
                    items,
                    min_items,
                    max_items,
                },
                Value::Array(list),
            ) => {
                if list.len() < *min_items || list.len() > *max_items {
                    fail(format!(
                        "must have {min_items} to {max_items} items, got {}",
                        list.len()
                    ));
                    return;
                }
                for (i, item) in list.iter().enumerate() {
                    items.check(item, &format!("{path}/{i}"), out);
                }
            }
            (expected, _) => fail(format!("must be {}", expected.type_name())),
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Schema::Object { .. } => "an object",
            Schema::String { .. } => "a string",
            Schema::Integer { .. } => "an integer",
            Schema::Number { .. } => "a number",
            Schema::Boolean => "true or false",
            Schema::Array { .. } => "a list",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn light_set() -> Schema {
        Schema::parse(&json!({
            "type": "object",
            "description": "Set one light.",
            "properties": {
                "light": {"type": "string", "minLength": 1, "maxLength": 64},
                "on": {"type": "boolean"},
                "brightness": {"type": "number", "minimum": 0, "maximum": 100},
                "mirek": {"type": "integer", "minimum": 153, "maximum": 500},
                "mode": {"type": "string", "maxLength": 8, "enum": ["fast", "slow"]},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 2}
            },
            "required": ["light"],
            "additionalProperties": false,
            "minProperties": 2
        }))
        .unwrap()
    }

    fn check(value: Value) -> String {
        match light_set().validate(&value) {
            Ok(()) => "ok".to_owned(),
            Err(v) => v
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        }
    }

    #[test]
    fn values_are_checked() {
        let cases = [
            json!({"light": "kitchen", "on": false}),
            json!({"light": "kitchen", "brightness": 20.5, "mirek": 454}),
            json!({"light": "kitchen"}),
            json!({"on": true, "brightness": 3}),
            json!({"light": "kitchen", "on": "yes"}),
            json!({"light": "kitchen", "brightness": 101}),
            json!({"light": "kitchen", "mirek": 300.5}),
            json!({"light": "kitchen", "mirek": 100}),
            json!({"light": "", "on": true}),
            json!({"light": "kitchen", "on": true, "colour": "red"}),
            json!({"light": "kitchen", "mode": "turbo"}),
            json!({"light": "kitchen", "tags": ["a", "b", "c"]}),
            json!({"light": "kitchen", "tags": ["abcde"]}),
            json!({"light": "kit\u{0}chen", "on": true}),
            json!(["light"]),
        ];
        let out: Vec<String> = cases.into_iter().map(check).collect();
        expect_test::expect![[r#"
            ok
            ok
            /: needs at least 2 of its properties
            /: missing required property "light"
            /on: must be true or false
            /brightness: must be a number between 0 and 100
            /mirek: must be an integer
            /mirek: must be between 153 and 500, got 100
            /light: must be 1 to 64 characters long, got 0
            /: unknown property "colour"
            /mode: must be one of ["fast", "slow"]
            /tags: must have 0 to 2 items, got 3
            /tags/0: must be 0 to 4 characters long, got 5
            /light: must not hold control characters
            /: must be an object"#]]
        .assert_eq(&out.join("\n"));
    }

    #[test]
    fn unsupported_or_unbounded_schemas_are_refused() {
        let cases = [
            json!({"type": "object", "properties": {}}),
            json!({"type": "object", "additionalProperties": true}),
            json!({"type": "string"}),
            json!({"type": "string", "maxLength": 3, "pattern": "^a"}),
            json!({"type": "integer", "minimum": 0}),
            json!({"type": "number", "minimum": 5, "maximum": 1}),
            json!({"type": "array", "items": {"type": "boolean"}}),
            json!({"type": "null"}),
            json!({"anyOf": []}),
            json!({"type": "object", "additionalProperties": false, "required": ["x"]}),
            json!({"type": "object", "additionalProperties": false, "properties": {"x": {"type": "string"}}}),
        ];
        let out: Vec<String> = cases
            .iter()
            .map(|c| match Schema::parse(c) {
                Ok(_) => "ok".to_owned(),
                Err(e) => e.to_string(),
            })
            .collect();
        expect_test::expect![[r#"
            schema at /: objects must set additionalProperties: false
            schema at /: objects must set additionalProperties: false
            schema at /: strings need maxLength
            schema at /: keyword "pattern" is not supported here
            schema at /: integers need an integer maximum
            schema at /: minimum is over maximum
            schema at /: arrays need maxItems
            schema at /: type "null" is not supported
            schema at /: type must be one of the supported type names
            schema at /: required "x" is not a property
            schema at /properties/x: strings need maxLength"#]]
        .assert_eq(&out.join("\n"));
    }
}
