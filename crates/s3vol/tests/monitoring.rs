//! The Grafana dashboard and the alert rules under deploy/monitoring name only metrics
//! and labels the code exports, and the dashboard shows every metric there is: a renamed
//! metric or label fails here, not silently in someone's Grafana.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Metric name → (kind, label names), from every `counter!`/`gauge!`/`histogram!` call
/// in the crates' sources.
fn exported() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut files = Vec::new();
    for c in std::fs::read_dir(repo().join("crates")).unwrap().flatten() {
        let src = c.path().join("src");
        if src.is_dir() {
            rust_sources(&src, &mut files);
        }
    }
    let mut out = BTreeMap::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for kind in ["counter", "gauge", "histogram"] {
            let pat = format!("{kind}!(");
            let mut rest = text.as_str();
            while let Some(i) = rest.find(&pat) {
                rest = &rest[i + pat.len()..];
                // The macro's arguments, up to its matching parenthesis.
                let mut depth = 1;
                let end = rest
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '(' => 1,
                            ')' => -1,
                            _ => 0,
                        };
                        depth == 0
                    })
                    .map_or(rest.len(), |(k, _)| k);
                let call = &rest[..end];
                let mut quoted = call.split('"').skip(1).step_by(2);
                let Some(name) = quoted.next().filter(|n| n.starts_with("s3vol_")) else { continue };
                // Labels are the quoted strings followed by `=>`.
                let labels: BTreeSet<String> = call
                    .split("=>")
                    .filter_map(|part| part.trim_end().strip_suffix('"').and_then(|s| s.rsplit('"').next()))
                    .map(str::to_string)
                    .collect();
                let entry = out.entry(name.to_string()).or_insert((kind.to_string(), BTreeSet::new()));
                entry.1.extend(labels);
            }
        }
    }
    out
}

/// Every `s3vol_...` metric reference in `text` with the label names of its selector.
fn references(text: &str) -> Vec<(String, BTreeSet<String>)> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(j) = text[i..].find("s3vol_") {
        let start = i + j;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase() || bytes[end].is_ascii_digit() || bytes[end] == b'_')
        {
            end += 1;
        }
        let name = text[start..end].to_string();
        let mut labels = BTreeSet::new();
        if bytes.get(end) == Some(&b'{') {
            let close = text[end..].find('}').map(|k| end + k).unwrap_or(text.len());
            for m in text[end + 1..close].split(',') {
                let key: String = m.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !key.is_empty() {
                    labels.insert(key);
                }
            }
        }
        out.push((name, labels));
        i = end.max(start + 1);
    }
    out
}

/// Label names in `by (...)` clauses.
fn grouping_labels(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("by (") {
        rest = &rest[i + 4..];
        let close = rest.find(')').unwrap_or(rest.len());
        out.extend(rest[..close].split(',').map(|l| l.trim().to_string()).filter(|l| !l.is_empty()));
    }
    out
}

fn check_file(path: &Path, exported: &BTreeMap<String, (String, BTreeSet<String>)>) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let shown = path.display();
    let mut used = BTreeSet::new();
    let mut all_labels: BTreeSet<String> = ["le".to_string()].into();
    for (name, labels) in references(&text) {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| exported.get(*b).is_some_and(|(k, _)| k == "histogram")))
            .unwrap_or(&name)
            .to_string();
        let (_, known) = exported.get(&base).unwrap_or_else(|| panic!("{shown}: {name} is not a metric s3vol exports"));
        for l in &labels {
            assert!(known.contains(l) || (l == "le" && name.ends_with("_bucket")), "{shown}: {name} has no label {l}");
        }
        all_labels.extend(known.iter().cloned());
        used.insert(base);
    }
    for l in grouping_labels(&text) {
        assert!(all_labels.contains(&l), "{shown}: grouping by {l}, which no referenced metric has");
    }
    used
}

#[test]
fn the_source_scan_finds_the_metrics_and_their_labels() {
    let e = exported();
    assert_eq!(e["s3vol_store_requests_total"].0, "counter");
    assert_eq!(e["s3vol_store_request_seconds"].0, "histogram");
    let labels: Vec<&str> = e["s3vol_store_requests_total"].1.iter().map(String::as_str).collect();
    assert_eq!(labels, ["op", "status", "volume"]);
    for (name, kind) in [
        ("s3vol_node_volume_abnormal", "gauge"),
        ("s3vol_node_server_replacements_total", "counter"),
        ("s3vol_node_handovers_total", "counter"),
        ("s3vol_node_repair_failures_total", "counter"),
        ("s3vol_csi_call_seconds", "histogram"),
    ] {
        assert_eq!(e.get(name).map(|(k, _)| k.as_str()), Some(kind), "{name}: {e:?}");
    }
}

#[test]
fn dashboard_and_alerts_name_only_exported_metrics_and_labels() {
    let e = exported();
    let dir = repo().join("deploy/monitoring");
    let dashboard = dir.join("grafana-dashboard.json");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&dashboard).unwrap()).unwrap();
    let panels = json["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    for p in panels {
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("panel {} has no targets", p["title"]));
        assert!(targets.iter().all(|t| t["expr"].as_str().is_some_and(|x| x.contains("s3vol_"))), "{}", p["title"]);
    }
    let shown = check_file(&dashboard, &e);
    let missing: Vec<&String> = e.keys().filter(|m| !shown.contains(*m)).collect();
    assert!(missing.is_empty(), "metrics the dashboard does not show: {missing:?}");

    let rules = dir.join("prometheusrule.yaml");
    let alerted = check_file(&rules, &e);
    for m in ["s3vol_node_volume_abnormal", "s3vol_store_requests_total", "s3vol_node_server_replacements_total"] {
        assert!(alerted.contains(m), "no alert on {m}");
    }
}

#[test]
fn a_wrong_name_or_label_would_be_caught() {
    let e = exported();
    let dir = tempfile::tempdir().unwrap();
    for (bad, why) in [
        ("rate(s3vol_store_request_total[5m])", "not a metric"),
        ("rate(s3vol_store_requests_total{pv=\"x\"}[5m])", "has no label pv"),
        ("sum by (node) (s3vol_node_volume_abnormal)", "grouping by node"),
    ] {
        let p = dir.path().join("rule.yaml");
        std::fs::write(&p, format!("expr: {bad}\n")).unwrap();
        let caught = std::panic::catch_unwind(|| check_file(&p, &e)).expect_err(bad);
        let msg = caught.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains(why), "{bad}: {msg}");
    }
}
