//! Nexmark q7 and q8 (the windowed joins) against naive recomputations over the same events:
//! plain loops over a `Vec<Event>`, written here and sharing no code with the queries.
//!
//! The events come from a small seeded generator of this file (the 1:3:46 mix, bids on
//! existing auctions, auctions by existing people, hot keys, bounded disorder plus a few late
//! events) and from hand-written cases: a q7 window whose highest price is tied, a q8 person
//! whose auction opens in the next window (no result), late events (ignored).
//!
//! Each event enters the dataflow at `max(date_time, watermark)` like waterline's own source,
//! with `watermark = max date_time seen − max out-of-orderness`, optionally rounded up to a
//! coarser tick so that many events share a timestamp (and a batch); the naive recomputation
//! ignores exactly the events whose timestamp is at or past their window's end (late).
//! The last test runs both queries over the project's standard generator
//! ([`waterline::nexmark::generator`]) too.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use timely::dataflow::StreamVec;
use timely::dataflow::operators::vec::UnorderedInput;
use timely::dataflow::operators::{Inspect, Probe};
use waterline::nexmark::generator::{Generator, GeneratorConfig};
use waterline::nexmark::model::{Auction, Bid, Event, Person};
use waterline::nexmark::queries::q7::{Q7Row, q7};
use waterline::nexmark::queries::q8::{Q8Row, q8};

const WINDOW: u64 = 10_000;

/// An event and the timestamp at which it enters the dataflow.
type Timed = (u64, Event);

/// A query: events in, `(row, time, diff)` updates out.
type Query<R> = for<'s> fn(StreamVec<'s, u64, Event>) -> StreamVec<'s, u64, (R, u64, isize)>;

// ---------------------------------------------------------------- generator

/// splitmix64: small, seeded, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct GenConfig {
    seed: u64,
    events: usize,
    /// Event-time events per second.
    rate: u64,
    /// Start of event time (ms).
    base: u64,
    /// Bound on the disorder of `date_time` (ms); also the source's max out-of-orderness.
    disorder: u64,
    /// Percentage of events that are later than the disorder bound.
    late_percent: u64,
    /// Bid prices are drawn from `1..=max_price`: small values make ties.
    max_price: u64,
}

/// Nexmark-like events in generation order, with the 1:3:46 mix: of each 50 events, one
/// person, three auctions, 46 bids. Auctions are by existing people (half of them by one of the
/// few newest, who may well have registered in the same window), bids are on existing auctions
/// (half on a few hot ones) by existing people (half by a few hot bidders).
fn generate(config: &GenConfig) -> Vec<Event> {
    let mut rng = Rng(config.seed);
    let mut people: u64 = 0;
    let mut auctions: u64 = 0;
    let mut out = Vec::with_capacity(config.events);
    for i in 0..config.events as u64 {
        let nominal = config.base + i * 1000 / config.rate;
        let mut date_time = nominal.saturating_sub(rng.below(config.disorder + 1));
        if config.late_percent > 0 && rng.chance(config.late_percent) {
            date_time = date_time.saturating_sub(config.disorder + 1 + rng.below(3 * WINDOW));
        }
        let kind = i % 50;
        let event = if kind == 0 || people == 0 {
            let id = 1000 + people;
            people += 1;
            Event::Person(Person {
                id,
                name: format!("person-{}", rng.below(1_000)),
                email_address: format!("p{id}@example.com"),
                credit_card: "1234 5678 9012 3456".to_owned(),
                city: "Portland".to_owned(),
                state: "OR".to_owned(),
                date_time,
                extra: String::new(),
            })
        } else if kind <= 3 || auctions == 0 {
            let id = 1000 + auctions;
            auctions += 1;
            let seller = if rng.chance(50) {
                1000 + people - 1 - rng.below(people.min(3))
            } else {
                1000 + rng.below(people)
            };
            Event::Auction(Auction {
                id,
                item_name: format!("item-{id}"),
                description: "an item".to_owned(),
                initial_bid: 100,
                reserve: 200,
                date_time,
                expires: date_time + 20_000,
                seller,
                category: rng.below(5),
                extra: String::new(),
            })
        } else {
            let auction = if rng.chance(50) {
                1000 + auctions - 1 - rng.below(auctions.min(4))
            } else {
                1000 + rng.below(auctions)
            };
            let bidder = if rng.chance(50) {
                1000 + rng.below(people.min(5))
            } else {
                1000 + rng.below(people)
            };
            Event::Bid(Bid {
                auction,
                bidder,
                price: 1 + rng.below(config.max_price),
                channel: "web".to_owned(),
                url: "https://example.com/bid".to_owned(),
                date_time,
                extra: String::new(),
            })
        };
        out.push(event);
    }
    out
}

/// Each event with the timestamp at which a waterline source would put it,
/// `max(date_time, max date_time seen − disorder)`, rounded up to a multiple of `tick`
/// (but an on-time event not past its window's last millisecond).
fn stamp(events: Vec<Event>, disorder: u64, tick: u64) -> Vec<Timed> {
    let mut max_seen = 0;
    events
        .into_iter()
        .map(|event| {
            max_seen = max_seen.max(event.date_time());
            let time = event.date_time().max(max_seen.saturating_sub(disorder));
            let end = naive_window(event.date_time()).1;
            let mut ticked = time.div_ceil(tick) * tick;
            if time < end {
                ticked = ticked.min(end - 1);
            }
            (ticked, event)
        })
        .collect()
} // ---------------------------------------------------------------- running a query

/// Runs `query` over `events` on `workers` workers (event `i` is sent by worker
/// `i % workers`; a worker's consecutive events at one timestamp go in one batch), returning
/// every output update.
fn run<R>(events: Vec<Timed>, workers: usize, query: Query<R>) -> Vec<(R, u64, isize)>
where
    R: Clone + Send + 'static,
{
    let events = Arc::new(events);
    let results = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&results);
    timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let sink = Arc::clone(&sink);
        let ((mut input, mut cap), probe) = worker.dataflow::<u64, _, _>(|scope| {
            let (input, stream) = scope.new_unordered_input::<Event>();
            let (probe, _) = query(stream)
                .inspect(move |update| sink.lock().expect("result sink").push(update.clone()))
                .probe();
            (input, probe)
        });
        // The frontier each worker holds after event i: the least later timestamp.
        let mut later = vec![u64::MAX; events.len()];
        for i in (0..events.len().saturating_sub(1)).rev() {
            later[i] = later[i + 1].min(events[i + 1].0);
        }
        let mut batch: Vec<Event> = Vec::new();
        let mut batch_time = 0;
        for (i, (time, event)) in events.iter().enumerate() {
            if i % peers == index {
                if *time != batch_time && !batch.is_empty() {
                    input
                        .activate()
                        .session(&cap.delayed(&batch_time))
                        .give_container(&mut batch);
                    batch.clear();
                }
                batch_time = *time;
                batch.push(event.clone());
            }
            if i % 64 == 63 && *cap.time() < later[i].min(batch_time) {
                cap = cap.delayed(&later[i].min(batch_time));
                worker.step();
            }
        }
        if !batch.is_empty() {
            input
                .activate()
                .session(&cap.delayed(&batch_time))
                .give_container(&mut batch);
        }
        drop(cap);
        drop(input);
        while !probe.done() {
            worker.step();
        }
    })
    .expect("timely runs");
    results.lock().expect("result sink").clone()
}

const DISORDER: u64 = 500;

/// The rows of a final-only update stream, sorted; checks that every update is an
/// insertion at `window_end(row)`, and that no row was emitted twice.
fn rows<R: Ord + Clone + std::fmt::Debug>(
    updates: Vec<(R, u64, isize)>,
    window_end: impl Fn(&R) -> u64,
) -> Vec<R> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (row, time, diff) in updates {
        assert!(
            diff > 0,
            "a retraction reached the output: {row:?} at {time} ({diff})"
        );
        assert_eq!(time, window_end(&row), "{row:?} is not at its window's end");
        assert!(seen.insert(row.clone()), "{row:?} emitted twice");
        for _ in 0..diff {
            out.push(row.clone());
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------- naive recomputations

fn naive_window(date_time: u64) -> (u64, u64) {
    let start = date_time / WINDOW * WINDOW;
    (start, start + WINDOW)
}

/// q7 by brute force: every on-time bid at its window's highest price.
fn naive_q7(events: &[Timed]) -> Vec<Q7Row> {
    let mut bids_by_window: BTreeMap<u64, Vec<&Bid>> = BTreeMap::new();
    for (time, event) in events {
        if let Event::Bid(bid) = event {
            let (_, end) = naive_window(bid.date_time);
            if *time < end {
                bids_by_window.entry(end).or_default().push(bid);
            }
        }
    }
    let mut out = Vec::new();
    for (end, bids) in bids_by_window {
        let mut max = 0;
        for bid in &bids {
            if bid.price > max {
                max = bid.price;
            }
        }
        for bid in bids {
            if bid.price == max {
                out.push(Q7Row {
                    auction: bid.auction,
                    price: bid.price,
                    bidder: bid.bidder,
                    date_time: bid.date_time,
                    window_end: end,
                });
            }
        }
    }
    out.sort();
    out
}

/// q8 by brute force: for every on-time person, is there an on-time auction by them that
/// opened in the window in which they registered?
fn naive_q8(events: &[Timed]) -> Vec<Q8Row> {
    let on_time = |time: u64, date_time: u64| time < naive_window(date_time).1;
    let mut out = BTreeSet::new();
    for (time, event) in events {
        let Event::Person(person) = event else {
            continue;
        };
        if !on_time(*time, person.date_time) {
            continue;
        }
        let (start, _) = naive_window(person.date_time);
        let opened = events.iter().any(|(auction_time, other)| match other {
            Event::Auction(auction) => {
                auction.seller == person.id
                    && on_time(*auction_time, auction.date_time)
                    && naive_window(auction.date_time).0 == start
            }
            _ => false,
        });
        if opened {
            out.insert(Q8Row {
                id: person.id,
                name: person.name.clone(),
                window_start: start,
            });
        }
    }
    out.into_iter().collect()
}

// ---------------------------------------------------------------- hand-written cases

fn person(id: u64, name: &str, date_time: u64) -> Event {
    Event::Person(Person {
        id,
        name: name.to_owned(),
        email_address: String::new(),
        credit_card: String::new(),
        city: String::new(),
        state: String::new(),
        date_time,
        extra: String::new(),
    })
}

fn auction(id: u64, seller: u64, date_time: u64) -> Event {
    Event::Auction(Auction {
        id,
        item_name: String::new(),
        description: String::new(),
        initial_bid: 1,
        reserve: 1,
        date_time,
        expires: date_time + 1,
        seller,
        category: 0,
        extra: String::new(),
    })
}

fn bid(auction: u64, bidder: u64, price: u64, date_time: u64) -> Event {
    Event::Bid(Bid {
        auction,
        bidder,
        price,
        channel: String::new(),
        url: String::new(),
        date_time,
        extra: String::new(),
    })
}

fn q7_row(auction: u64, price: u64, bidder: u64, date_time: u64, window_end: u64) -> Q7Row {
    Q7Row {
        auction,
        price,
        bidder,
        date_time,
        window_end,
    }
}

/// The hand-written events, in arrival order, with their timestamps.
fn hand_written() -> Vec<Timed> {
    vec![
        // Window [0, 10 000): lower bids, one per timestamp, then one timestamp with a rising
        // price and a four-way tie at the highest price 95 (two on each of two workers).
        (100, bid(1, 11, 50, 100)),
        (9_700, auction(103, 3, 9_600)),
        (200, bid(1, 12, 70, 200)),
        (300, bid(2, 13, 70, 300)),
        (400, bid(2, 14, 60, 400)),
        (5_000, bid(3, 21, 40, 4_990)),
        (5_000, bid(4, 22, 95, 4_991)),
        (5_000, bid(5, 23, 95, 4_992)),
        (5_000, bid(6, 24, 80, 4_993)),
        (5_000, bid(7, 25, 95, 4_994)),
        (5_000, bid(8, 26, 95, 4_995)),
        // Person 1 registers at the end of the first window and opens an auction at the start
        // of the next one: no q8 row.
        (9_990, person(1, "ada", 9_990)),
        (10_010, auction(100, 1, 10_010)),
        // Window [10 000, 20 000): person 2 registers and opens two auctions: one q8 row.
        (10_100, person(2, "bob", 10_100)),
        (10_200, auction(101, 2, 10_200)),
        (10_300, auction(102, 2, 10_300)),
        (10_400, bid(101, 2, 5, 10_400)),
        (10_450, bid(102, 3, 5, 10_450)),
        // A late bid of the first window (its timestamp, the watermark, is past 10 000): a
        // higher price, ignored.
        (10_500, bid(1, 15, 999, 9_000)),
        // Person 3's auction in the first window arrived on time, the person late: no row.
        (10_600, person(3, "cy", 9_500)),
        // Window [20 000, 30 000): an auction, then the person, both on time: one q8 row.
        (20_100, auction(104, 4, 20_100)),
        (20_200, person(4, "dee", 20_150)),
        // Window [20 000, 30 000): a bid in its last millisecond is on time; a higher one at
        // a timestamp of exactly the window's end is late.
        (29_999, bid(7, 16, 3, 29_999)),
        (30_000, bid(8, 17, 9, 29_998)),
    ]
}

fn q7_end(row: &Q7Row) -> u64 {
    row.window_end
}

fn q8_end(row: &Q8Row) -> u64 {
    row.window_start + WINDOW
}

// ---------------------------------------------------------------- tests

#[test]
fn q7_hand_written_ties_and_late_bids() {
    let expected = vec![
        q7_row(4, 95, 22, 4_991, 10_000),
        q7_row(5, 95, 23, 4_992, 10_000),
        q7_row(7, 95, 25, 4_994, 10_000),
        q7_row(8, 95, 26, 4_995, 10_000),
        q7_row(101, 5, 2, 10_400, 20_000),
        q7_row(102, 5, 3, 10_450, 20_000),
        q7_row(7, 3, 16, 29_999, 30_000),
    ];
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(naive_q7(&hand_written()), sorted, "the naive q7 itself");
    for workers in [1, 2] {
        assert_eq!(
            rows(run(hand_written(), workers, q7), q7_end),
            sorted,
            "{workers} workers"
        );
    }
}

#[test]
fn q8_hand_written_same_window_only() {
    let expected = vec![
        Q8Row {
            id: 2,
            name: "bob".to_owned(),
            window_start: 10_000,
        },
        Q8Row {
            id: 4,
            name: "dee".to_owned(),
            window_start: 20_000,
        },
    ];
    assert_eq!(naive_q8(&hand_written()), expected, "the naive q8 itself");
    for workers in [1, 2] {
        assert_eq!(
            rows(run(hand_written(), workers, q8), q8_end),
            expected,
            "{workers} workers"
        );
    }
}

fn generated(seed: u64, tick: u64) -> Vec<Timed> {
    let config = GenConfig {
        seed,
        events: 40_000,
        rate: 1_000,
        base: 1_700_000_000_000,
        disorder: DISORDER,
        late_percent: 1,
        max_price: 500,
    };
    stamp(generate(&config), DISORDER, tick)
}

#[test]
fn q7_matches_naive_on_generated_events() {
    for (seed, tick) in [(1, 1), (2, 100), (3, 100)] {
        let events = generated(seed, tick);
        let expected = naive_q7(&events);
        // The input is worth checking against: several windows, ties, late bids.
        let windows: BTreeSet<u64> = expected.iter().map(|row| row.window_end).collect();
        assert!(windows.len() >= 4, "seed {seed}: {} windows", windows.len());
        assert!(
            expected.len() > windows.len(),
            "seed {seed}: no window has a tie"
        );
        let late = events
            .iter()
            .filter(|(time, event)| *time >= naive_window(event.date_time()).1)
            .count();
        assert!(late > 0, "seed {seed}: no late events");
        for workers in [1, 2] {
            let actual = rows(run(events.clone(), workers, q7), q7_end);
            assert_eq!(actual, expected, "seed {seed}, {workers} workers");
        }
    }
}

#[test]
fn q8_matches_naive_on_generated_events() {
    for (seed, tick) in [(1, 1), (2, 100), (3, 100)] {
        let events = generated(seed, tick);
        let expected = naive_q8(&events);
        assert!(
            expected.len() >= 10,
            "seed {seed}: only {} rows",
            expected.len()
        );
        // Some person opened an auction only in a later window: the case that must not join.
        let joined: BTreeSet<u64> = expected.iter().map(|row| row.id).collect();
        let sellers: BTreeSet<u64> = events
            .iter()
            .filter_map(|(_, event)| match event {
                Event::Auction(auction) => Some(auction.seller),
                _ => None,
            })
            .collect();
        assert!(
            sellers.iter().any(|seller| !joined.contains(seller)),
            "seed {seed}: every seller joined"
        );
        for workers in [1, 2] {
            let actual = rows(run(events.clone(), workers, q8), q8_end);
            assert_eq!(actual, expected, "seed {seed}, {workers} workers");
        }
    }
}

// ---------------------------------------------------------------- the standard generator

/// The standard generator's events, stamped by 100 ms ticks.
fn standard(seed: u64) -> Vec<Timed> {
    let config = GeneratorConfig {
        seed,
        rate: 1_000,
        ..GeneratorConfig::default()
    };
    stamp(Generator::new(config, 60_000).collect(), 0, 100)
}

#[test]
fn q7_and_q8_match_naive_on_the_standard_generator() {
    let events = standard(5);
    let expected_q7 = naive_q7(&events);
    let expected_q8 = naive_q8(&events);
    assert!(expected_q7.len() >= 6, "{} q7 rows", expected_q7.len());
    assert!(!expected_q8.is_empty(), "no q8 rows");
    for workers in [1, 2] {
        assert_eq!(
            rows(run(events.clone(), workers, q7), q7_end),
            expected_q7,
            "q7, {workers} workers"
        );
        assert_eq!(
            rows(run(events.clone(), workers, q8), q8_end),
            expected_q8,
            "q8, {workers} workers"
        );
    }
}
