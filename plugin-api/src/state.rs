//! Reading a stored state into a paglet type without losing data: [`read`] fills only the
//! fields the type reports missing (from its default, at any depth) and refuses a state
//! holding keys the type would ignore. `Paglet::upgrade` uses it by default.

use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};

use crate::error::PagletError;

/// How many missing fields one read fills at most (each costs one more pass).
const MAX_FILLS: usize = 1_000;

/// Reads `state` as a `T`:
///
/// - a field `T` has and `state` lacks (a new field, nested ones included) takes its value
///   from `T::default()`; a field renamed with `#[serde(alias = "old")]` is read under its old
///   name, as serde does;
/// - a key `T` would ignore, at any depth, would be lost with the next save: the read fails
///   with [`PagletError::DropsKeys`] naming every such key (`a.b` for nested ones; the keys of
///   a map are data, not lost keys);
/// - anything else serde rejects is [`PagletError::InvalidArgs`], naming where.
///
/// A field missing inside a collection element (a `Vec`, a map value) has no default to take
/// its value from: give it `#[serde(default)]`, or write an `upgrade`.
pub fn read<T: DeserializeOwned + Serialize + Default>(mut state: Value) -> Result<T, PagletError> {
    let mut default: Option<Value> = None;
    for _ in 0..MAX_FILLS {
        let mut dropped = Vec::new();
        let result: Result<T, _> = {
            let mut note = |path: serde_ignored::Path<'_>| dropped.push(key_path(&path));
            let de = serde_ignored::Deserializer::new(&state, &mut note);
            serde_path_to_error::deserialize(de)
        };
        let err = match result {
            Ok(value) if dropped.is_empty() => return Ok(value),
            Ok(_) => {
                dropped.sort();
                return Err(PagletError::DropsKeys { keys: dropped });
            }
            Err(err) => err,
        };
        let at = segments(err.path());
        let message = err.inner().to_string();
        let Some(field) = missing_field(&message) else {
            return Err(PagletError::InvalidArgs(located(&at, &message)));
        };
        let default = match &mut default {
            Some(default) => default,
            None => default.insert(serde_json::to_value(T::default()).map_err(|e| {
                PagletError::Failed(format!("the default state does not serialize: {e}"))
            })?),
        };
        let fill = object_at(default, &at)
            .and_then(|object| object.get(field))
            .cloned()
            .ok_or_else(|| {
                PagletError::InvalidArgs(located(
                    &at,
                    &format!("{message}, and the default state has no value for it there"),
                ))
            })?;
        let target = object_at(&mut state, &at)
            .ok_or_else(|| PagletError::InvalidArgs(located(&at, &message)))?;
        target.insert(field.to_string(), fill);
    }
    Err(PagletError::InvalidArgs(format!(
        "more than {MAX_FILLS} fields are missing"
    )))
}

/// One step of the path serde was at when it failed.
enum Step {
    Key(String),
    Index(usize),
}

fn segments(path: &serde_path_to_error::Path) -> Vec<Step> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|segment| match segment {
            Segment::Map { key } => Some(Step::Key(key.clone())),
            Segment::Enum { variant } => Some(Step::Key(variant.clone())),
            Segment::Seq { index } => Some(Step::Index(*index)),
            Segment::Unknown => None,
        })
        .collect()
}

/// The object at `at` inside `value`. An enum variant's name is a key only where the value
/// holds it (externally tagged enums); otherwise the step is skipped.
fn object_at<'v>(value: &'v mut Value, at: &[Step]) -> Option<&'v mut Map<String, Value>> {
    let mut here = value;
    for step in at {
        here = match step {
            Step::Key(key) => {
                if !here.as_object()?.contains_key(key) {
                    continue;
                }
                here.as_object_mut()?.get_mut(key)?
            }
            Step::Index(i) => here.as_array_mut()?.get_mut(*i)?,
        };
    }
    here.as_object_mut()
}

fn located(at: &[Step], message: &str) -> String {
    if at.is_empty() {
        return message.to_string();
    }
    let path: Vec<String> = at
        .iter()
        .map(|step| match step {
            Step::Key(key) => key.clone(),
            Step::Index(i) => i.to_string(),
        })
        .collect();
    format!("{}: {message}", path.join("."))
}

/// `field` from serde's "missing field `field`".
fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

/// A dropped key as `a.b.c`: map keys and field names joined by dots, array indices as
/// numbers, `Option` and newtype layers left out.
fn key_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    fn walk(path: &Path<'_>, out: &mut Vec<String>) {
        match path {
            Path::Root => {}
            Path::Seq { parent, index } => {
                walk(parent, out);
                out.push(index.to_string());
            }
            Path::Map { parent, key } => {
                walk(parent, out);
                out.push(key.clone());
            }
            Path::Some { parent }
            | Path::NewtypeStruct { parent }
            | Path::NewtypeVariant { parent } => walk(parent, out),
        }
    }
    let mut out = Vec::new();
    walk(path, &mut out);
    out.join(".")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};
    use serde_json::json;

    use super::read;
    use crate::error::PagletError;

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    struct Inner {
        a: u32,
        b: u32,
    }

    #[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
    struct State {
        #[serde(alias = "title")]
        name: String,
        inner: Inner,
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        items: BTreeMap<String, u32>,
    }

    #[test]
    fn an_alias_reads_the_old_name_and_nested_fields_get_their_defaults() {
        let state: State =
            read(json!({"title": "t", "inner": {"a": 3}, "items": {"k": 1}})).expect("read");
        assert_eq!(state.name, "t");
        assert_eq!(state.inner, Inner { a: 3, b: 0 });
        assert_eq!(state.items["k"], 1);
        assert_eq!(state.note, None);
    }

    #[test]
    fn missing_top_level_fields_come_from_the_default() {
        let state: State = read(json!({})).expect("read");
        assert_eq!(state, State::default());
    }

    #[test]
    fn ignored_keys_are_named_at_any_depth_and_map_keys_are_data() {
        let err = read::<State>(json!({
            "name": "n", "gone": 1, "inner": {"a": 1, "b": 2, "old": true},
            "items": {"any-key": 5}
        }))
        .expect_err("drops keys");
        assert_eq!(
            err,
            PagletError::DropsKeys {
                keys: vec!["gone".into(), "inner.old".into()]
            }
        );
    }

    #[test]
    fn a_state_of_the_wrong_shape_is_invalid_and_says_where() {
        let err = read::<State>(json!({"inner": {"a": "x", "b": 1}})).expect_err("bad type");
        match err {
            PagletError::InvalidArgs(message) => {
                assert!(message.starts_with("inner.a: invalid type"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_field_in_a_collection_element_is_invalid() {
        #[derive(Debug, Default, Serialize, Deserialize)]
        struct List {
            rows: Vec<Inner>,
        }
        let err = read::<List>(json!({"rows": [{"a": 1}]})).expect_err("no default");
        assert!(
            matches!(&err, PagletError::InvalidArgs(m) if m.contains("rows.0") && m.contains("missing field `b`")),
            "{err:?}"
        );
    }
}
