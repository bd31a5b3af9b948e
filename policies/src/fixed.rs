//! `fixed:N`: a constant count, for experiments and as a baseline.

use crate::decision::{Recommendation, Rule};
use crate::signals::{SignalKind, Signals};
use crate::{Context, Policy};

/// `fixed:N`: always N replicas, for experiments and baselines.
#[derive(Clone, Copy, Debug)]
pub struct Fixed(pub u32);

impl Policy for Fixed {
    fn name(&self) -> &'static str {
        "fixed"
    }

    fn needs(&self) -> &[SignalKind] {
        &[]
    }

    fn recommend(&mut self, _ctx: &Context, _s: &Signals) -> Recommendation {
        Recommendation::new(self.0, Rule::Fixed)
    }
}
