//! Correlation ids end to end on Apache Kafka: trades sent with a `traceparent` header run
//! through `waterline run` with `correlation_id = { header = "traceparent" }`; their ids
//! come back as `waterline-correlation-id` headers on the window results, dead letters
//! (malformed payloads too: the id is in the header) and late records they produced.

mod common;

use std::collections::BTreeMap;

use common::kafka::*;

/// The traceparent sent with record `offset` of `partition`.
fn traceparent(partition: usize, offset: usize) -> String {
    format!(
        "00-{:032x}-{:016x}-01",
        partition * 1_000_000 + offset,
        offset + 1
    )
}

#[test]
fn ids_sent_as_headers_come_back_on_results_dead_letters_and_late_records() {
    const PARTITIONS: usize = 2;
    let (input, out, dlq, late) = (
        unique("corr-in"),
        unique("corr-windows"),
        unique("corr-dlq"),
        unique("corr-late"),
    );
    create_topic(&input, PARTITIONS as i32);
    let (records, inputs) = split(trades(17, PARTITIONS, 1_500));
    // Every valid trade has an id; every other invalid record has none.
    let mut sent: BTreeMap<(i64, i64), String> = BTreeMap::new();
    let mut with_headers = Vec::new();
    for (p, records) in records.into_iter().enumerate() {
        let mut part = Vec::new();
        for (o, kv) in records.into_iter().enumerate() {
            let valid = inputs[p][o].truth.is_ok();
            let headers = if valid || o % 2 == 0 {
                let id = traceparent(p, o);
                sent.insert((p as i64, o as i64), id.clone());
                vec![
                    ("other".to_string(), b"x".to_vec()),
                    ("traceparent".to_string(), id.into_bytes()),
                ]
            } else {
                Vec::new()
            };
            part.push((kv, headers));
        }
        with_headers.push(part);
    }
    produce_with_headers(&input, &with_headers);
    // Which event each id belongs to: (time, key).
    let events: BTreeMap<&str, (u64, &str)> = sent
        .iter()
        .filter_map(
            |((p, o), id)| match &inputs[*p as usize][*o as usize].truth {
                Ok((t, key, _)) => Some((id.as_str(), (*t, key.as_str()))),
                Err(_) => None,
            },
        )
        .collect();

    let dir = tempfile::tempdir().expect("temp dir");
    let dataflow = trades_dataflow(dir.path(), &input, &out, &dlq, &late);
    let text = std::fs::read_to_string(&dataflow).expect("read the dataflow");
    assert!(text.contains("start_from = \"earliest\""));
    std::fs::write(
        &dataflow,
        text.replace(
            "start_from = \"earliest\"",
            "start_from = \"earliest\"\ncorrelation_id = { header = \"traceparent\" }",
        ),
    )
    .expect("write the dataflow");
    let run = waterline(&[
        "run",
        "--dataflow",
        dataflow.to_str().expect("utf-8 path"),
        "--stop-at-end",
        "-w",
        "2",
    ]);
    assert!(run.status.success(), "the run succeeds");

    let (mut results, mut letters, mut lates, mut without) = (0, 0, 0, 0);
    for ((topic, _, _, payload), headers) in consume_all_with_headers(&[&out, &dlq, &late]) {
        let v: serde_json::Value =
            serde_json::from_slice(&payload.unwrap_or_default()).expect("JSON");
        let ids: Vec<&str> = headers
            .iter()
            .filter(|(name, _)| name == "waterline-correlation-id")
            .map(|(_, value)| std::str::from_utf8(value).expect("UTF-8"))
            .collect();
        let count: Option<u64> = headers
            .iter()
            .find(|(name, _)| name == "waterline-correlation-count")
            .map(|(_, value)| {
                std::str::from_utf8(value)
                    .expect("UTF-8")
                    .parse()
                    .expect("a count")
            });
        if topic == out {
            results += 1;
            // Every counted event had an id: the count is the result's, and the ids are
            // the earliest of its own events, in (time, id) order.
            let n = v["count"].as_u64().expect("count");
            assert_eq!(count, Some(n), "{v}");
            assert_eq!(ids.len() as u64, n.min(16), "{v}");
            let start = v["window_start_ms"].as_u64().expect("start");
            let key = v["key"].as_str().expect("key");
            let mut pairs = Vec::new();
            for id in &ids {
                let (t, k) = events
                    .get(id)
                    .unwrap_or_else(|| panic!("{id} is the id of a valid trade"));
                assert!(
                    *k == key && (start..start + 60_000).contains(t),
                    "{id} is of an event in this window: {v}"
                );
                pairs.push((*t, *id));
            }
            assert!(pairs.is_sorted(), "ids in (time, id) order: {v}");
        } else {
            let at = (
                v["source"]["partition"].as_i64().expect("partition"),
                v["source"]["offset"].as_i64().expect("offset"),
            );
            assert!(count.is_none(), "{v}");
            assert_eq!(
                ids,
                sent.get(&at)
                    .map(String::as_str)
                    .into_iter()
                    .collect::<Vec<_>>(),
                "the id of record {at:?}: {v}"
            );
            without += usize::from(ids.is_empty());
            if topic == dlq {
                letters += 1;
            } else {
                lates += 1;
            }
        }
    }
    // Refused before the payload was read as an object: only a header can give an id.
    let unreadable_with_id = inputs
        .iter()
        .enumerate()
        .flat_map(|(p, rs)| rs.iter().enumerate().map(move |(o, r)| (p, o, r)))
        .filter(|(p, o, r)| {
            matches!(
                r.truth,
                Err("malformed_json" | "empty_payload" | "not_utf8" | "not_an_object")
            ) && sent.contains_key(&(*p as i64, *o as i64))
        })
        .count();
    common::report(&format!(
        "correlation end to end: {results} results, {letters} dead letters ({unreadable_with_id} \
         unreadable with an id), {lates} late records, {without} without an id"
    ));
    assert!(results > 50 && letters > 10 && lates > 10 && without > 0);
    assert!(
        unreadable_with_id > 0,
        "an unreadable record keeps its header's id"
    );
}
