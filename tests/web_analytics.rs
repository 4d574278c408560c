//! The reference test of `dataflows/web_analytics.toml`: its output on random,
//! out-of-order input with late, invalid and repeated records, compared with the naive
//! recomputation of `common::web`, for 1, 2 and 4 workers.

mod common;

use std::collections::BTreeSet;

use common::web::*;
use rust_decimal::Decimal;
use waterline::output::Topics;
use waterline::pipeline;

#[test]
fn web_analytics_matches_a_naive_recomputation_for_1_2_and_4_workers() {
    for seed in 0..3u64 {
        let input = generate(seed, 1_200);
        let expected = recompute(&input);
        let of = |name: &str| {
            expected
                .windows
                .iter()
                .filter(|(k, _)| k.0 == name)
                .map(|(k, v)| (k.clone(), *v))
                .collect::<Vec<_>>()
        };
        let sessions = of("sessions");
        assert!(
            sessions.len() > 30
                && sessions.iter().any(|(_, v)| v.5 == Some(true))
                && sessions.iter().any(|(_, v)| v.1 >= 10 && v.4 > Some(GAP)),
            "the input exercises bounces and long sessions ({} sessions)",
            sessions.len()
        );
        let cut = sessions
            .iter()
            .filter(|((_, _, start), v)| v.0 == (start / MAX_DURATION + 1) * MAX_DURATION)
            .count();
        assert!(cut > 0, "the input exercises sessions cut at max_duration");
        let pages = of("page_views_5s");
        assert!(
            pages.iter().any(|(k, _)| k.1 == "/a|b\\c"),
            "a page with | and \\"
        );
        assert!(
            of("conversion_rate_1m")
                .iter()
                .any(|(_, v)| v.2 > Some(Decimal::ZERO))
        );
        assert!(
            expected.late.len() > 20,
            "late records: {}",
            expected.late.len()
        );
        let kinds: BTreeSet<&str> = expected.dead.iter().map(|d| d.2.as_str()).collect();
        assert!(
            kinds.contains("duplicate") && kinds.contains("rule_violation"),
            "{kinds:?}"
        );
        for workers in [1, 2, 4] {
            let chunk = 1 + (seed as usize * 41 + workers * 13) % 150;
            let (records, topics) = run(&input, workers, chunk);
            let mut got = Outputs::default();
            for r in &records {
                let topic = &topics.names[r.topic as usize];
                let n = topics.partitions[r.topic as usize];
                absorb(
                    &mut got,
                    topic,
                    Some(r.partition),
                    r.key.as_deref(),
                    &r.payload,
                    n,
                );
            }
            assert_same(&got, &expected, &format!("seed {seed}, {workers} workers"));
        }
        common::report(&format!(
            "web_analytics seed {seed}: {} windows ({} sessions, {cut} cut), {} late, {} dead letters match",
            expected.windows.len(),
            sessions.len(),
            expected.late.len(),
            expected.dead.len()
        ));
    }
}

#[test]
fn a_filtered_out_event_is_neither_counted_nor_late() {
    // One partition: a page view at 0, then time moves far on; an old session_start and
    // an old page view arrive. The page view is late for the page and session windows;
    // the session_start is filtered out of both, so it is late only for the conversion
    // rate (which has no filter).
    let base = 1_700_000_000_000u64;
    let ev = |id: &str, t: u64, ty: &str| {
        format!(
            r#"{{"event_id":"{id}","timestamp":{t},"user_id":"user-0001","event_type":"{ty}","page":"/"}}"#
        )
        .into_bytes()
    };
    let input = vec![
        Some(ev("a", base, "page_view")),
        Some(ev("b", base + 600_000, "page_view")),
        Some(ev("c", base + 1_000, "session_start")),
        Some(ev("d", base + 2_000, "page_view")),
    ];
    let spec = spec();
    let topics = Topics::new(&spec, |_| 1);
    let records =
        pipeline::run_in_memory(&spec, &topics, vec![(0, input)], 1, 1).expect("completes");
    let mut late: Vec<(String, u64)> = Vec::new();
    for r in &records {
        if topics.names[r.topic as usize] == "web-late" {
            let v: serde_json::Value = serde_json::from_slice(&r.payload).expect("JSON");
            late.push((
                v["window"].as_str().expect("window").to_string(),
                v["source"]["offset"].as_u64().expect("offset"),
            ));
        }
    }
    late.sort();
    assert_eq!(
        late,
        vec![
            ("conversion_rate_1m".to_string(), 2),
            ("conversion_rate_1m".to_string(), 3),
            ("page_views_5s".to_string(), 3),
            ("sessions".to_string(), 3),
        ]
    );
}
