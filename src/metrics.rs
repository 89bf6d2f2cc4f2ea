//! CloudWatch Embedded Metric Format: one JSON line per route and batch, printed to stdout,
//! which Lambda ships to CloudWatch Logs and CloudWatch turns into metrics. Dimensions are
//! bounded (route, shard, retry reason); sequence numbers never appear.

use serde_json::{json, Map, Value};

use crate::replicate::BatchReport;

/// The EMF lines for one batch.
pub fn emf_lines(report: &BatchReport, namespace: &str, now_ms: i64) -> Vec<String> {
    let mut lines = Vec::new();
    for r in &report.routes {
        let behind_ms = r
            .newest_arrival_ms
            .map(|t| (now_ms - t).max(0))
            .unwrap_or(0);
        let metrics: [(&str, &str, f64); 11] = [
            ("RecordsReplicated", "Count", r.written as f64),
            ("BytesReplicated", "Bytes", r.bytes_written as f64),
            ("RecordsDeadLettered", "Count", r.dead_lettered as f64),
            ("RecordsSkippedAlreadyReplicated", "Count", r.skipped as f64),
            ("PossibleDuplicates", "Count", r.possible_duplicates as f64),
            ("RunRepairs", "Count", r.repairs as f64),
            ("AggregatedRecordsSplit", "Count", r.split_records as f64),
            ("PutRecordsRequests", "Count", r.requests as f64),
            (
                "BatchDuration",
                "Milliseconds",
                report.duration.as_secs_f64() * 1000.0,
            ),
            ("MillisBehindNewest", "Milliseconds", behind_ms as f64),
            (
                "ShardStopped",
                "Count",
                if r.stop.is_some() { 1.0 } else { 0.0 },
            ),
        ];
        let mut body = Map::new();
        body.insert(
            "_aws".into(),
            json!({
                "Timestamp": now_ms,
                "CloudWatchMetrics": [{
                    "Namespace": namespace,
                    "Dimensions": [["Route"], ["Route", "Shard"]],
                    "Metrics": metrics.iter().map(|(n, u, _)| json!({"Name": n, "Unit": u})).collect::<Vec<_>>(),
                }],
            }),
        );
        body.insert("Route".into(), Value::from(r.route.as_str()));
        body.insert("Shard".into(), Value::from(r.shard_id.as_str()));
        for (name, _, value) in metrics {
            body.insert(name.into(), Value::from(value));
        }
        if let Some(stop) = &r.stop {
            body.insert("StopReason".into(), Value::from(stop.kind()));
        }
        lines.push(Value::Object(body).to_string());
        for (reason, count) in &r.retries {
            lines.push(
                json!({
                    "_aws": {
                        "Timestamp": now_ms,
                        "CloudWatchMetrics": [{
                            "Namespace": namespace,
                            "Dimensions": [["Route", "Reason"]],
                            "Metrics": [{"Name": "Retries", "Unit": "Count"}],
                        }],
                    },
                    "Route": r.route,
                    "Reason": reason,
                    "Retries": count,
                })
                .to_string(),
            );
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replicate::{RouteReport, StopReason};

    #[test]
    fn one_line_per_route_plus_one_per_retry_reason_with_bounded_dimensions() {
        let mut retries = std::collections::BTreeMap::new();
        retries.insert("ProvisionedThroughputExceededException".to_owned(), 7);
        let report = BatchReport {
            routes: vec![RouteReport {
                route: "a--222222222222--b".into(),
                shard_id: "shardId-000000000001".into(),
                written: 10,
                bytes_written: 1000,
                retries,
                newest_arrival_ms: Some(1_000),
                stop: Some(StopReason::Deadline),
                ..RouteReport::default()
            }],
            ..BatchReport::default()
        };
        let lines = emf_lines(&report, "fanout", 3_500);
        assert_eq!(lines.len(), 2);
        let main: Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(main["RecordsReplicated"], 10.0);
        assert_eq!(main["MillisBehindNewest"], 2500.0);
        assert_eq!(main["StopReason"], "deadline");
        assert_eq!(main["_aws"]["CloudWatchMetrics"][0]["Namespace"], "fanout");
        let names: Vec<&str> = main["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["Name"].as_str().unwrap())
            .collect();
        for n in &names {
            assert!(main.get(*n).is_some(), "metric {n} has a value");
        }
        let retry: Value = serde_json::from_str(&lines[1]).unwrap();
        assert_eq!(retry["Reason"], "ProvisionedThroughputExceededException");
        assert_eq!(retry["Retries"], 7);
    }
}
