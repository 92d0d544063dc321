//! Field errors in Kubernetes' `field.ErrorList` style, and the checks several kinds share.
//!
//! Validation functions are pure: they take the object (and the old one on update) and return
//! every error found, each with the field path and a reason, so the admission webhook can deny
//! with the same message the Go implementation would give.

pub mod advancedcronjob;
pub mod broadcastjob;
pub mod cloneset;
pub mod daemonset;
pub mod imagepulljob;
pub mod nodeimage;
pub mod pod;
pub mod podprobemarker;
pub mod sidecarset;
pub mod workloadspread;

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// A path to a field: `spec.containers[0].name`, `metadata.labels[app]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    pub fn new(root: &str) -> Self {
        Self(root.to_string())
    }

    pub fn child(&self, name: &str) -> Self {
        Self(format!("{}.{name}", self.0))
    }

    pub fn index(&self, i: usize) -> Self {
        Self(format!("{}[{i}]", self.0))
    }

    pub fn key(&self, k: &str) -> Self {
        Self(format!("{}[{k}]", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The kinds of field error Kubernetes reports, with its wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    Required,
    Invalid,
    NotSupported,
    Duplicate,
    Forbidden,
    TooMany,
}

impl ErrorType {
    fn phrase(self) -> &'static str {
        match self {
            ErrorType::Required => "Required value",
            ErrorType::Invalid => "Invalid value",
            ErrorType::NotSupported => "Unsupported value",
            ErrorType::Duplicate => "Duplicate value",
            ErrorType::Forbidden => "Forbidden",
            ErrorType::TooMany => "Too many",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub type_: ErrorType,
    pub field: String,
    /// The offending value, rendered (quoted for strings), where the error type shows one.
    pub bad_value: Option<String>,
    pub detail: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.type_.phrase())?;
        if let Some(v) = &self.bad_value {
            write!(f, ": {v}")?;
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

pub type ErrorList = Vec<FieldError>;

/// All errors in one message, `; `-separated, as an admission denial shows them.
pub fn join(errors: &[FieldError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

fn quoted(v: &str) -> String {
    format!("{v:?}")
}

pub fn required(path: &FieldPath, detail: &str) -> FieldError {
    FieldError { type_: ErrorType::Required, field: path.to_string(), bad_value: None, detail: detail.into() }
}

pub fn invalid(path: &FieldPath, value: impl fmt::Display, detail: &str) -> FieldError {
    FieldError {
        type_: ErrorType::Invalid,
        field: path.to_string(),
        bad_value: Some(quoted(&value.to_string())),
        detail: detail.into(),
    }
}

pub fn not_supported(path: &FieldPath, value: &str, supported: &[&str]) -> FieldError {
    let list = supported.iter().map(|s| quoted(s)).collect::<Vec<_>>().join(", ");
    FieldError {
        type_: ErrorType::NotSupported,
        field: path.to_string(),
        bad_value: Some(quoted(value)),
        detail: format!("supported values: {list}"),
    }
}

pub fn duplicate(path: &FieldPath, value: &str) -> FieldError {
    FieldError {
        type_: ErrorType::Duplicate,
        field: path.to_string(),
        bad_value: Some(quoted(value)),
        detail: String::new(),
    }
}

pub fn forbidden(path: &FieldPath, detail: &str) -> FieldError {
    FieldError { type_: ErrorType::Forbidden, field: path.to_string(), bad_value: None, detail: detail.into() }
}

/// More entries than allowed.
pub fn too_many(path: &FieldPath, max: usize) -> FieldError {
    FieldError {
        type_: ErrorType::TooMany,
        field: path.to_string(),
        bad_value: None,
        detail: format!("must have at most {max} items"),
    }
}

// ---- name and label syntax (k8s.io/apimachinery/pkg/util/validation) ----

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters.
fn is_qualified_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(is_alnum)
        && s.ends_with(is_alnum)
        && s.chars().all(|c| is_alnum(c) || matches!(c, '-' | '_' | '.'))
}

/// A DNS-1123 subdomain: lower-case alphanumerics, `-` and `.`, at most 253 characters, starting
/// and ending alphanumeric, each dot-separated label non-empty.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253
        && !s.is_empty()
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && label.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && label.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

/// Why `s` is not a qualified name (`name` or `prefix/name`), as label keys, annotation keys and
/// condition types must be: one reason per broken part, as Kubernetes reports them. Empty when
/// it is one.
pub fn qualified_name_errors(s: &str) -> Vec<String> {
    let mut reasons = Vec::new();
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if p.is_empty() {
            reasons.push("prefix part must be non-empty".into());
        } else if !is_dns1123_subdomain(p) {
            reasons.push("prefix part must be a lowercase RFC 1123 subdomain".into());
        }
    }
    if name.is_empty() {
        reasons.push("name part must be non-empty".into());
    } else if name.contains('/') || !is_qualified_name_part(name) {
        reasons.push(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an \
             alphanumeric character, at most 63 characters"
                .into(),
        );
    }
    reasons
}

/// The first reason `s` is not a qualified name, if any.
pub fn qualified_name_error(s: &str) -> Option<String> {
    qualified_name_errors(s).into_iter().next()
}

/// A label value: empty, or a qualified name part.
pub fn label_value_error(v: &str) -> Option<String> {
    if v.is_empty() || is_qualified_name_part(v) {
        None
    } else {
        Some(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and \
             must start and end with an alphanumeric character, at most 63 characters"
                .into(),
        )
    }
}

/// Label keys and values.
pub fn validate_labels<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>, path: &FieldPath) -> ErrorList {
    let mut errs = ErrorList::new();
    for (k, v) in labels {
        errs.extend(qualified_name_errors(k).iter().map(|reason| invalid(path, k, reason)));
        if let Some(reason) = label_value_error(v) {
            errs.push(invalid(&path.key(k), v, &reason));
        }
    }
    errs
}

/// Annotation keys (values are free-form; the 256 KiB total is left to the API server).
pub fn validate_annotation_keys<'a>(keys: impl IntoIterator<Item = &'a String>, path: &FieldPath) -> ErrorList {
    keys.into_iter()
        .flat_map(|k| qualified_name_errors(&k.to_lowercase()).into_iter().map(move |reason| invalid(path, k, &reason)))
        .collect()
}

/// A label selector as `metav1.LabelSelectorAsSelector` accepts it.
pub fn validate_label_selector(sel: &LabelSelector, path: &FieldPath) -> ErrorList {
    let mut errs = ErrorList::new();
    if let Some(labels) = &sel.match_labels {
        errs.extend(validate_labels(labels, &path.child("matchLabels")));
    }
    for (i, expr) in sel.match_expressions.iter().flatten().enumerate() {
        let p = path.child("matchExpressions").index(i);
        if let Some(reason) = qualified_name_error(&expr.key) {
            errs.push(invalid(&p.child("key"), &expr.key, &reason));
        }
        let values = expr.values.as_deref().unwrap_or_default();
        match expr.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                errs.push(required(&p.child("values"), "must be specified when `operator` is 'In' or 'NotIn'"))
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => errs.push(forbidden(
                &p.child("values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errs.push(not_supported(&p.child("operator"), other, &["In", "NotIn", "Exists", "DoesNotExist"])),
        }
        for (j, v) in values.iter().enumerate() {
            if let Some(reason) = label_value_error(v) {
                errs.push(invalid(&p.child("values").index(j), v, &reason));
            }
        }
    }
    errs
}

/// The checks every workload with a selector and a pod template shares: the selector is present,
/// valid, non-empty and matches the template's labels; the template's restartPolicy is Always (or
/// unset); it has no activeDeadlineSeconds; and the pod spec passes [`pod::validate_pod_spec`]
/// (with `extra_volumes` mountable, e.g. claim templates).
pub fn validate_selector_and_template(
    selector: &LabelSelector,
    template: &k8s_openapi::api::core::v1::PodTemplateSpec,
    spec: &FieldPath,
    extra_volumes: &[&str],
) -> ErrorList {
    let mut errs = ErrorList::new();
    let sel_path = spec.child("selector");
    if selector_is_empty(selector) {
        errs.push(invalid(&sel_path, "{}", "empty selector is invalid for this workload"));
    } else {
        let sel_errs = validate_label_selector(selector, &sel_path);
        let labels = template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
        if sel_errs.is_empty() && !crate::api::selector::matches(selector, &labels) {
            errs.push(invalid(
                &spec.child("template").child("metadata").child("labels"),
                format!("{labels:?}"),
                "`selector` does not match template `labels`",
            ));
        }
        errs.extend(sel_errs);
    }
    let pod = spec.child("template").child("spec");
    match &template.spec {
        None => errs.push(required(&pod, "")),
        Some(ps) => {
            if let Some(other) = ps.restart_policy.as_deref().filter(|p| *p != "Always") {
                errs.push(not_supported(&pod.child("restartPolicy"), other, &["Always"]));
            }
            if ps.active_deadline_seconds.is_some() {
                errs.push(forbidden(
                    &pod.child("activeDeadlineSeconds"),
                    "activeDeadlineSeconds in this workload is not Supported",
                ));
            }
            errs.extend(pod::validate_pod_spec(ps, &pod, extra_volumes));
        }
    }
    errs
}

/// Scatter terms: key required, no key=value pair twice.
pub fn validate_scatter_strategy(terms: &[crate::api::common::UpdateScatterTerm], path: &FieldPath) -> ErrorList {
    let mut errs = ErrorList::new();
    let mut seen = std::collections::HashSet::new();
    for (i, t) in terms.iter().enumerate() {
        let tp = path.index(i);
        if t.key.is_empty() {
            errs.push(required(&tp.child("key"), ""));
        } else if !seen.insert((t.key.as_str(), t.value.as_str())) {
            errs.push(duplicate(&tp, &format!("{}={}", t.key, t.value)));
        }
    }
    errs
}

/// Update priorities: weights or ordered keys, not both; weights 0-100 with a non-empty valid
/// selector; ordered keys non-empty.
pub fn validate_update_priority(p: &crate::api::common::UpdatePriorityStrategy, path: &FieldPath) -> ErrorList {
    let mut errs = ErrorList::new();
    let weights = p.weight_priority.as_deref().unwrap_or_default();
    let orders = p.order_priority.as_deref().unwrap_or_default();
    if !weights.is_empty() && !orders.is_empty() {
        errs.push(forbidden(path, "only one of weightPriority and orderPriority can be used"));
    }
    for (i, w) in weights.iter().enumerate() {
        let wp = path.child("weightPriority").index(i);
        if !(0..=100).contains(&w.weight) {
            errs.push(invalid(&wp.child("weight"), w.weight, "weight must be valid number in the range 1-100"));
        }
        if selector_is_empty(&w.match_selector) {
            errs.push(required(&wp.child("matchSelector"), "selector can not be empty"));
        } else {
            errs.extend(validate_label_selector(&w.match_selector, &wp.child("matchSelector")));
        }
    }
    for (i, o) in orders.iter().enumerate() {
        if o.ordered_key.is_empty() {
            errs.push(required(
                &path.child("orderPriority").index(i).child("orderedKey"),
                "order key can not be empty",
            ));
        }
    }
    errs
}

/// Whether `name` is a DNS subdomain, else an error at `metadata.name`.
pub fn validate_dns_subdomain_name(name: Option<&str>) -> ErrorList {
    let name = name.unwrap_or_default();
    if is_dns1123_subdomain(name) {
        vec![]
    } else {
        vec![invalid(&FieldPath::new("metadata").child("name"), name, "must be a lowercase RFC 1123 subdomain")]
    }
}

/// Whether a selector selects nothing in particular (no labels, no expressions).
pub fn selector_is_empty(sel: &LabelSelector) -> bool {
    sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty())
}

/// An int-or-percent that must be a non-negative integer or `^[0-9]+%$` (upstream's check; values
/// over 100% pass).
pub fn validate_non_negative_int_or_percent(v: &IntOrString, path: &FieldPath) -> ErrorList {
    match v {
        IntOrString::Int(i) if *i < 0 => vec![invalid(path, i, "must be greater than or equal to 0")],
        IntOrString::Int(_) => vec![],
        IntOrString::String(s) => {
            let ok = s.strip_suffix('%').is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
            if ok { vec![] } else { vec![invalid(path, s, "must be an integer or percentage (e.g '5%')")] }
        }
    }
}

/// An int-or-percent resolved against `total`, as Kubernetes' `GetScaledValueFromIntOrPercent`:
/// integers as they are; `N%` of `total`, rounded up or down.
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let pct: i64 = s
                .strip_suffix('%')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("invalid value for IntOrString: invalid value {s:?}"))?;
            let scaled = pct * i64::from(total);
            let v = if round_up { (scaled + 99).div_euclid(100) } else { scaled.div_euclid(100) };
            i32::try_from(v).map_err(|_| format!("{s} of {total} is out of range"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use std::collections::BTreeMap;

    #[test]
    fn errors_read_like_kubernetes() {
        let p = FieldPath::new("spec").child("containers").index(0).child("name");
        assert_eq!(required(&p, "").to_string(), "spec.containers[0].name: Required value");
        assert_eq!(
            invalid(&p, "a b", "bad name").to_string(),
            "spec.containers[0].name: Invalid value: \"a b\": bad name"
        );
        assert_eq!(
            not_supported(&FieldPath::new("spec.type"), "X", &["A", "B"]).to_string(),
            "spec.type: Unsupported value: \"X\": supported values: \"A\", \"B\""
        );
        assert_eq!(duplicate(&p, "x").to_string(), "spec.containers[0].name: Duplicate value: \"x\"");
    }

    #[test]
    fn qualified_names() {
        for ok in ["app", "game.kruise.io/idle", "a-b_c.d", "x/y", "A1"] {
            assert_eq!(qualified_name_error(ok), None, "{ok}");
        }
        for bad in ["", "-a", "a-", "#5invalid", "a/b/c", "/a", "UPPER.io/x", "server-/$healthy", &"a".repeat(64)] {
            assert!(qualified_name_error(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn label_selectors() {
        let mut sel = LabelSelector {
            match_labels: Some(BTreeMap::from([("app".into(), "web".into())])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["a".into()]),
            }]),
        };
        assert!(validate_label_selector(&sel, &FieldPath::new("spec.selector")).is_empty());
        sel.match_expressions = Some(vec![
            LabelSelectorRequirement { key: "tier".into(), operator: "In".into(), values: None },
            LabelSelectorRequirement { key: "x".into(), operator: "Exists".into(), values: Some(vec!["y".into()]) },
            LabelSelectorRequirement { key: "x".into(), operator: "Like".into(), values: None },
        ]);
        let errs = validate_label_selector(&sel, &FieldPath::new("spec.selector"));
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.selector.matchExpressions[0].values",
                "spec.selector.matchExpressions[1].values",
                "spec.selector.matchExpressions[2].operator"
            ]
        );
        assert!(selector_is_empty(&LabelSelector::default()));
    }

    #[test]
    fn int_or_percent() {
        let p = FieldPath::new("spec.x");
        for ok in [
            IntOrString::Int(0),
            IntOrString::Int(5),
            IntOrString::String("0%".into()),
            IntOrString::String("150%".into()),
        ] {
            assert!(validate_non_negative_int_or_percent(&ok, &p).is_empty(), "{ok:?}");
        }
        for bad in [
            IntOrString::Int(-1),
            IntOrString::String("10".into()),
            IntOrString::String("%".into()),
            IntOrString::String("-5%".into()),
            IntOrString::String("5.5%".into()),
        ] {
            assert_eq!(validate_non_negative_int_or_percent(&bad, &p).len(), 1, "{bad:?}");
        }
        assert_eq!(scaled_value(&IntOrString::String("10%".into()), 15, true), Ok(2));
        assert_eq!(scaled_value(&IntOrString::String("10%".into()), 15, false), Ok(1));
        assert_eq!(scaled_value(&IntOrString::String("10%".into()), 9, false), Ok(0));
        assert_eq!(scaled_value(&IntOrString::Int(3), 100, true), Ok(3));
        assert!(scaled_value(&IntOrString::String("ten".into()), 10, true).is_err());
    }
}
