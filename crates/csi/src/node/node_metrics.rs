//! The node plugin's own metrics, beside the servers' store metrics: how often servers
//! were replaced (and whether pods kept their mount), handovers, and which volumes are
//! abnormal now, so dashboards and alerts see what the kubelet's VolumeCondition shows.

/// A dead server was replaced: `takeover` (a successor on the same connection, pods saw a
/// pause) or `remount` (a new connection; pods with private propagation lose the volume).
pub fn server_replaced(volume_id: &str, how: &str) {
    let kind = if how.contains("took over") { "takeover" } else { "remount" };
    metrics::counter!("s3vol_node_server_replacements_total", "volume" => volume_id.to_string(), "kind" => kind)
        .increment(1);
}

/// A repair failed (it is retried at the next health check).
pub fn repair_failed(volume_id: &str) {
    metrics::counter!("s3vol_node_repair_failures_total", "volume" => volume_id.to_string()).increment(1);
}

/// A graceful handover to a new server ended (`ok` or `failed`).
pub fn handover(volume_id: &str, ok: bool) {
    let result = if ok { "ok" } else { "failed" };
    metrics::counter!("s3vol_node_handovers_total", "volume" => volume_id.to_string(), "result" => result).increment(1);
}

/// Whether the volume is abnormal now (1) or healthy (0).
pub fn abnormal(volume_id: &str, yes: bool) {
    metrics::gauge!("s3vol_node_volume_abnormal", "volume" => volume_id.to_string()).set(if yes { 1.0 } else { 0.0 });
}
