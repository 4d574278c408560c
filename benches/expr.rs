//! What CEL costs per record: decoding web-analytics events with the shipped dataflow
//! (an `expr` rule, two window filters and a `value` expression, evaluated per record)
//! against the same dataflow with the rule written as a `pattern` check and no filters or
//! value expressions, and against one whose `user_id` rule is CEL's `matches()`, which the
//! interpreter compiles on every call. Figures are ratios, since these machines are noisy.
//!
//!     cargo bench --bench expr                # 400k events
//!     WATERLINE_BENCH_RECORDS=2000000 cargo bench --bench expr

use std::time::Instant;

use waterline::cli::GenerateArgs;
use waterline::codec::Decoder;
use waterline::generate::WebGenerator;
use waterline::spec::PipelineSpec;

fn main() {
    let n: usize = std::env::var("WATERLINE_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400_000);
    let shipped = include_str!("../dataflows/web_analytics.toml");
    let with_cel = PipelineSpec::from_toml("web_analytics.toml", shipped).expect("valid");
    let plain_text = shipped
        .replace(
            "expr = \"page.startsWith('/') && size(page) <= 200\"",
            "field = \"page\"\npattern = \"^/.{0,199}$\"",
        )
        .replace("filter = \"event_type == 'page_view'\"\n", "")
        .replace("value = \"event_type == 'conversion'\"\n", "")
        .replace(
            "aggregates = [\"count\", \"sum\", \"avg\"]",
            "aggregates = [\"count\"]",
        );
    let plain = PipelineSpec::from_toml("plain", &plain_text).expect("valid");
    let regex_text = shipped.replace(
        "field = \"user_id\"\npattern = \"^user-[0-9]{1,8}$\"\nreason",
        "expr = \"user_id.matches('^user-[0-9]{1,8}$')\"\nreason",
    );
    assert!(regex_text != shipped);
    let with_matches = PipelineSpec::from_toml("matches", &regex_text).expect("valid");
    assert!(plain_text != shipped);
    let mut generator = WebGenerator::new(
        GenerateArgs {
            keys: 200,
            invalid: 0.01,
            late: 0.0,
            duplicate: 0.0,
            seed: 1,
            time_step_ms: 2,
        },
        1_768_312_800_000,
    );
    let payloads: Vec<Vec<u8>> = (0..n).map(|_| generator.next(0).payload).collect();
    println!("{n} web events");
    let rate = |spec: &PipelineSpec| {
        let decoder = Decoder::new(spec);
        let t = Instant::now();
        let ok = payloads
            .iter()
            .filter(|p| decoder.decode(Some(p)).is_ok())
            .count();
        (n as f64 / t.elapsed().as_secs_f64(), ok)
    };
    // Warm up, then measure each twice, interleaved.
    rate(&plain);
    let (p1, ok_plain) = rate(&plain);
    let (c1, ok_cel) = rate(&with_cel);
    let (p2, _) = rate(&plain);
    let (c2, _) = rate(&with_cel);
    let (m, ok_matches) = rate(&with_matches);
    let (plain_rate, cel_rate) = ((p1 + p2) / 2.0, (c1 + c2) / 2.0);
    println!("decode, no expressions      {plain_rate:>12.0} records/s  ({ok_plain} valid)");
    println!(
        "decode, 4 CEL per record    {cel_rate:>12.0} records/s  ({ok_cel} valid) = {:.2}× without",
        cel_rate / plain_rate
    );
    println!(
        "  and a CEL matches() rule  {m:>12.0} records/s  ({ok_matches} valid) = {:.2}× without",
        m / plain_rate
    );
}
