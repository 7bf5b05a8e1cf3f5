//! Seeded end-to-end checks of the estimators on small simulated centres.

use civicline::ewt::sim::{
    estimator_names, replicate, run_bench, scenarios, score, Record, Scenario,
};

fn scenario(name: &str) -> Scenario {
    scenarios()
        .into_iter()
        .find(|s| s.name == name)
        .expect("scenario exists")
}

fn rase_of(records: &[Record], names: &[String], name: &str) -> f64 {
    let k = names
        .iter()
        .position(|n| n == name)
        .expect("estimator runs");
    score(
        records
            .iter()
            .filter_map(|r| Some((r.estimates[k], r.realised?))),
    )
    .rase
}

#[test]
fn qlm_is_accurate_on_mms_m_and_civicline_matches_it() {
    // Four hours of the M/M/s+M queue: QL-m is the optimal estimator there, so its RASE is
    // the irreducible noise of the wait itself (about 0.5 at this load), far below the naive
    // baselines, and essentially unbiased.
    let s = Scenario {
        arrivals_per_hour: vec![300.0; 4],
        ..scenario("M/M/s+M")
    };
    let records: Vec<Record> = (0..2).flat_map(|r| replicate(&s, r)).collect();
    let names = estimator_names(&s);
    let served = records.iter().filter(|r| r.realised.is_some()).count();
    assert!(served > 600, "{served} served callers scored");
    let ql = rase_of(&records, &names, "QL-m");
    let k = names.iter().position(|n| n == "QL-m").unwrap();
    let sc = score(
        records
            .iter()
            .filter_map(|r| Some((r.estimates[k], r.realised?))),
    );
    assert!(ql < 0.6, "QL-m RASE {ql}");
    assert!(
        sc.bias.abs() < 0.15 * sc.mae.max(1.0) + 5.0,
        "QL-m bias {}",
        sc.bias
    );
    assert!(ql < rase_of(&records, &names, "LES") && ql < rase_of(&records, &names, "HOL"));
    let civ = rase_of(&records, &names, "civicline");
    assert!(civ <= 1.02 * ql, "civicline {civ} vs QL-m {ql}");
    // The simulation alone is close too (Monte Carlo noise only).
    let sim = rase_of(&records, &names, "civicline (sim only)");
    assert!(sim <= 1.1 * ql, "sim {sim} vs QL-m {ql}");
}

#[test]
fn civicline_beats_baselines_on_a_small_multi_skill_centre() {
    let s = scenario("understaffed").scaled(0.2, 3, 2);
    let records = civicline::ewt::sim::run_scenario(&s);
    let names = estimator_names(&s);
    assert!(records.len() > 300, "{} scored", records.len());
    let civ = rase_of(&records, &names, "civicline");
    for base in ["LES", "HOL", "Asterisk", "QL-m"] {
        let b = rase_of(&records, &names, base);
        assert!(civ < b, "civicline {civ} vs {base} {b}");
    }
}

#[test]
fn replications_are_reproducible() {
    let s = scenario("small city").scaled(1.0, 2, 1);
    assert_eq!(replicate(&s, 0), replicate(&s, 0));
    assert_ne!(replicate(&s, 0), replicate(&s, 1));
}

#[test]
fn quick_bench_prints_every_scenario() {
    let table = run_bench(true);
    for s in scenarios() {
        assert!(table.contains(&format!("== {} ==", s.name)), "{table}");
    }
    assert!(table.contains("targets:"));
    assert!(!table.contains("NaN"), "{table}");
}
