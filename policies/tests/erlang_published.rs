//! Erlang C against published values.

use gpuscale_policies::erlang::{erlang_c, mean_wait, smallest_meeting, wait_exceeds};

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn textbook_closed_form_a2_c3() {
    // M/M/3 at A = 2 Erlangs, from the closed form
    // C = (A^c / c! * c / (c - A)) / (sum_{k<c} A^k / k! + A^c / c! * c / (c - A))
    //   = (8/6 * 3) / (1 + 2 + 2 + 4) = 4 / 9.
    assert!(close(erlang_c(3, 2.0), 4.0 / 9.0, 1e-12));
    // M/M/1 reduces to rho: C(1, A) = A.
    assert!(close(erlang_c(1, 0.3), 0.3, 1e-12));
}

#[test]
fn call_centre_worked_example() {
    // Call Centre Helper, "Erlang C Formula - Made Simple With an Easy Worked Example":
    // 100 calls in 30 minutes with a 3-minute handling time is A = 10 Erlangs; target 80 % of
    // calls answered within 20 s.
    // With 11 agents: probability of waiting 68.21 %, average speed of answer 122.8 s,
    // service level 38.96 %.
    assert!(close(erlang_c(11, 10.0), 0.6821, 5e-5));
    assert!(close(mean_wait(11, 10.0) * 180.0, 122.8, 0.05));
    assert!(close(1.0 - wait_exceeds(11, 10.0, 20.0 / 180.0), 0.3896, 5e-5));
    // 14 agents are the first to meet 80 % in 20 s (service level 88.84 %, 13 give 79.56 %).
    assert!(close(1.0 - wait_exceeds(13, 10.0, 20.0 / 180.0), 0.7956, 5e-5));
    assert!(close(1.0 - wait_exceeds(14, 10.0, 20.0 / 180.0), 0.8884, 5e-5));
    assert_eq!(smallest_meeting(10.0, 1, 20.0 / 180.0, 0.8, 100), Some(14));
    // The same system as 7 replicas of 2 slots meets it; 6 replicas (12 servers) do not.
    assert_eq!(smallest_meeting(10.0, 2, 20.0 / 180.0, 0.8, 100), Some(7));
}

#[test]
fn unstable_and_capped() {
    assert_eq!(erlang_c(5, 5.0), 1.0);
    assert_eq!(smallest_meeting(50.0, 1, 0.1, 0.95, 10), None);
    // Large systems stay finite and sane (no A^c / c! overflow).
    let c = erlang_c(2000, 1950.0);
    assert!(c > 0.0 && c < 1.0, "{c}");
}
