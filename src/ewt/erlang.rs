//! Erlang B, C and A (M/M/s+M) formulas for staffing and wait estimates, in pure code.
//!
//! Everything is computed through the Erlang-B recursion
//! `B(0) = 1, B(k) = a*B(k-1) / (k + a*B(k-1))`, never through `a^s / s!`, so the results stay
//! finite and accurate up to (and well beyond) 1,000 agents. Loads are in erlangs
//! (`a = lambda / mu`); rates are per second.

/// Erlang B: the blocking probability of an M/M/s/s system with offered load `a` erlangs.
/// `s = 0` gives 1 (everything is blocked); a non-positive or non-finite load gives 0 for
/// `s > 0` (nothing is offered).
pub fn erlang_b(s: u32, a: f64) -> f64 {
    if s == 0 {
        return 1.0;
    }
    if !(a.is_finite() && a > 0.0) {
        return 0.0;
    }
    let mut b = 1.0;
    for k in 1..=s {
        let ab = a * b;
        b = ab / (f64::from(k) + ab);
    }
    b
}

/// Erlang C: the probability that an arriving caller waits in an M/M/s queue with load `a`.
/// From B: `C = s*B / (s - a*(1 - B))`; 1 when `a >= s` (the queue is unstable and everyone
/// waits).
pub fn erlang_c(s: u32, a: f64) -> f64 {
    if s == 0 {
        return 1.0;
    }
    if !(a.is_finite() && a > 0.0) {
        return 0.0;
    }
    let s_f = f64::from(s);
    if a >= s_f {
        return 1.0;
    }
    let b = erlang_b(s, a);
    (s_f * b / (s_f - a * (1.0 - b))).clamp(0.0, 1.0)
}

/// Mean wait in queue of all callers of an M/M/s queue (Erlang C): `C / (s*mu - lambda)`.
/// None when the queue is unstable or the input is meaningless.
pub fn erlang_c_mean_wait(s: u32, lambda: f64, mu: f64) -> Option<f64> {
    if !(lambda >= 0.0 && mu > 0.0 && lambda.is_finite() && mu.is_finite()) {
        return None;
    }
    let cap = f64::from(s) * mu;
    if lambda >= cap {
        return None;
    }
    Some(erlang_c(s, lambda / mu) / (cap - lambda))
}

/// Steady-state figures of the Erlang-A (M/M/s+M) queue.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ErlangA {
    /// Probability that an arriving caller finds all agents busy and waits.
    pub p_wait: f64,
    /// Mean number of callers waiting in queue.
    pub mean_queue: f64,
    /// Mean time in queue over all callers (served, abandoned and not delayed alike).
    pub mean_wait: f64,
    /// Probability that an arriving caller abandons (`theta * mean_wait`).
    pub p_abandon: f64,
}

/// The Erlang-A queue with arrival rate `lambda`, service rate `mu` per agent, `s` agents and
/// exponential patience with rate `theta > 0`. The queue-length distribution is written
/// relative to `pi_s` (the probability of exactly `s` in the system): the part below `s` sums
/// to `1/B(s, a)`, and the tail `pi_{s+k}/pi_s = prod_{j=1..k} lambda/(s*mu + j*theta)` is
/// summed until its terms no longer matter. None for meaningless input or `theta <= 0` (use
/// Erlang C then).
pub fn erlang_a(s: u32, lambda: f64, mu: f64, theta: f64) -> Option<ErlangA> {
    let finite = lambda.is_finite() && mu.is_finite() && theta.is_finite();
    if !(finite && lambda >= 0.0 && mu > 0.0 && theta > 0.0) {
        return None;
    }
    if lambda == 0.0 {
        return Some(ErlangA {
            p_wait: 0.0,
            mean_queue: 0.0,
            mean_wait: 0.0,
            p_abandon: 0.0,
        });
    }
    let s_f = f64::from(s);
    let b = erlang_b(s, lambda / mu);
    // Tail sums: T = sum_k r_k and Q = sum_k k*r_k with r_k = pi_{s+k}/pi_s. Terms first grow
    // (while lambda > s*mu + j*theta) and then fall faster than geometrically, so stop once
    // they are past the peak and negligible against the running sum.
    let (mut tail, mut tail_k, mut r) = (0.0_f64, 0.0_f64, 1.0_f64);
    let mut k: u64 = 0;
    loop {
        k += 1;
        r *= lambda / (s_f * mu + k as f64 * theta);
        tail += r;
        tail_k += k as f64 * r;
        let past_peak = s_f * mu + k as f64 * theta > lambda;
        if !tail.is_finite() || (past_peak && k as f64 * r <= 1e-17 * (1.0 + tail_k)) {
            break;
        }
        if k > 50_000_000 {
            return None;
        }
    }
    if !tail.is_finite() {
        return None;
    }
    // 1/B is the sum of pi_n/pi_s for n = 0..=s (pi_s itself included).
    let norm = 1.0 / b + tail;
    let p_wait = (1.0 + tail) / norm;
    let mean_queue = tail_k / norm;
    let mean_wait = mean_queue / lambda;
    Some(ErlangA {
        p_wait,
        mean_queue,
        mean_wait,
        p_abandon: theta * mean_wait,
    })
}

/// Expected remaining wait of a caller with `ahead` callers in front of them when all `s`
/// agents are busy, in an M/M/s+M queue (the "QL" estimator of Ibrahim and Whitt): the caller
/// moves up one place at rate `s*mu + i*theta` while `i` callers are ahead, so
/// `E[W | ahead = n] = sum_{i=0..=n} 1 / (s*mu + i*theta)`. The caller's own patience is left
/// out: this is the wait if they stay. None when nobody could ever serve them.
pub fn ql_conditional_mean(ahead: usize, s: u32, mu: f64, theta: f64) -> Option<f64> {
    let rate0 = f64::from(s) * mu;
    let theta = if theta.is_finite() && theta > 0.0 {
        theta
    } else {
        0.0
    };
    if !(rate0.is_finite() && rate0 > 0.0) {
        return None;
    }
    let mut w = 0.0;
    for i in 0..=ahead {
        w += 1.0 / (rate0 + i as f64 * theta);
    }
    Some(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Erlang B from its definition, in log space (independent of the recursion).
    fn erlang_b_logspace(s: u32, a: f64) -> f64 {
        let terms: Vec<f64> = (0..=s)
            .map(|k| {
                let log_fact: f64 = (1..=k).map(|j| f64::from(j).ln()).sum();
                f64::from(k) * a.ln() - log_fact
            })
            .collect();
        let max = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = terms.iter().map(|t| (t - max).exp()).sum();
        (terms[s as usize] - max).exp() / sum
    }

    #[test]
    fn erlang_b_known_values() {
        assert_eq!(erlang_b(0, 3.0), 1.0);
        assert!((erlang_b(1, 1.0) - 0.5).abs() < 1e-12);
        assert!((erlang_b(2, 1.0) - 0.2).abs() < 1e-12);
        // Standard traffic-table values.
        assert!((erlang_b(5, 2.0) - 0.036697).abs() < 1e-5);
        assert!((erlang_b(10, 5.0) - 0.018385).abs() < 1e-5);
        assert_eq!(erlang_b(10, 0.0), 0.0);
    }

    #[test]
    fn erlang_b_stable_at_1000_agents() {
        for &(s, a) in &[
            (1000_u32, 950.0),
            (1000, 1000.0),
            (1000, 1200.0),
            (1000, 800.0),
            (300, 290.0),
        ] {
            let b = erlang_b(s, a);
            let reference = erlang_b_logspace(s, a);
            assert!(
                b.is_finite() && (0.0..=1.0).contains(&b),
                "B({s},{a}) = {b}"
            );
            assert!(
                (b - reference).abs() <= 1e-9 * reference.max(1e-300) + 1e-300,
                "B({s},{a}) = {b}, log-space {reference}"
            );
        }
        // Heavy overload: B tends to 1 - s/a.
        assert!((erlang_b(1000, 100_000.0) - (1.0 - 1000.0 / 100_000.0)).abs() < 1e-4);
    }

    #[test]
    fn erlang_c_known_values() {
        // M/M/2 with a = 1: C = 2B / (2 - 1 + B), B = 0.2.
        assert!((erlang_c(2, 1.0) - 1.0 / 3.0).abs() < 1e-12);
        // M/M/1: C = rho.
        assert!((erlang_c(1, 0.7) - 0.7).abs() < 1e-12);
        assert_eq!(erlang_c(5, 5.0), 1.0);
        assert_eq!(erlang_c(5, 6.0), 1.0);
        // Table value: 10 agents, 8 erlangs -> about 0.409.
        assert!((erlang_c(10, 8.0) - 0.4092).abs() < 1e-3);
        let c = erlang_c(1000, 990.0);
        assert!(c.is_finite() && c > 0.0 && c < 1.0);
        // M/M/1 mean wait rho / (mu - lambda).
        let w = erlang_c_mean_wait(1, 0.5, 1.0).unwrap();
        assert!((w - 1.0).abs() < 1e-12);
        assert_eq!(erlang_c_mean_wait(2, 3.0, 1.0), None);
    }

    /// Erlang-A by brute force: the birth-death chain truncated at `cap`, normalised directly.
    fn erlang_a_brute(s: u32, lambda: f64, mu: f64, theta: f64, cap: usize) -> (f64, f64) {
        let mut p = vec![1.0_f64];
        for n in 1..=cap {
            let death = if n <= s as usize {
                n as f64 * mu
            } else {
                f64::from(s) * mu + (n - s as usize) as f64 * theta
            };
            let prev = p[n - 1];
            p.push(prev * lambda / death);
        }
        let total: f64 = p.iter().sum();
        let p_wait: f64 = p[s as usize..].iter().sum::<f64>() / total;
        let queue: f64 = p
            .iter()
            .enumerate()
            .skip(s as usize)
            .map(|(n, x)| (n - s as usize) as f64 * x)
            .sum::<f64>()
            / total;
        (p_wait, queue)
    }

    #[test]
    fn erlang_a_matches_brute_force_and_identities() {
        for &(s, lambda, mu, theta) in &[
            (5_u32, 4.0, 1.0, 0.5),
            (3, 5.0, 1.0, 1.0),
            (20, 22.0, 1.0, 0.2),
        ] {
            let ea = erlang_a(s, lambda, mu, theta).unwrap();
            let (p_wait, queue) = erlang_a_brute(s, lambda, mu, theta, 2000);
            assert!((ea.p_wait - p_wait).abs() < 1e-9, "{ea:?} vs {p_wait}");
            assert!((ea.mean_queue - queue).abs() < 1e-9, "{ea:?} vs {queue}");
            assert!((ea.p_abandon - theta * ea.mean_queue / lambda).abs() < 1e-12);
        }
        // Tiny theta: close to Erlang C.
        let ea = erlang_a(10, 8.0, 1.0, 1e-9).unwrap();
        assert!((ea.p_wait - erlang_c(10, 8.0)).abs() < 1e-6);
        assert!((ea.mean_wait - erlang_c_mean_wait(10, 8.0, 1.0).unwrap()).abs() < 1e-5);
        // Large and overloaded: finite and sensible.
        let ea = erlang_a(1000, 1100.0, 1.0, 0.5).unwrap();
        assert!(ea.p_wait > 0.99 && ea.p_wait <= 1.0, "{ea:?}");
        assert!(ea.p_abandon > 0.05 && ea.p_abandon < 0.2, "{ea:?}");
        assert_eq!(erlang_a(10, 8.0, 1.0, 0.0), None);
    }

    #[test]
    fn ql_conditional_mean_sums_stage_times() {
        // Nobody ahead: one stage at rate s*mu.
        assert!((ql_conditional_mean(0, 10, 0.01, 0.005).unwrap() - 10.0).abs() < 1e-12);
        // Two ahead: 1/(s mu) + 1/(s mu + theta) + 1/(s mu + 2 theta).
        let w = ql_conditional_mean(2, 2, 0.5, 1.0).unwrap();
        assert!((w - (1.0 + 0.5 + 1.0 / 3.0)).abs() < 1e-12);
        // No abandonment: (n + 1) / (s mu).
        assert!((ql_conditional_mean(4, 5, 0.2, 0.0).unwrap() - 5.0).abs() < 1e-12);
        assert_eq!(ql_conditional_mean(3, 0, 0.2, 0.1), None);
    }
}
