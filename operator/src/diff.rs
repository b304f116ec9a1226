//! Does an observed object already say everything the desired one says?
//!
//! This is what lets a reconcile that has nothing to change send nothing to
//! the API server. Two checks, both needed:
//!
//! - the desired-hash annotation: when the operator's intent changed (a spec
//!   edit, an option removed, a new operator version) the hash differs and
//!   the object is applied, which also removes fields no longer wanted;
//! - a field-by-field containment test: when someone edited or removed a
//!   field the operator manages, the object is applied again to restore it.
//!
//! Fields other managers or the API server added (defaults, status, cluster
//! IPs, annotations of other tools) are not the operator's business and are
//! ignored. Quantities are compared by value, because the API server
//! rewrites them in canonical form (`0.5` becomes `500m`).

use serde_json::Value;

use crate::names::ANNOTATION_DESIRED_HASH;

/// Whether `desired` must be applied over `observed` (`None`: it does not exist).
pub fn needs_apply(desired: &Value, observed: Option<&Value>) -> bool {
    let Some(observed) = observed else {
        return true;
    };
    let hash = |v: &Value| v["metadata"]["annotations"][ANNOTATION_DESIRED_HASH].clone();
    hash(desired) != hash(observed) || !contains(desired, observed)
}

/// `desired ⊆ observed`: every field of `desired` is in `observed` with an
/// equal value. Lists of objects with a `name` (containers, ports, volumes,
/// env) match items by name, so an item another manager added does not
/// count as drift; other lists must match item by item.
pub fn contains(desired: &Value, observed: &Value) -> bool {
    match (desired, observed) {
        (Value::Object(want), Value::Object(have)) => {
            want.iter().all(|(key, value)| match have.get(key) {
                Some(seen) => contains(value, seen),
                None => is_empty(value),
            })
        }
        (Value::Object(want), Value::Null) => want.values().all(is_empty),
        (Value::Array(want), Value::Array(have)) => {
            if want.iter().all(|item| named(item).is_some()) {
                want.iter().all(|item| {
                    have.iter()
                        .find(|seen| named(seen) == named(item))
                        .is_some_and(|seen| contains(item, seen))
                })
            } else {
                want.len() == have.len() && want.iter().zip(have).all(|(w, h)| contains(w, h))
            }
        }
        (Value::Array(want), Value::Null) => want.is_empty(),
        (Value::String(want), Value::String(have)) => want == have || quantities_equal(want, have),
        (Value::Number(want), Value::String(have)) | (Value::String(have), Value::Number(want)) => {
            quantities_equal(&want.to_string(), have)
        }
        (want, have) => want == have,
    }
}

fn named(item: &Value) -> Option<&str> {
    item.get("name").and_then(Value::as_str)
}

/// Empty values that the API server does not store: wanting one is
/// satisfied by its absence.
fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.values().all(is_empty),
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

/// Whether two strings are the same Kubernetes quantity in different
/// spellings (`1Gi` and `1024Mi`, `0.5` and `500m`). Strings that are not
/// quantities are never equal here.
pub fn quantities_equal(a: &str, b: &str) -> bool {
    match (parse_quantity(a), parse_quantity(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// A quantity as an exact fraction: (numerator, power of ten to divide by).
/// Normalised so equal values compare equal.
fn parse_quantity(text: &str) -> Option<(i128, u32)> {
    let text = text.trim();
    let (number, suffix) = split_suffix(text)?;
    let (negative, digits) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number.strip_prefix('+').unwrap_or(number)),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if !int_part
        .bytes()
        .chain(frac_part.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut mantissa: i128 = 0;
    for b in int_part.bytes().chain(frac_part.bytes()) {
        mantissa = mantissa
            .checked_mul(10)?
            .checked_add(i128::from(b - b'0'))?;
    }
    // value = mantissa * 10^-frac * multiplier
    let mut scale = i32::try_from(frac_part.len()).ok()?;
    let (factor, exp10) = match suffix {
        Suffix::Binary(power) => (1i128.checked_shl(power)?, 0),
        Suffix::Decimal(exp) => (1, exp),
    };
    mantissa = mantissa.checked_mul(factor)?;
    scale -= exp10;
    while scale < 0 {
        mantissa = mantissa.checked_mul(10)?;
        scale += 1;
    }
    let mut scale = u32::try_from(scale).ok()?;
    while scale > 0 && mantissa % 10 == 0 {
        mantissa /= 10;
        scale -= 1;
    }
    if mantissa == 0 {
        scale = 0;
    }
    Some((if negative { -mantissa } else { mantissa }, scale))
}

enum Suffix {
    /// Multiply by 2^n.
    Binary(u32),
    /// Multiply by 10^n.
    Decimal(i32),
}

fn split_suffix(text: &str) -> Option<(&str, Suffix)> {
    const BINARY: [(&str, u32); 6] = [
        ("Ki", 10),
        ("Mi", 20),
        ("Gi", 30),
        ("Ti", 40),
        ("Pi", 50),
        ("Ei", 60),
    ];
    for (suffix, power) in BINARY {
        if let Some(n) = text.strip_suffix(suffix) {
            return Some((n, Suffix::Binary(power)));
        }
    }
    if let Some(pos) = text.find(['e', 'E']) {
        let exp: i32 = text[pos + 1..].parse().ok()?;
        return Some((&text[..pos], Suffix::Decimal(exp)));
    }
    const DECIMAL: [(char, i32); 8] = [
        ('n', -9),
        ('u', -6),
        ('m', -3),
        ('k', 3),
        ('M', 6),
        ('G', 9),
        ('T', 12),
        ('P', 15),
    ];
    for (suffix, exp) in DECIMAL {
        if let Some(n) = text.strip_suffix(suffix) {
            return Some((n, Suffix::Decimal(exp)));
        }
    }
    // `E` (exa) would be read as an exponent above; nobody asks for exabytes.
    Some((text, Suffix::Decimal(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities_compare_by_value() {
        for (a, b) in [
            ("1Gi", "1024Mi"),
            ("0.5", "500m"),
            ("1", "1000m"),
            ("1k", "1000"),
            ("10Gi", "10Gi"),
            ("1e3", "1k"),
            ("0", "0m"),
        ] {
            assert!(quantities_equal(a, b), "{a} == {b}");
        }
        for (a, b) in [("1Gi", "1G"), ("100m", "1"), ("abc", "abc"), ("1x", "1")] {
            assert!(!quantities_equal(a, b), "{a} != {b}");
        }
    }

    #[test]
    fn server_additions_are_not_drift() {
        let desired =
            json!({"spec": {"ports": [{"name": "rtmp", "port": 1935}], "type": "LoadBalancer"}});
        let observed = json!({"spec": {
            "ports": [{"name": "rtmp", "port": 1935, "nodePort": 31000, "protocol": "TCP"}],
            "type": "LoadBalancer", "clusterIP": "10.0.0.1"
        }, "status": {}});
        assert!(contains(&desired, &observed));
    }

    #[test]
    fn edited_or_removed_fields_are_drift() {
        let desired = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "ingest", "image": "a"}]}}}});
        let edited = json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "ingest", "image": "a"}]}}}});
        let removed = json!({"spec": {"template": {"spec": {"containers": [{"name": "ingest", "image": "a"}]}}}});
        let renamed = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "other", "image": "a"}]}}}});
        assert!(!contains(&desired, &edited));
        assert!(!contains(&desired, &removed));
        assert!(!contains(&desired, &renamed));
    }

    #[test]
    fn named_items_added_by_others_are_not_drift_but_atomic_lists_are() {
        let desired = json!({"containers": [{"name": "ingest"}], "args": ["rtmp", "--config"]});
        let with_sidecar = json!({"containers": [{"name": "mesh"}, {"name": "ingest"}], "args": ["rtmp", "--config"]});
        assert!(contains(&desired, &with_sidecar));
        let more_args =
            json!({"containers": [{"name": "ingest"}], "args": ["rtmp", "--config", "x"]});
        assert!(!contains(&desired, &more_args));
    }

    #[test]
    fn empty_wants_match_absence() {
        assert!(contains(&json!({"a": {}, "b": [], "c": null}), &json!({})));
        assert!(!contains(&json!({"a": {"b": 1}}), &json!({})));
    }

    #[test]
    fn hash_change_forces_an_apply_even_when_contained() {
        let observed = json!({"metadata": {"annotations": {ANNOTATION_DESIRED_HASH: "old"}}, "spec": {"x": 1, "y": 2}});
        // The new intent dropped `y`: containment alone would not notice.
        let desired = json!({"metadata": {"annotations": {ANNOTATION_DESIRED_HASH: "new"}}, "spec": {"x": 1}});
        assert!(needs_apply(&desired, Some(&observed)));
        let same = json!({"metadata": {"annotations": {ANNOTATION_DESIRED_HASH: "old"}}, "spec": {"x": 1}});
        assert!(!needs_apply(&same, Some(&observed)));
        assert!(needs_apply(&same, None));
    }
}
