//! gpuscale-sim: what-if replay of recorded traffic.
//!
//! It will own trace readers, the serving model, control-loop models and reports (issue #3),
//! driving the same [`gpuscale_policies`] code the scaler runs. Nothing is implemented here yet;
//! until it lands, `cargo run -p gpuscale-policies --example open_loop` shows the policies on
//! the bundled trace.

pub use gpuscale_policies as policies;
