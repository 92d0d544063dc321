//! Reading the Prometheus text format that kruise-manager, kruise-daemon and kube-apiserver serve
//! on /metrics: one parser for the tests, the demo and the load tests.

/// The samples of `body`: metric name, the labels as written between the braces (empty when there
/// are none), and the value. Comments and malformed lines are skipped.
pub fn samples(body: &str) -> impl Iterator<Item = (&str, &str, f64)> {
    body.lines().filter(|l| !l.starts_with('#')).filter_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let value = value.parse().ok()?;
        match series.split_once('{') {
            Some((name, labels)) => Some((name, labels.strip_suffix('}')?, value)),
            None => Some((series, "", value)),
        }
    })
}

/// The sum of every sample of metric `name` whose labels contain `label` (e.g. `result="failed"`;
/// empty: all of them), or None when there is none.
pub fn sum(body: &str, name: &str, label: &str) -> Option<f64> {
    samples(body).filter(|(n, labels, _)| *n == name && labels.contains(label)).map(|(_, _, v)| v).reduce(|a, b| a + b)
}

/// The value of label `key` in a sample's labels (as [`samples`] gives them).
pub fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    // Values may hold commas and escaped quotes: walk the `key="value"` pairs.
    let mut rest = labels;
    loop {
        let (k, after) = rest.split_once("=\"")?;
        let end = closing_quote(after)?;
        if k.trim_start_matches(',') == key {
            return Some(&after[..end]);
        }
        rest = &after[end + 1..];
    }
}

/// The index of the quote that ends a label value, skipping escaped ones.
fn closing_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '"' if !escaped => return Some(i),
            _ => escaped = false,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "# HELP x_total X.\n# TYPE x_total counter\nx_total{verb=\"GET\",path=\"/a,b\"} 2\nx_total{verb=\"PUT\",msg=\"say \\\"hi\\\"\"} 3\nx_total_bucket{le=\"1\"} 9\nup 1\n";

    #[test]
    fn samples_sums_and_labels() {
        assert_eq!(samples(BODY).count(), 4);
        assert_eq!(sum(BODY, "x_total", ""), Some(5.0), "every series, and not x_total_bucket");
        assert_eq!(sum(BODY, "x_total", "verb=\"PUT\""), Some(3.0));
        assert_eq!(sum(BODY, "up", ""), Some(1.0));
        assert_eq!(sum(BODY, "down", ""), None);
        let (_, labels, _) = samples(BODY).nth(1).unwrap();
        assert_eq!(label(labels, "msg"), Some("say \\\"hi\\\""));
        assert_eq!(label(labels, "verb"), Some("PUT"));
        let (_, labels, _) = samples(BODY).next().unwrap();
        assert_eq!(label(labels, "path"), Some("/a,b"));
        assert_eq!(label(labels, "nope"), None);
    }
}
