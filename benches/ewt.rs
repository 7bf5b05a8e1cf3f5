//! `cargo bench --bench ewt`: prints the full `bench ewt` table (what `civicline bench ewt`
//! prints) and how long it took. Pass `--quick` for the reduced run, `--ablation` to add civicline without the staffing
//! schedule in the multi-skill scenarios.

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let ablation = std::env::args().any(|a| a == "--ablation");
    #[allow(clippy::disallowed_methods)] // Wall time of the bench itself, outside library code.
    let started = std::time::Instant::now();
    print!("{}", civicline::ewt::sim::run_bench_with(quick, ablation));
    println!("wall time: {:.1} s", started.elapsed().as_secs_f64());
}
