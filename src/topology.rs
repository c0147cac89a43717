//! NIC priority matrix parsing and discovery (spec §3.4).

use crate::error::{Error, Result};
use crate::metadata::descriptor::PriorityMatrix;

/// Parse `{"cpu:0": [["mlx5_0"], ["mlx5_1"]], ...}`; every value must be a
/// two-element array of string arrays, else `ERR_MALFORMED_JSON`.
pub fn parse_matrix(json: &str) -> Result<PriorityMatrix> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| Error::MalformedJson(format!("priority matrix is not JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| Error::MalformedJson("priority matrix must be a JSON object".into()))?;
    let mut m = PriorityMatrix::new();
    for (loc, val) in obj {
        let pair = val.as_array().filter(|a| a.len() == 2).ok_or_else(|| {
            Error::MalformedJson(format!(
                "priority matrix entry '{loc}' must be [[preferred], [available]]"
            ))
        })?;
        let list = |x: &serde_json::Value| -> Result<Vec<String>> {
            x.as_array()
                .ok_or_else(|| {
                    Error::MalformedJson(format!("entry '{loc}': expected an array of names"))
                })?
                .iter()
                .map(|n| {
                    n.as_str().map(str::to_string).ok_or_else(|| {
                        Error::MalformedJson(format!("entry '{loc}': device names must be strings"))
                    })
                })
                .collect()
        };
        m.insert(loc.clone(), (list(&pair[0])?, list(&pair[1])?));
    }
    Ok(m)
}

/// HCA list in resolution order: first appearance while walking entries,
/// preferred before available (spec §3.4). BTreeMap order makes it stable.
pub fn hca_list(m: &PriorityMatrix) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (pref, avail) in m.values() {
        for n in pref.iter().chain(avail.iter()) {
            if !out.contains(n) {
                out.push(n.clone());
            }
        }
    }
    out
}

/// A matrix for `devices`: every device preferred for `cpu:0` and `*`
/// (NUMA placement is not visible for software NICs).
pub fn matrix_for(devices: &[String]) -> PriorityMatrix {
    let mut m = PriorityMatrix::new();
    if devices.is_empty() {
        return m;
    }
    for loc in ["cpu:0", "*"] {
        m.insert(loc.to_string(), (devices.to_vec(), Vec::new()));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let m = parse_matrix(r#"{"cpu:0": [["a","b"], ["c"]], "cpu:1": [["c"], []]}"#).unwrap();
        assert_eq!(hca_list(&m), vec!["a", "b", "c"]);
        assert!(matches!(parse_matrix("[1]"), Err(Error::MalformedJson(_))));
        assert!(matches!(
            parse_matrix(r#"{"cpu:0": [["a"]]}"#),
            Err(Error::MalformedJson(_))
        ));
        assert!(matches!(
            parse_matrix(r#"{"cpu:0": [[1], []]}"#),
            Err(Error::MalformedJson(_))
        ));
        assert!(matches!(
            parse_matrix("not json"),
            Err(Error::MalformedJson(_))
        ));
    }
}
